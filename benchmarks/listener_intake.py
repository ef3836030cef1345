"""SMTP listener intake: messages/s that `postroom serve smtp` accepts (250, durable in the store),
10 clients, 1 KiB each, beside Postfix's smtpd intake in the same run.

    python benchmarks/listener_intake.py            # 1,000 messages a run, median of 3 runs
    python benchmarks/listener_intake.py --quick    # 100 messages, one run
    python benchmarks/listener_intake.py --kill     # also: SIGKILL the daemon during a 1,000-message intake

Both sides are driven by the same client, Postfix's `smtp-source -d -s 10` (ten sessions,
connections reused), so only the server differs. postroom's side: the listener alone (no spooler
daemon), so what is measured is "accepted and durable", as on Postfix's side, where smtpd puts
every message on hold (benchmarks/common.py `Postfix`: queue file fsynced, nothing delivered).
Goal (issue 18): at least 1× Postfix.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C

CLIENTS = 10


def listener_rate(work: Path, n: int, processes: int = 1) -> tuple[float, float]:
    """(messages/s, CPU ms per message of the listener's processes) for one intake of n messages."""
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
    cmd += ["--log-level", "warning", "--max-connections", str(CLIENTS * 2), "--processes", str(processes)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        C.wait_listeners(port, processes, timeout=60)  # every process, or the first takes every session
        cpu0 = C.tree_cpu_seconds(proc.pid)
        rate = n / C.smtp_source(n, CLIENTS, port)
        return rate, (C.tree_cpu_seconds(proc.pid) - cpu0) * 1000 / n
    finally:
        C.stop_process(proc)


def postfix_rate(pf: C.Postfix, n: int) -> tuple[float, float]:
    """The same for Postfix: every daemon of the instance (smtpd, cleanup, ...) counts."""
    master = pf.master_pid()
    cpu0 = C.tree_cpu_seconds(master)
    rate = n / C.smtp_source(n, CLIENTS, pf.hold_port)
    return rate, (C.tree_cpu_seconds(master) - cpu0) * 1000 / n


def _listening_daemon(profile: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "postroom", "--profile", str(profile), "spooler", "--smtp", f"127.0.0.1:{port}"]
    cmd += ["--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    C.wait_port(port, timeout=60)
    return proc


def kill_with_workers(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the daemon and its workers: the listener runs in a worker (`spooler --worker-of`),
    which a SIGKILL of the daemon alone leaves answering a while longer."""
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    proc.send_signal(signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def kill_run(work: Path, per_client: int) -> dict[str, Any]:
    """Ten clients send `per_client` messages each to `spooler --smtp`; SIGKILL once a third got 250;
    a new daemon then delivers the rest. Every message that got 250 must reach its Maildir."""
    profile = C.make_profile(work / "p", services=[("maildir", "local", {"root": "maildir", "domains": ["kill.test"]})])
    settings = profile / "profile.toml"
    settings.write_text(settings.read_text().replace("[profile]\n", "[profile]\nlease_seconds = 3.0\n", 1))
    accepted: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(n: int, port: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                for i in range(per_client):
                    mid = f"<c{n}-m{i}@kill.test>"
                    body = f"From: c{n}@kill.test\nTo: u{n}@kill.test\nMessage-ID: {mid}\n\n{C.BODY}"
                    smtp.sendmail(f"c{n}@kill.test", [f"u{n}@kill.test"], body.replace("\n", "\r\n").encode())
                    with lock:
                        accepted.append(mid)
        except (smtplib.SMTPException, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    port = C.free_port()
    proc = _listening_daemon(profile, port)
    threads = [threading.Thread(target=client, args=(n, port)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    while len(accepted) < CLIENTS * per_client // 3 and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    kill_with_workers(proc)
    proc.wait()
    for t in threads:
        t.join()
    got_250 = set(accepted)

    def delivered() -> set[str]:
        found = set()
        for path in (profile / "maildir" / "kill.test").glob("u*/new/*"):
            m = re.search(rb"^Message-ID: (<[^>]+>)", path.read_bytes(), re.MULTILINE)
            if m:
                found.add(m.group(1).decode())
        return found

    port = C.free_port()
    proc = _listening_daemon(profile, port)
    deadline = time.monotonic() + 600
    while not got_250 <= delivered() and time.monotonic() < deadline:
        time.sleep(0.5)
    C.stop_process(proc)
    return {
        "sent": CLIENTS * per_client,
        "got_250": len(got_250),
        "lost": len(got_250 - delivered()),
        "client_errors": errors[:3],
    }


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages per run (default 1000; --quick 100)")
    ap.add_argument("--processes", type=int, default=1, help="postroom listener processes (serve smtp --processes)")
    ap.add_argument("--kill", action="store_true", help="also SIGKILL the daemon during an intake of n messages")
    args = ap.parse_args()
    n = args.n or (100 if args.quick else 1_000)
    runs = args.runs or (1 if args.quick else 3)
    result: dict[str, Any] = {"figure": "Listener intake", "key": "listener", "n": n, "runs": runs, "notes": []}
    samples: dict[str, list[float]] = {"postroom": [], "postfix": [], "postroom_cpu_ms": [], "postfix_cpu_ms": []}
    if not C.have("smtp-source"):
        result["notes"].append("skipped: smtp-source (Debian package postfix) is not installed")
        C.emit(result, args.json)
        return 0
    with C.optional_postfix(C.free_port(), result["notes"], "Postfix intake") as pf:
        for r in range(runs):
            C.log(f"listener intake round {r + 1}/{runs}")
            with C.workdir("listener") as work:
                rate, cpu_ms = listener_rate(work, n, args.processes)
            samples["postroom"].append(rate)
            samples["postroom_cpu_ms"].append(cpu_ms)
            if pf is not None:
                rate, cpu_ms = postfix_rate(pf, n)
                samples["postfix"].append(rate)
                samples["postfix_cpu_ms"].append(cpu_ms)
                pf.delete_all()
    med = {k: (C.median(v) if v else None) for k, v in samples.items()}
    result["samples"], result["median"] = samples, med
    result["ratios"] = {"postroom/postfix": C.ratio(med["postroom"], med["postfix"])}
    result["targets"] = {">= 1x Postfix": (result["ratios"]["postroom/postfix"] or 0) >= 1.0 if pf else None}

    def line(label: str, key: str) -> str:
        return C.rate_line(label, 62, med[key], samples[key])

    def cpu(key: str) -> str:
        value = med[key]
        return "n/a" if value is None or value != value else f"{value:.2f}"

    result["ratios"]["postroom/postfix CPU per message"] = C.ratio(med["postroom_cpu_ms"], med["postfix_cpu_ms"])
    result["lines"] = [
        f"N = {n} messages × 1 KiB, {CLIENTS} sessions (smtp-source -d -s {CLIENTS}); median of {runs} run(s)",
        line(f"postroom serve smtp --processes {args.processes}: 250 once durable in the store", "postroom"),
        line("Postfix smtpd: 250 once in the queue (hold)", "postfix"),
        f"postroom/Postfix = {C.fmt_ratio(result['ratios']['postroom/postfix'])}",
        f"CPU per message (all processes of each side): postroom {cpu('postroom_cpu_ms')} ms, "
        f"Postfix {cpu('postfix_cpu_ms')} ms",
    ]
    if args.kill:
        with C.workdir("listener-kill") as work:
            killed = kill_run(work, max(1, n // CLIENTS))
        result["kill"] = killed
        result["lines"].append(
            f"SIGKILL during the intake of {killed['sent']} messages from {CLIENTS} clients: "
            f"{killed['got_250']} got 250, {killed['lost']} of them lost"
        )
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
