"""Figure 1 — end-to-end throughput: Outbox → spooler daemon → SMTP → Postfix's smtp-sink on loopback.

postroom: N messages (1 KiB body, one recipient) are submitted one at a time (each durable) while
the CLI spooler daemon (`python -m postroom --profile DIR spooler`, its own process) delivers them
over the `smtp` transport to `smtp-sink`. The time runs from the first submit to the last recorded
outcome (the latest `outcome_time` in the store, once every recipient has one); the outcomes are
then read back from the store file by a separate connection, so every one of them is committed.

References, measured in the same run, round-robin with the postroom runs, into the same sink:
  (a) stdlib smtplib, one reused connection, pre-serialised messages;
  (b) smtp-source (C), 8 sessions, connections reused (-d); also 1 session;
  (c) Postfix relaying: our own Postfix instance (relayhost = the sink,
      default_destination_concurrency_limit = 20); smtp-source -s 8 injects N messages and the
      time runs until its queue is empty.

Also (not a reference): the spooler's drain rate alone — submit everything first, then one
`Session.deliver()` pass in this process — which separates the spooler from submission.
"""

from __future__ import annotations

import smtplib
import sqlite3
import sys
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import common as C
import statement_count


def serialised(n: int) -> list[bytes]:
    """Pre-built ~1 KiB messages with CRLF line ends (like smtp-source -l 1024)."""
    date = formatdate(localtime=True)
    body = (b"x" * 78 + b"\r\n") * 13
    return [
        b"From: <%s>\r\nTo: <%s>\r\nDate: %s\r\nMessage-Id: <%d@bench.example.test>\r\nSubject: bench %d\r\n\r\n"
        % (C.SENDER.encode(), C.RECIPIENT.encode(), date.encode(), i, i)
        + body
        for i in range(n)
    ]


def run_smtplib(port: int, n: int) -> float:
    msgs = serialised(n)
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.ehlo()
        for m in msgs:
            s.sendmail(C.SENDER, [C.RECIPIENT], m)
    return n / (time.perf_counter() - t0)


def run_postfix(pf: C.Postfix, n: int) -> dict[str, float]:
    pf.wait_empty(120)
    t0 = time.monotonic()
    intake = C.smtp_source(n, 8, pf.port)
    t1 = pf.wait_empty(max(120.0, n / 20))
    return {"rate": n / (t1 - t0), "intake_rate": n / intake}


def run_postroom(sink_port: int, n: int, args: Any, work: Path) -> dict[str, Any]:
    """Pipeline: the daemon delivers while this process submits."""
    import postroom

    prof = C.make_profile(
        work / "profile", smtp_port=sink_port, connections=args.connections, concurrency=args.concurrency
    )
    daemon = C.spooler_daemon(prof, work / "daemon.log")
    try:
        C.wait_daemon_ready(prof, daemon)
        cpu0 = C.cpu_seconds(daemon.pid)
        with postroom.logon(prof) as session:
            store_path = session.profile.store_path
            t0 = time.time()
            C.submit_one_at_a_time(session, n)
            t_submitted = time.time()
        db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)
        deadline = time.monotonic() + max(300.0, n / 10)
        while True:
            done, last = db.execute(
                "SELECT count(*), max(outcome_time) FROM recipients WHERE state != 'pending'"
            ).fetchone()
            if done >= n:
                break
            if daemon.poll() is not None:
                raise RuntimeError(f"spooler daemon exited ({daemon.returncode}); see {work / 'daemon.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {n} outcomes recorded")
            time.sleep(0.05)
        db.close()
        daemon_cpu = C.cpu_seconds(daemon.pid) - cpu0
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


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages per run (default 20000; --quick 200)")
    ap.add_argument("--concurrency", type=int, default=4, help="spooler_concurrency (profile default 4)")
    ap.add_argument("--connections", type=int, default=2, help="smtp connections (transport default 2)")
    ap.add_argument("--no-drain", action="store_true", help="skip the drain-only measurement")
    args = ap.parse_args()
    n = args.n or (200 if args.quick else 20_000)
    runs = args.runs or (1 if args.quick else 3)
    result: dict[str, Any] = {
        "figure": "Figure 1: end-to-end throughput",
        "key": "fig1",
        "n": n,
        "runs": runs,
        "config": {"spooler_concurrency": args.concurrency, "smtp_connections": args.connections},
        "notes": [],
        "lines": [],
    }
    samples: dict[str, list[float]] = {k: [] for k in ("postroom", "smtplib", "source8", "source1", "postfix")}
    extra: dict[str, list[float]] = {"submit_rate": [], "daemon_cpu": [], "postfix_intake": [], "drain": []}
    skip = C.Postfix.available()
    if not C.have("smtp-sink"):
        result["notes"].append("smtp-sink is missing: the Python stand-in sink (pysink.py) was used instead")
    with C.Sink.start() as sink:
        result["sink"] = sink.kind
        postfix_cm = C.Postfix.start(sink.port) if skip is None else None
        pf = postfix_cm.__enter__() if postfix_cm is not None else None
        try:
            for r in range(runs):
                C.log(f"fig1 round {r + 1}/{runs}: postroom N={n}")
                with C.workdir("fig1") as work:
                    pr = run_postroom(sink.port, n, args, work)
                samples["postroom"].append(pr["rate"])
                extra["submit_rate"].append(pr["submit_rate"])
                extra["daemon_cpu"].append(pr["daemon_cpu_seconds"])
                C.log(f"fig1 round {r + 1}: postroom {pr['rate']:.0f} msg/s; references")
                samples["smtplib"].append(run_smtplib(sink.port, n))
                if sink.kind == "smtp-sink" and C.have("smtp-source"):
                    samples["source8"].append(n / C.smtp_source(n, 8, sink.port))
                    samples["source1"].append(n / C.smtp_source(n, 1, sink.port))
                if pf is not None:
                    p = run_postfix(pf, n)
                    samples["postfix"].append(p["rate"])
                    extra["postfix_intake"].append(p["intake_rate"])
            if not args.no_drain:
                C.log(f"fig1: drain-only pass, N={n}")
                with C.workdir("fig1-drain") as work:
                    extra["drain"].append(run_drain(sink.port, n, args, work)["rate"])
            C.log("fig1: statements and commits per delivered message (statement_count.py)")
            result["store_costs"] = statement_count.drain_costs(min(n, 2000), sink.port)
        finally:
            if postfix_cm is not None:
                postfix_cm.__exit__(None, None, None)
    if skip is not None:
        result["notes"].append(f"(c) Postfix relay skipped: {skip}")
    if not samples["source8"]:
        result["notes"].append("(b) smtp-source skipped: smtp-source or smtp-sink is missing")

    med = {k: (C.median(v) if v else None) for k, v in samples.items()}
    result["samples"] = samples
    result["extra_samples"] = extra
    result["median"] = med
    result["median_extra"] = {k: (C.median(v) if v else None) for k, v in extra.items()}
    result["ratios"] = {
        "postroom/postfix": C.ratio(med["postroom"], med["postfix"]),
        "postroom/smtplib": C.ratio(med["postroom"], med["smtplib"]),
        "postroom/smtp-source-8": C.ratio(med["postroom"], med["source8"]),
    }
    result["targets"] = {
        "postroom >= 2x Postfix": None
        if result["ratios"]["postroom/postfix"] is None
        else result["ratios"]["postroom/postfix"] >= 2.0,
        "postroom >= 80% of raw smtplib": None
        if result["ratios"]["postroom/smtplib"] is None
        else result["ratios"]["postroom/smtplib"] >= 0.8,
    }

    def line(label: str, key: str) -> str:
        runs_txt = ", ".join(f"{x:,.0f}" for x in samples[key]) or "skipped"
        return f"{label:<52} {C.fmt_rate(med[key]):>8} msg/s   (runs: {runs_txt})"

    mx = result["median_extra"]
    result["lines"] = [
        f"N = {n} messages × 1 KiB, 1 recipient; median of {runs} run(s); sink: {sink.kind}",
        line("postroom: submit → spooler daemon → smtp → sink", "postroom"),
        line("(a) smtplib, one reused connection → sink", "smtplib"),
        line("(b) smtp-source -s 8 -d → sink", "source8"),
        line("    smtp-source -s 1 -d → sink", "source1"),
        line("(c) Postfix: smtp-source -s 8 → queue → relay → sink", "postfix"),
        f"postroom/Postfix = {C.fmt_ratio(result['ratios']['postroom/postfix'])}   "
        f"postroom/smtplib-raw = {C.fmt_ratio(result['ratios']['postroom/smtplib'])}   "
        f"postroom/smtp-source = {C.fmt_ratio(result['ratios']['postroom/smtp-source-8'])}",
        f"(postroom submit side during the run: {C.fmt_rate(mx['submit_rate'])} msg/s; daemon CPU "
        f"{mx['daemon_cpu'] or 0:.1f} s; spooler drain alone: {C.fmt_rate(mx['drain'])} msg/s; "
        f"Postfix intake: {C.fmt_rate(mx['postfix_intake'])} msg/s)",
        *statement_count.cost_lines(result["store_costs"]),
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
