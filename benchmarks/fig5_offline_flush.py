"""Figure 5 — offline flush at scale: N messages queued offline, then one Send/Receive to smtp-sink.

The profile is put offline; N messages (1 KiB, one recipient) are submitted (with submit_many in
batches of 1,000 when the API has it — how they were queued is not what is measured). Then a
fresh process logs on and calls `Session.send_receive()` once (the "All Accounts" group): the
time of that call, and the peak RSS (VmHWM) of that process, are the figure. The outcomes are
read back from the store afterwards: every message must be delivered.

Reference: the spooler's drain rate (issue 17): the same N queued online and drained by one
`Session.deliver()` pass in a fresh process, measured in this run beside the flush — a Send/Receive
is a drain of the Outbox, so it is judged against one. Figure 1's end-to-end rate (passed with
--fig1-json) is shown beside it, not judged; and the RSS of the flushing process right after
logon, before the flush (the baseline it grows from).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common as C


def child(profile: str, how: str = "flush") -> None:
    """The process doing the work: logon, one Send/Receive (or one deliver() pass: the drain), report
    time and peak RSS."""
    import postroom

    with postroom.logon(profile) as session:
        base = C.vm_hwm_kib()  # after logon (the store is open; transports log on inside send_receive)
        t0 = time.perf_counter()
        if how == "drain":
            done = session.deliver()
            sent, failed = done.delivered, done.failed
        else:
            summary = session.send_receive()
            sent, failed = summary.sent, summary.failed
        dt = time.perf_counter() - t0
        peak = C.vm_hwm_kib()
    print(json.dumps({"seconds": dt, "sent": sent, "failed": failed, "base_kib": base, "peak_kib": peak}))


def measure(sink_port: int, n: int, args: Any, how: str) -> dict[str, Any]:
    """Queue n messages (offline for the flush, online for the drain), then the work in a fresh process."""
    import postroom

    with C.workdir(f"fig5-{how}") as work:
        prof = C.make_profile(
            work / "profile",
            smtp_port=sink_port,
            connections=args.connections,
            concurrency=args.concurrency,
            settings={"mode": "offline" if how == "flush" else "online"},
        )
        C.log(f"fig5 {how}: queueing {n} messages")
        t0 = time.perf_counter()
        with postroom.logon(prof) as session:
            if C.has_submit_many(session):
                C.submit_batches(session, n, 1000)
            else:
                C.submit_one_at_a_time(session, n)
            store_path = session.profile.store_path
        queued_in = time.perf_counter() - t0
        C.log(f"fig5 {how}: queued in {queued_in:.1f} s; now in a fresh process")
        out = subprocess.run(
            [C.PY, __file__, "--child", str(prof), how], capture_output=True, text=True, timeout=max(600, n / 20)
        )
        if out.returncode != 0:
            raise RuntimeError(f"the {how} process failed: {out.stderr.strip()[-2000:]}")
        res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        counts = C.outcome_counts(store_path)
    if counts.get("delivered", 0) != n:
        raise RuntimeError(f"{how}: expected {n} delivered outcomes, found {counts} (the process said {res})")
    res["rate"] = n / res["seconds"]
    res["queue_seconds"] = queued_in
    C.log(f"fig5 {how}: {res['rate']:.0f} msg/s, peak RSS {res['peak_kib'] / 1024:.0f} MiB")
    return res


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return 0
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages (default 100000; --quick 200)")
    ap.add_argument("--fig1-json", type=Path, default=None, help="figure 1's JSON, for the throughput ratio")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--connections", type=int, default=2)
    args = ap.parse_args()
    n = args.n or (200 if args.quick else 100_000)
    runs = args.runs or 1
    result: dict[str, Any] = {
        "figure": "Figure 5: offline flush at scale",
        "key": "fig5",
        "n": n,
        "runs": runs,
        "notes": [],
    }
    samples: list[dict[str, Any]] = []
    drains: list[dict[str, Any]] = []
    with C.Sink.start() as sink:
        result["sink"] = sink.kind
        if sink.kind != "smtp-sink":
            result["notes"].append("smtp-sink is missing: the Python stand-in sink (pysink.py) was used instead")
        for r in range(runs):  # flush and drain alternate, so load drift hits both
            C.log(f"fig5 run {r + 1}/{runs}")
            samples.append(measure(sink.port, n, args, "flush"))
            drains.append(measure(sink.port, n, args, "drain"))
    rate = C.median([s["rate"] for s in samples])
    drain_rate = C.median([s["rate"] for s in drains])
    peak_mib = C.median([s["peak_kib"] for s in samples]) / 1024
    base_mib = C.median([s["base_kib"] for s in samples]) / 1024
    seconds = C.median([s["seconds"] for s in samples])
    fig1 = None
    if args.fig1_json and args.fig1_json.exists():
        f1 = json.loads(args.fig1_json.read_text())
        fig1 = f1.get("median", {}).get("postroom")
    rel = C.ratio(rate, fig1)
    rel_drain = C.ratio(rate, drain_rate)
    result.update(
        samples=samples,
        rate=rate,
        seconds=seconds,
        peak_mib=peak_mib,
        base_mib=base_mib,
        fig1_rate=fig1,
        ratio_to_fig1=rel,
        drains=drains,
        drain_rate=drain_rate,
        ratio_to_drain=rel_drain,
    )
    result["targets"] = {
        "peak RSS <= 150 MB": peak_mib * 1024 * 1024 <= 150e6,
        # "Within 20%" of the drain: a flush at scale must not be slower than draining the same queue online.
        "throughput >= 80% of the drain rate of the same N": None if rel_drain is None else rel_drain >= 0.80,
    }
    result["lines"] = [
        f"N = {n} messages queued offline, one Send/Receive to {sink.kind}; {runs} run(s)",
        f"postroom Send/Receive: {seconds:,.1f} s = {C.fmt_rate(rate)} msg/s;  peak RSS (VmHWM) "
        f"{peak_mib:,.1f} MiB (after logon, before the flush: {base_mib:,.1f} MiB)",
        f"reference: the same {n} drained online by one deliver() pass, same run: {C.fmt_rate(drain_rate)} msg/s "
        f"→ flush/drain = {C.fmt_ratio(rel_drain)}  (figure 1 end to end {C.fmt_rate(fig1)} msg/s → "
        f"flush/figure-1 = {C.fmt_ratio(rel)}, not judged)",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
