"""Figure 1 — end-to-end throughput: Outbox → spooler daemon → SMTP → Postfix's smtp-sink on loopback.

postroom: N messages (1 KiB body, one recipient) are submitted one at a time (each durable) while
the CLI spooler daemon (`python -m postroom --profile DIR spooler --workers W`, its own processes)
delivers them over the `smtp` transport to `smtp-sink`. The time runs from the first submit to the
last recorded outcome (the latest `outcome_time` in the store, once every recipient has one); the
outcomes are then read back from the store file by a separate connection, so every one of them is
committed. It runs twice per round: with one spooler process (`--workers 1`) and with the default
(`--workers` = the number of CPUs).

References, measured in the same run, interleaved with the postroom runs (A/B/A/B, the order
reversed every other round, so load drift from other work on the machine hits both), into the
same sink:
  (a) stdlib smtplib, one reused connection, pre-serialised messages;
  (b) smtp-source (C), 8 sessions, connections reused (-d); also 1 session;
  (c) Postfix relaying: our own Postfix instance (relayhost = the sink,
      default_destination_concurrency_limit = 20); smtp-source -s 8 injects N messages and the
      time runs until its queue is empty.

CPU per delivered message: postroom's is the CPU of the spooler's whole process tree (parent and
workers) plus that of the submitting process while it submitted; Postfix's is the sum over its
daemons (the process tree of its master: smtpd, cleanup, qmgr, smtp, …, reaped ones included),
with smtp-source's own CPU (the injecting client, as the submitting side is for postroom) beside it.

Also (not a reference): the spooler's drain rate alone — submit everything first, then one
`Session.deliver()` pass in this process — which separates the spooler from submission; and the
store's statements and commits per delivered message (statement_count.py).
"""

from __future__ import annotations

import os
import resource
import smtplib
import sys
import time
from pathlib import Path
from typing import Any

import common as C
import statement_count

from postroom.engine.runtime import DEFAULT_CONCURRENCY


def children_cpu() -> float:
    """CPU of the child processes this process has reaped (smtp-source, here)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_smtplib(port: int, n: int) -> dict[str, float]:
    msgs = C.serialised(n)
    cpu0 = C.self_cpu_seconds()
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.ehlo()
        for m in msgs:
            s.sendmail(C.SENDER, [C.RECIPIENT], m)
    dt = time.perf_counter() - t0
    return {"rate": n / dt, "cpu_ms": (C.self_cpu_seconds() - cpu0) * 1000 / n}


def run_postfix(pf: C.Postfix, n: int) -> dict[str, float]:
    pf.wait_empty(120)
    master = pf.master_pid()
    cpu0, client0 = C.tree_cpu_seconds(master), children_cpu()
    t0 = time.monotonic()
    intake = C.smtp_source(n, 8, pf.port)
    client = children_cpu() - client0
    t1 = pf.wait_empty(max(120.0, n / 20))
    cpu = C.tree_cpu_seconds(master) - cpu0
    return {
        "rate": n / (t1 - t0),
        "intake_rate": n / intake,
        "cpu_ms": cpu * 1000 / n,
        "client_cpu_ms": client * 1000 / n,
    }


def run_postroom(sink_port: int, n: int, args: Any, work: Path, workers: int) -> dict[str, Any]:
    """Pipeline: the daemon (W processes) delivers while this process submits."""
    import postroom

    prof = C.make_profile(
        work / "profile", smtp_port=sink_port, connections=args.connections * workers, concurrency=args.concurrency
    )
    daemon = C.spooler_daemon(prof, work / "daemon.log", workers=workers)
    try:
        C.wait_daemon_ready(prof, daemon, workers=workers)
        cpu0 = C.tree_cpu_seconds(daemon.pid)
        with postroom.logon(prof) as session:
            store_path = session.profile.store_path
            submit_cpu0 = C.self_cpu_seconds()
            t0 = time.time()
            C.submit_one_at_a_time(session, n)
            t_submitted = time.time()
            submit_cpu = C.self_cpu_seconds() - submit_cpu0
        last = C.wait_for_outcomes(store_path, n, daemon, work / "daemon.log")
        daemon_cpu = C.tree_cpu_seconds(daemon.pid) - cpu0
    finally:
        C.stop_process(daemon, 30)
    counts = C.outcome_counts(store_path)
    if counts.get("delivered", 0) != n:
        raise RuntimeError(f"expected {n} delivered outcomes in the store, found {counts}")
    elapsed = last - t0
    return {
        "rate": n / elapsed,
        "seconds": elapsed,
        "submit_rate": n / (t_submitted - t0),
        "daemon_cpu_seconds": daemon_cpu,
        "spooler_cpu_ms": daemon_cpu * 1000 / n,
        "cpu_ms": (daemon_cpu + submit_cpu) * 1000 / n,
        "outcomes": counts,
    }


def run_drain(sink_port: int, n: int, args: Any, work: Path) -> dict[str, Any]:
    """Submit everything (in batches when possible), then time one deliver() pass alone."""
    import postroom

    prof = C.make_profile(
        work / "profile-drain", smtp_port=sink_port, connections=args.connections, concurrency=args.concurrency
    )
    with postroom.logon(prof) as session:
        if C.has_submit_many(session):
            C.submit_batches(session, n, 1000)
        else:
            C.submit_one_at_a_time(session, n)
        t0 = time.perf_counter()
        summary = session.deliver()
        dt = time.perf_counter() - t0
        store_path = session.profile.store_path
    counts = C.outcome_counts(store_path)
    if summary.delivered != n or counts.get("delivered", 0) != n:
        raise RuntimeError(f"drain: {summary.delivered} delivered in the pass, store says {counts}")
    return {"rate": n / dt, "seconds": dt}


# --- statements and commits per delivered message ---------------------------------------------------


def statement_costs(n: int, sink_port: int) -> dict[str, Any]:
    """{"costs": [...], "lines": [...]}: one in-process drain measured by statement_count.py."""
    costs = statement_count.drain_costs(n, sink_port)
    return {"costs": costs, "lines": list(statement_count.cost_lines(costs))}


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages per run (default 20000; --quick 100)")
    ap.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"spooler_concurrency (default: the profile's, {DEFAULT_CONCURRENCY})",
    )
    ap.add_argument("--connections", type=int, default=2, help="smtp connections per spooler process (default 2)")
    ap.add_argument(
        "--workers", type=int, default=None, help="spooler processes of the default run (default: the number of CPUs)"
    )
    ap.add_argument("--no-drain", action="store_true", help="skip the drain-only measurement")
    args = ap.parse_args()
    n = args.n or (100 if args.quick else 20_000)
    runs = args.runs or (1 if args.quick else 3)
    workers = args.workers or os.cpu_count() or 1
    configs = sorted({1, workers})  # "without --workers" (one process) and the default
    result: dict[str, Any] = {
        "figure": "Figure 1: end-to-end throughput",
        "key": "fig1",
        "n": n,
        "runs": runs,
        "workers": workers,
        "config": {
            "spooler_concurrency": args.concurrency,
            "smtp_connections_per_process": args.connections,
            "workers": configs,
        },
        "notes": [],
        "lines": [],
    }
    keys = [f"postroom-w{w}" for w in configs] + ["postfix", "smtplib", "source8", "source1"]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in [*keys[: len(configs)], "postfix", "smtplib"]}
    extra: dict[str, list[float]] = {
        "submit_rate": [],
        "spooler_cpu_ms": [],
        "postfix_intake": [],
        "postfix_client_cpu_ms": [],
        "drain": [],
    }
    if not C.have("smtp-sink"):
        result["notes"].append("smtp-sink is missing: the Python stand-in sink (pysink.py) was used instead")
    with C.Sink.start() as sink:
        result["sink"] = sink.kind
        with C.optional_postfix(sink.port, result["notes"], "(c) Postfix relay") as pf:
            for r in range(runs):
                # A/B/A/B: postroom, Postfix, postroom, smtplib; reversed every other round.
                order: list[tuple[str, int]] = []
                for i, w in enumerate(configs):
                    order.append(("postroom", w))
                    order.append(("postfix", 0) if i == 0 else ("smtplib", 0))
                if len(configs) == 1:
                    order.append(("smtplib", 0))
                if r % 2:
                    order.reverse()
                for kind, w in order:
                    if kind == "postroom":
                        C.log(f"fig1 round {r + 1}/{runs}: postroom --workers {w}, N={n}")
                        with C.workdir("fig1") as work:
                            pr = run_postroom(sink.port, n, args, work, w)
                        samples[f"postroom-w{w}"].append(pr["rate"])
                        cpu[f"postroom-w{w}"].append(pr["cpu_ms"])
                        if w == workers:
                            extra["submit_rate"].append(pr["submit_rate"])
                            extra["spooler_cpu_ms"].append(pr["spooler_cpu_ms"])
                        C.log(f"fig1: postroom --workers {w}: {pr['rate']:.0f} msg/s, {pr['cpu_ms']:.2f} ms CPU/msg")
                    elif kind == "postfix" and pf is not None:
                        C.log(f"fig1 round {r + 1}/{runs}: Postfix relay")
                        p = run_postfix(pf, n)
                        samples["postfix"].append(p["rate"])
                        cpu["postfix"].append(p["cpu_ms"])
                        extra["postfix_intake"].append(p["intake_rate"])
                        extra["postfix_client_cpu_ms"].append(p["client_cpu_ms"])
                    elif kind == "smtplib":
                        s = run_smtplib(sink.port, n)
                        samples["smtplib"].append(s["rate"])
                        cpu["smtplib"].append(s["cpu_ms"])
                if sink.kind == "smtp-sink" and C.have("smtp-source"):
                    samples["source8"].append(n / C.smtp_source(n, 8, sink.port))
                    samples["source1"].append(n / C.smtp_source(n, 1, sink.port))
            if not args.no_drain:
                C.log(f"fig1: drain-only pass, N={n}")
                with C.workdir("fig1-drain") as work:
                    extra["drain"].append(run_drain(sink.port, n, args, work)["rate"])
            C.log("fig1: statements and commits per delivered message")
            statements = statement_costs(min(n, 2000), sink.port)
    if not samples["source8"]:
        result["notes"].append("(b) smtp-source skipped: smtp-source or smtp-sink is missing")

    def med_of(values: list[float]) -> float | None:
        return C.median(values) if values else None

    med = {k: med_of(v) for k, v in samples.items()}
    med_cpu = {k: med_of(v) for k, v in cpu.items()}
    default = f"postroom-w{workers}"
    med["postroom"] = med[default]  # the figure's postroom: the default workers
    result["samples"] = samples
    result["cpu_samples"] = cpu
    result["extra_samples"] = extra
    result["median"] = med
    result["median_cpu_ms"] = med_cpu
    result["median_extra"] = {k: med_of(v) for k, v in extra.items()}
    result["statements"] = statements
    result["ratios"] = {
        "postroom/postfix": C.ratio(med["postroom"], med["postfix"]),
        "postroom/smtplib": C.ratio(med["postroom"], med["smtplib"]),
        "postroom/smtp-source-8": C.ratio(med["postroom"], med["source8"]),
        "postroom CPU/postfix CPU": C.ratio(med_cpu[default], med_cpu["postfix"]),
    }
    if workers != 1:
        result["ratios"][f"workers {workers}/workers 1"] = C.ratio(med[default], med["postroom-w1"])
    ratios = result["ratios"]
    result["targets"] = {
        "postroom >= 2x Postfix": None if ratios["postroom/postfix"] is None else ratios["postroom/postfix"] >= 2.0,
        "postroom >= 80% of raw smtplib": None
        if ratios["postroom/smtplib"] is None
        else ratios["postroom/smtplib"] >= 0.8,
    }
    if statements:
        smtp_costs = [c for c in statements["costs"] if c.get("transport") == "smtp"] or statements["costs"]
        result["targets"]["<= 6 statements per delivered message"] = all(
            c["statements_per_message"] <= 6 for c in smtp_costs
        )
        result["targets"]["<= 0.05 commits per delivered message"] = all(
            c["commits_per_message"] <= 0.05 for c in smtp_costs
        )

    def fmt_cpu(key: str) -> str:
        v = med_cpu.get(key)
        return "" if v is None else f"  {v:6.2f} ms CPU/msg"

    def line(label: str, key: str) -> str:
        return C.rate_line(label, 52, med[key], samples[key], fmt_cpu(key))

    mx = result["median_extra"]
    result["lines"] = [
        f"N = {n} messages × 1 KiB, 1 recipient; median of {runs} interleaved run(s); sink: {sink.kind}",
        *[line(f"postroom --workers {w}: submit → spooler → smtp → sink", f"postroom-w{w}") for w in configs],
        line("(a) smtplib, one reused connection → sink", "smtplib"),
        line("(b) smtp-source -s 8 -d → sink", "source8"),
        line("    smtp-source -s 1 -d → sink", "source1"),
        line("(c) Postfix: smtp-source -s 8 → queue → relay → sink", "postfix"),
        f"postroom (--workers {workers})/Postfix = {C.fmt_ratio(ratios['postroom/postfix'])}   "
        f"postroom/smtplib-raw = {C.fmt_ratio(ratios['postroom/smtplib'])}   "
        f"postroom/smtp-source = {C.fmt_ratio(ratios['postroom/smtp-source-8'])}   "
        f"CPU per message postroom/Postfix = {C.fmt_ratio(ratios['postroom CPU/postfix CPU'])}",
        "CPU per message: postroom = its spooler processes + the submitting process; Postfix = all its daemons "
        f"(smtp-source, the injecting client, {mx['postfix_client_cpu_ms'] or 0:.2f} ms more); smtplib = the client",
        f"(postroom submit side during the run: {C.fmt_rate(mx['submit_rate'])} msg/s; spooler processes alone "
        f"{mx['spooler_cpu_ms'] or 0:.2f} ms CPU/msg; spooler drain alone: {C.fmt_rate(mx['drain'])} msg/s; "
        f"Postfix intake: {C.fmt_rate(mx['postfix_intake'])} msg/s)",
        *(statements.get("lines") or ["statements and commits per delivered message: not measured"]),
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
