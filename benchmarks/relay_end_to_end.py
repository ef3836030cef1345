"""postroom as a relay, end to end, beside Postfix relaying the same way: both take the mail from
the same client over SMTP and hand it on to the same sink.

    python benchmarks/relay_end_to_end.py             # N = 5,000 a run, median of 3 interleaved runs
    python benchmarks/relay_end_to_end.py --quick     # 100 messages, one run

Figure 1 compares postroom fed by one process submitting one durable message at a time with
Postfix fed by `smtp-source -s 8`; here both are fed by `smtp-source -d -s 8` (eight sessions,
connections reused, 1 KiB), so only the relay differs:

  * postroom: `postroom spooler --workers W --smtp 127.0.0.1:PORT` (the listener in the daemon:
    `250` once the message is durable in the store), delivering over `smtp` to `smtp-sink`, with
    the profile's defaults (relayed mail deleted once handled);
  * Postfix: smtpd → queue → smtp → the same sink (figure 1's reference (c)).

Time runs from the first connection to the last outcome in the store (postroom: the last
`delivered` event, which stays when the message is deleted) or until Postfix's queue is empty.
CPU per message: every process of postroom's daemon; every Postfix daemon.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C
from fig1_end_to_end import run_postfix

from postroom.engine.runtime import DEFAULT_CONCURRENCY

SESSIONS = 8


def daemon_command(profile: Path, workers: int) -> list[str]:
    return [C.PY, "-m", "postroom", "--profile", str(profile), "spooler", "--workers", str(workers)]


def run_postroom(sink_port: int, n: int, work: Path, workers: int) -> dict[str, float]:
    from postroom.profile import Profile

    profile = C.make_profile(
        work / "profile", smtp_port=sink_port, connections=2 * workers, concurrency=DEFAULT_CONCURRENCY
    )
    port = C.free_port()
    log = work / "daemon.log"
    with log.open("ab") as fh:
        daemon = subprocess.Popen(
            [*daemon_command(profile, workers), "--smtp", f"127.0.0.1:{port}"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )
    try:
        C.wait_daemon_ready(profile, daemon, workers=workers)
        C.wait_port(port, timeout=60)
        cpu0 = C.tree_cpu_seconds(daemon.pid)
        t0 = time.time()
        intake = C.smtp_source(n, SESSIONS, port)
        last = C.wait_for_outcomes(Profile.load(profile).store_path, n, daemon, log, C.DELIVERED_EVENTS_SQL)
        cpu = C.tree_cpu_seconds(daemon.pid) - cpu0
    finally:
        C.stop_process(daemon, 30)
    return {"rate": n / (last - t0), "intake_rate": n / intake, "cpu_ms": cpu * 1000 / n}


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages per run (default 5000; --quick 100)")
    ap.add_argument("--workers", type=int, default=None, help="spooler processes (default: the number of CPUs)")
    args = ap.parse_args()
    n = args.n or (100 if args.quick else 5000)
    runs = args.runs or (1 if args.quick else 3)
    workers = args.workers or os.cpu_count() or 1
    result: dict[str, Any] = {"figure": "Relay end to end", "key": "relay", "n": n, "runs": runs, "notes": []}
    samples: dict[str, list[dict[str, float]]] = {"postroom": [], "postfix": []}
    if not (C.have("smtp-sink") and C.have("smtp-source")):
        result["notes"].append("smtp-sink or smtp-source is missing: nothing measured")
        C.emit(result, args.json)
        return 1
    with C.Sink.start() as sink, C.optional_postfix(sink.port, result["notes"], "Postfix relay") as pf:
        for r in range(runs):
            order = ["postroom", "postfix"] if r % 2 == 0 else ["postfix", "postroom"]
            for kind in order:
                C.log(f"relay round {r + 1}/{runs}: {kind}")
                if kind == "postroom":
                    with C.workdir("relay") as work:
                        samples["postroom"].append(run_postroom(sink.port, n, work, workers))
                elif pf is not None:
                    samples["postfix"].append(run_postfix(pf, n))

    def med(kind: str, key: str) -> float | None:
        values = [s[key] for s in samples[kind]]
        return C.median(values) if values else None

    rate = {k: med(k, "rate") for k in samples}
    runs_of = {k: [s["rate"] for s in samples[k]] for k in samples}
    result["samples"] = samples
    result["lines"] = [
        f"N = {n} messages × 1 KiB, 1 recipient, smtp-source -d -s {SESSIONS} → relay → smtp-sink; "
        f"median of {runs} interleaved run(s); postroom --workers {workers}",
        C.rate_line(
            f"postroom spooler --smtp (--workers {workers})",
            44,
            rate["postroom"],
            runs_of["postroom"],
            f"   {med('postroom', 'cpu_ms') or float('nan'):.2f} ms CPU/msg",
        ),
        C.rate_line(
            "Postfix: smtpd → queue → smtp",
            44,
            rate["postfix"],
            runs_of["postfix"],
            f"   {med('postfix', 'cpu_ms') or float('nan'):.2f} ms CPU/msg",
        ),
        f"postroom/Postfix = {C.fmt_ratio(C.ratio(rate['postroom'], rate['postfix']))}   intake: postroom "
        f"{C.fmt_rate(med('postroom', 'intake_rate'))} msg/s, "
        f"Postfix {C.fmt_rate(med('postfix', 'intake_rate'))} msg/s",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
