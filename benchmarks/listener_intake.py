"""SMTP listener intake: messages/s that `postroom serve smtp` accepts (250, durable in the store),
10 clients, 1 KiB each, beside Postfix's smtpd intake in the same run.

    python benchmarks/listener_intake.py            # 1,000 messages a run, median of 3 runs
    python benchmarks/listener_intake.py --quick    # 100 messages, one run

Both sides are driven by the same client, Postfix's `smtp-source -d -s 10` (ten sessions,
connections reused), so only the server differs. postroom's side: the listener alone (no spooler
daemon), so what is measured is "accepted and durable", as on Postfix's side, where smtpd puts
every message on hold (benchmarks/common.py `Postfix`: queue file fsynced, nothing delivered).
Goal (issue 18): at least 1× Postfix.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C

CLIENTS = 10


def listener_rate(work: Path, n: int) -> float:
    profile = C.make_profile(work / "p", smtp_port=C.free_port())
    port = C.free_port()
    cmd = [
        sys.executable,
        "-m",
        "postroom",
        "--profile",
        str(profile),
        "serve",
        "smtp",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    cmd += ["--log-level", "warning", "--max-connections", str(CLIENTS * 2)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        C.wait_port(port, timeout=60)
        return n / C.smtp_source(n, CLIENTS, port)
    finally:
        C.stop_process(proc)


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages per run (default 1000; --quick 100)")
    args = ap.parse_args()
    n = args.n or (100 if args.quick else 1_000)
    runs = args.runs or (1 if args.quick else 3)
    result: dict[str, Any] = {"figure": "Listener intake", "key": "listener", "n": n, "runs": runs, "notes": []}
    samples: dict[str, list[float]] = {"postroom": [], "postfix": []}
    if not C.have("smtp-source"):
        result["notes"].append("skipped: smtp-source (Debian package postfix) is not installed")
        C.emit(result, args.json)
        return 0
    skip = C.Postfix.available()
    pf_cm = C.Postfix.start(relay_port=C.free_port()) if skip is None else None
    pf = pf_cm.__enter__() if pf_cm is not None else None
    try:
        for r in range(runs):
            C.log(f"listener intake round {r + 1}/{runs}")
            with C.workdir("listener") as work:
                samples["postroom"].append(listener_rate(work, n))
            if pf is not None:
                samples["postfix"].append(n / C.smtp_source(n, CLIENTS, pf.hold_port))
                pf.delete_all()
    finally:
        if pf_cm is not None:
            pf_cm.__exit__(None, None, None)
    if skip is not None:
        result["notes"].append(f"Postfix intake skipped: {skip}")
    med = {k: (C.median(v) if v else None) for k, v in samples.items()}
    result["samples"], result["median"] = samples, med
    result["ratios"] = {"postroom/postfix": C.ratio(med["postroom"], med["postfix"])}
    result["targets"] = {">= 1x Postfix": (result["ratios"]["postroom/postfix"] or 0) >= 1.0 if pf else None}

    def line(label: str, key: str) -> str:
        runs_txt = ", ".join(f"{x:,.0f}" for x in samples[key]) or "skipped"
        return f"{label:<62} {C.fmt_rate(med[key]):>8} msg/s   (runs: {runs_txt})"

    result["lines"] = [
        f"N = {n} messages × 1 KiB, {CLIENTS} sessions (smtp-source -d -s {CLIENTS}); median of {runs} run(s)",
        line("postroom serve smtp: 250 once durable in the store", "postroom"),
        line("Postfix smtpd: 250 once in the queue (hold)", "postfix"),
        f"postroom/Postfix = {C.fmt_ratio(result['ratios']['postroom/postfix'])}",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
