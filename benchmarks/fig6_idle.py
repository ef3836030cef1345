"""Figure 6 — idle cost: CPU time of the spooler daemon over 60 s while 10,000 messages wait.

An SMTP sink answers every RCPT with a 4xx (`smtp-sink -r rcpt`); the smtp transport's
`temporary_failure_wait` is 3600 s. 10,000 messages are submitted, the CLI spooler daemon
(`python -m postroom --profile DIR spooler`) is started and tries each one once; when every
message is waiting for its retry an hour later, the daemon's CPU time (utime + stime from
/proc/PID/stat) is measured over the window (60 s).

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
        t0 = time.monotonic()
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
        settle = time.monotonic() - t0
        time.sleep(min(2.0, window / 5))  # let the pass that released the last one finish its bookkeeping
        cpu0, w0 = C.cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(window)
        cpu1, w1 = C.cpu_seconds(daemon.pid), time.monotonic()
    finally:
        C.stop_process(daemon, 30)
    if waiting != n:
        raise RuntimeError(f"expected {n} messages waiting for a retry, found {waiting}")
    cpu = cpu1 - cpu0
    return {"cpu_seconds": cpu, "window": w1 - w0, "per_minute": cpu * 60 / (w1 - w0), "first_pass_seconds": settle}


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="waiting messages (default 10000; --quick 200)")
    ap.add_argument("--window", type=float, default=None, help="seconds measured (default 60; --quick 2)")
    args = ap.parse_args()
    n = args.n or (200 if args.quick else 10_000)
    window = args.window or (2.0 if args.quick else 60.0)
    runs = args.runs or 1
    result: dict[str, Any] = {
        "figure": "Figure 6: idle cost",
        "key": "fig6",
        "n": n,
        "window": window,
        "runs": runs,
        "notes": [],
    }
    loaded: list[dict[str, Any]] = []
    empty: list[dict[str, Any]] = []
    with C.Sink.start(soft_reject="rcpt") as sink:
        result["sink"] = sink.kind
        if sink.kind != "smtp-sink":
            result["notes"].append("smtp-sink is missing: the Python stand-in sink (pysink.py) was used instead")
        for r in range(runs):
            C.log(f"fig6 run {r + 1}/{runs}: {n} messages → 4xx, then {window:g} s idle")
            with C.workdir("fig6") as work:
                loaded.append(daemon_cpu(sink.port, n, window, work))
            with C.workdir("fig6-empty") as work:
                empty.append(daemon_cpu(sink.port, 0, window, work))
    per_min = C.median([x["per_minute"] for x in loaded])
    per_min_empty = C.median([x["per_minute"] for x in empty])
    result.update(loaded=loaded, empty=empty, per_minute=per_min, per_minute_empty=per_min_empty)
    result["targets"] = {"idle < 1 s CPU per minute": per_min < 1.0}
    result["lines"] = [
        f"{n} messages waiting for a retry in 3600 s; daemon CPU over {window:g} s; {runs} run(s)",
        f"postroom daemon, {n} waiting:   {per_min:.3f} s CPU per minute "
        f"(first pass over the queue took {C.median([x['first_pass_seconds'] for x in loaded]):.1f} s)",
        f"reference: same daemon, empty queue: {per_min_empty:.3f} s CPU per minute",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
