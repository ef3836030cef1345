"""Figure 6 — idle cost: the spooler daemon's first pass over a queue, then its CPU while 10,000 and
100,000 messages wait for a retry.

An SMTP sink answers every RCPT with a 4xx (`smtp-sink -r rcpt`); the smtp transport's
`temporary_failure_wait` is 3600 s. N messages are submitted, the CLI spooler daemon
(`python -m postroom --profile DIR spooler --workers 1`) is started and tries each one once: that
first pass is part of the figure (its time and its CPU). When every message is waiting for its
retry an hour later, the daemon's CPU time (utime + stime from /proc/PID/stat) is measured over
the window (60 s). Sizes: 10,000 and 100,000 (--quick: 200).

Reference, same run: the same daemon on a profile with an empty queue, over the same window.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import common as C


def daemon_cpu(sink_port: int, n: int, window: float, work: Path) -> dict[str, Any]:
    import postroom

    prof = C.make_profile(work / "profile", smtp_port=sink_port, temporary_failure_wait=3600)
    store_path = None
    with postroom.logon(prof) as session:
        if n:
            if C.has_submit_many(session):
                C.submit_batches(session, n, 1000)
            else:
                C.submit_one_at_a_time(session, n)
        store_path = session.profile.store_path
    daemon = C.spooler_daemon(prof, work / "daemon.log")
    try:
        C.wait_daemon_ready(prof, daemon)
        t0, first_cpu0 = time.monotonic(), C.cpu_seconds(daemon.pid)
        db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)
        deadline = t0 + max(300.0, n / 10)
        while True:
            busy = db.execute(
                "SELECT count(*) FROM messages WHERE queue_state='queued' AND "
                "(next_attempt IS NULL OR next_attempt <= ? OR lease_owner IS NOT NULL)",
                (time.time() + 600,),
            ).fetchone()[0]
            if busy == 0:
                break
            if daemon.poll() is not None:
                raise RuntimeError(f"spooler daemon exited ({daemon.returncode}); see {work / 'daemon.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{busy} message(s) still not waiting for a later retry")
            time.sleep(0.2)
        waiting = db.execute(
            "SELECT count(*) FROM messages WHERE queue_state='queued' AND wait_kind='retry'"
        ).fetchone()[0]
        db.close()
        settle, first_cpu = time.monotonic() - t0, C.cpu_seconds(daemon.pid) - first_cpu0
        time.sleep(min(2.0, window / 5))  # let the pass that released the last one finish its bookkeeping
        cpu0, w0 = C.cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(window)
        cpu1, w1 = C.cpu_seconds(daemon.pid), time.monotonic()
    finally:
        C.stop_process(daemon, 30)
    if waiting != n:
        raise RuntimeError(f"expected {n} messages waiting for a retry, found {waiting}")
    cpu = cpu1 - cpu0
    return {
        "n": n,
        "cpu_seconds": cpu,
        "window": w1 - w0,
        "per_minute": cpu * 60 / (w1 - w0),
        "first_pass_seconds": settle,
        "first_pass_cpu_seconds": first_cpu,
    }


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument(
        "-n",
        type=int,
        action="append",
        default=None,
        help="waiting messages, repeatable (default 10000 and 100000; --quick 200)",
    )
    ap.add_argument("--window", type=float, default=None, help="seconds measured (default 60; --quick 2)")
    args = ap.parse_args()
    sizes = args.n or ([200] if args.quick else [10_000, 100_000])
    window = args.window or (2.0 if args.quick else 60.0)
    runs = args.runs or 1
    result: dict[str, Any] = {
        "figure": "Figure 6: idle cost",
        "key": "fig6",
        "n": max(sizes),
        "window": window,
        "runs": runs,
        "notes": [],
    }
    loaded: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    empty: list[dict[str, Any]] = []
    with C.Sink.start(soft_reject="rcpt") as sink:
        result["sink"] = sink.kind
        if sink.kind != "smtp-sink":
            result["notes"].append("smtp-sink is missing: the Python stand-in sink (pysink.py) was used instead")
        for r in range(runs):
            for n in sizes:
                C.log(f"fig6 run {r + 1}/{runs}: {n} messages → 4xx, then {window:g} s idle")
                with C.workdir("fig6") as work:
                    loaded[n].append(daemon_cpu(sink.port, n, window, work))
            with C.workdir("fig6-empty") as work:
                empty.append(daemon_cpu(sink.port, 0, window, work))
    per_min_empty = C.median([x["per_minute"] for x in empty])
    rows = []
    for n in sizes:
        xs = loaded[n]
        rows.append(
            {
                "n": n,
                "per_minute": C.median([x["per_minute"] for x in xs]),
                "first_pass_seconds": C.median([x["first_pass_seconds"] for x in xs]),
                "first_pass_cpu_seconds": C.median([x["first_pass_cpu_seconds"] for x in xs]),
            }
        )
    per_min = max(x["per_minute"] for x in rows)
    result.update(
        loaded=[x for n in sizes for x in loaded[n]],
        sizes=rows,
        empty=empty,
        per_minute=per_min,
        per_minute_empty=per_min_empty,
    )
    result["targets"] = {"idle < 1 s CPU per minute at every size": per_min < 1.0}
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        growth = large["per_minute"] / small["per_minute"] if small["per_minute"] else None
        result["ratios"] = {f"idle CPU {large['n']}/{small['n']} waiting": growth}
    result["lines"] = [
        f"messages waiting for a retry in 3600 s; the daemon's first pass over them, then its CPU over {window:g} s; "
        f"{runs} run(s)",
        *[
            f"{x['n']:>7,} waiting: first pass {x['first_pass_seconds']:7.1f} s "
            f"({x['first_pass_cpu_seconds']:.1f} s CPU, "
            f"{x['first_pass_cpu_seconds'] * 1e6 / x['n']:.0f} µs/message); idle {x['per_minute']:.3f} s CPU per minute"
            for x in rows
        ],
        f"reference: same daemon, empty queue: {per_min_empty:.3f} s CPU per minute",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
