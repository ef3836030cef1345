"""Figure 5 — offline flush at scale: N messages queued offline, then one Send/Receive to smtp-sink.

The profile is put offline; N messages (1 KiB, one recipient) are submitted (with submit_many in
batches of 1,000 when the API has it — how they were queued is not what is measured). Then a
fresh process logs on and calls `Session.send_receive()` once (the "All Accounts" group): the
time of that call, and the peak RSS (VmHWM) of that process, are the figure. The outcomes are
read back from the store afterwards: every message must be delivered.

Reference: figure 1's end-to-end rate from the same driver run (passed with --fig1-json), and
the RSS of the same process right after logon, before the flush (the baseline it grows from).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common as C


def child(profile: str) -> None:
    """The process doing the flush: logon, one Send/Receive, report time and peak RSS."""
    import postroom

    with postroom.logon(profile) as session:
        base = C.vm_hwm_kib()  # after logon (the store is open; transports log on inside send_receive)
        t0 = time.perf_counter()
        summary = session.send_receive()
        dt = time.perf_counter() - t0
        peak = C.vm_hwm_kib()
    print(
        json.dumps({"seconds": dt, "sent": summary.sent, "failed": summary.failed, "base_kib": base, "peak_kib": peak})
    )


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return 0
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages (default 100000; --quick 300)")
    ap.add_argument("--fig1-json", type=Path, default=None, help="figure 1's JSON, for the throughput ratio")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--connections", type=int, default=2)
    args = ap.parse_args()
    n = args.n or (300 if args.quick else 100_000)
    runs = args.runs or 1
    result: dict[str, Any] = {
        "figure": "Figure 5: offline flush at scale",
        "key": "fig5",
        "n": n,
        "runs": runs,
        "notes": [],
    }
    samples: list[dict[str, Any]] = []
    import postroom

    with C.Sink.start() as sink:
        result["sink"] = sink.kind
        if sink.kind != "smtp-sink":
            result["notes"].append("smtp-sink is missing: the Python stand-in sink (pysink.py) was used instead")
        for r in range(runs):
            with C.workdir("fig5") as work:
                prof = C.make_profile(
                    work / "profile",
                    smtp_port=sink.port,
                    connections=args.connections,
                    concurrency=args.concurrency,
                    settings={"mode": "offline"},
                )
                C.log(f"fig5 run {r + 1}/{runs}: queueing {n} messages offline")
                t0 = time.perf_counter()
                with postroom.logon(prof) as session:
                    if C.has_submit_many(session):
                        C.submit_batches(session, n, 1000)
                    else:
                        C.submit_one_at_a_time(session, n)
                    store_path = session.profile.store_path
                queued_in = time.perf_counter() - t0
                C.log(f"fig5: queued in {queued_in:.1f} s; flushing in a fresh process")
                out = subprocess.run(
                    [C.PY, __file__, "--child", str(prof)], capture_output=True, text=True, timeout=max(600, n / 20)
                )
                if out.returncode != 0:
                    raise RuntimeError(f"the flush process failed: {out.stderr.strip()[-2000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                counts = C.outcome_counts(store_path)
                if counts.get("delivered", 0) != n:
                    raise RuntimeError(f"expected {n} delivered outcomes, found {counts} (flush said {res})")
                res["rate"] = n / res["seconds"]
                res["queue_seconds"] = queued_in
                samples.append(res)
                C.log(f"fig5: {res['rate']:.0f} msg/s, peak RSS {res['peak_kib'] / 1024:.0f} MiB")
    rate = C.median([s["rate"] for s in samples])
    peak_mib = C.median([s["peak_kib"] for s in samples]) / 1024
    base_mib = C.median([s["base_kib"] for s in samples]) / 1024
    seconds = C.median([s["seconds"] for s in samples])
    fig1 = drain = None
    if args.fig1_json and args.fig1_json.exists():
        f1 = json.loads(args.fig1_json.read_text())
        fig1 = f1.get("median", {}).get("postroom")
        drain = (f1.get("median_extra") or {}).get("drain")
    rel = C.ratio(rate, fig1)
    rel_drain = C.ratio(rate, drain)
    result.update(
        samples=samples,
        rate=rate,
        seconds=seconds,
        peak_mib=peak_mib,
        base_mib=base_mib,
        fig1_rate=fig1,
        ratio_to_fig1=rel,
        fig1_drain_rate=drain,
        ratio_to_fig1_drain=rel_drain,
    )
    result["targets"] = {
        "peak RSS <= 150 MB": peak_mib * 1024 * 1024 <= 150e6,
        # "Within 20%" read as "not more than 20% slower than figure 1": a flush at scale must not degrade.
        "throughput >= 80% of figure 1 (not more than 20% slower)": None if rel is None else rel >= 0.80,
    }
    result["lines"] = [
        f"N = {n} messages queued offline, one Send/Receive to {sink.kind}; {runs} run(s)",
        f"postroom Send/Receive: {seconds:,.1f} s = {C.fmt_rate(rate)} msg/s;  peak RSS (VmHWM) "
        f"{peak_mib:,.1f} MiB (after logon, before the flush: {base_mib:,.1f} MiB)",
        f"reference: figure 1 end-to-end {C.fmt_rate(fig1)} msg/s → flush/figure-1 = {C.fmt_ratio(rel)};  "
        f"figure 1's spooler drain alone {C.fmt_rate(drain)} msg/s → flush/drain = {C.fmt_ratio(rel_drain)}",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
