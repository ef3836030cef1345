"""What a running status page costs the spooler: figure 1's end-to-end run with and without it.

Figure 1's pipeline (fig1_end_to_end.py: N messages submitted one at a time while the CLI spooler
daemon delivers them over SMTP to the sink), run in pairs: without the page (A), and with
`spooler --http 127.0.0.1:PORT` while a client fetches /metrics and the overview once a second
each (B), as a Prometheus scraper and an open browser tab would. A/B/A/B, the order reversed every
other round, so load drift from other work on the machine hits both.

Reported per configuration: the median throughput (messages per second, first submit to last
outcome) and the median CPU of the spooler's process tree per delivered message (the page runs in
the daemon's process, so its requests are in that CPU); and the ratio B/A of both, with the
spread of the A runs, which says how much of a difference the machine's load could hide.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import common as C

from postroom.engine.runtime import DEFAULT_CONCURRENCY


def start_daemon(profile: Path, log: Path, workers: int, http: str | None) -> subprocess.Popen[Any]:
    command = [C.PY, "-m", "postroom", "--profile", str(profile), "spooler", "--workers", str(workers)]
    if http:
        command += ["--http", http]
    with log.open("ab") as fh:
        return subprocess.Popen(
            command,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


class Poller:
    """GET /metrics and / once a second each until stopped; counts the answers and their time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.fetched = 0
        self.failed = 0
        self.seconds: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _get(self, path: str) -> None:
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as response:
                response.read()
            self.fetched += 1
            self.seconds.append(time.perf_counter() - t0)
        except OSError:
            self.failed += 1

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            self._get("/metrics")
            self._get("/")
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(35)


def wait_page(url: str, daemon: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError("the spooler daemon exited before its page answered")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the page did not answer")


def run(sink_port: int, n: int, workers: int, with_page: bool, work: Path) -> dict[str, Any]:
    import postroom

    prof = C.make_profile(
        work / "profile", smtp_port=sink_port, connections=2 * workers, concurrency=DEFAULT_CONCURRENCY
    )
    where = f"127.0.0.1:{C.free_port()}" if with_page else None
    daemon = start_daemon(prof, work / "daemon.log", workers, where)
    poller: Poller | None = None
    try:
        C.wait_daemon_ready(prof, daemon, workers=workers)
        if where:
            wait_page(f"http://{where}", daemon)
            poller = Poller(f"http://{where}").__enter__()
        cpu0 = C.tree_cpu_seconds(daemon.pid)
        with postroom.logon(prof) as session:
            store_path = session.profile.store_path
            t0 = time.time()
            C.submit_one_at_a_time(session, n)
        last = C.wait_for_outcomes(store_path, n, daemon, work / "daemon.log")
        cpu = C.tree_cpu_seconds(daemon.pid) - cpu0
    finally:
        if poller is not None:
            poller.__exit__()
        C.stop_process(daemon, 30)
    counts = C.outcome_counts(store_path)
    if counts.get("delivered", 0) != n:
        raise RuntimeError(f"expected {n} delivered, the store says {counts}")
    out: dict[str, Any] = {"rate": n / (last - t0), "cpu_ms": cpu * 1000 / n}
    if poller is not None:
        out.update(
            fetched=poller.fetched, failed=poller.failed, page_ms=statistics.median(poller.seconds or [0]) * 1000
        )
    return out


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages per run (default 5000; --quick 300)")
    ap.add_argument("--workers", type=int, default=1, help="spooler processes (default 1: the page's own process)")
    args = ap.parse_args()
    n = args.n or (300 if args.quick else 5000)
    rounds = args.runs or (1 if args.quick else 3)
    results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    with C.Sink.start() as sink:
        for r in range(rounds):
            order = ["A", "B", "A", "B"] if r % 2 == 0 else ["B", "A", "B", "A"]
            for config in order:
                with C.workdir("webcost") as work:
                    got = run(sink.port, n, args.workers, config == "B", work)
                results[config].append(got)
                C.log(f"web page cost round {r + 1}/{rounds} {config}: {got}")
    lines = []
    for config, label in (("A", "without the page"), ("B", "with spooler --http, polled")):
        rates = [x["rate"] for x in results[config]]
        cpus = [x["cpu_ms"] for x in results[config]]
        lines.append(
            f"{label:32} {statistics.median(rates):7.0f} msg/s  {statistics.median(cpus):6.3f} ms CPU/msg"
            f"   (rates: {', '.join(f'{v:.0f}' for v in rates)}; CPU: {', '.join(f'{v:.3f}' for v in cpus)})"
        )
    rate_a = statistics.median(x["rate"] for x in results["A"])
    rate_b = statistics.median(x["rate"] for x in results["B"])
    cpu_a = statistics.median(x["cpu_ms"] for x in results["A"])
    cpu_b = statistics.median(x["cpu_ms"] for x in results["B"])
    spread = (max(x["rate"] for x in results["A"]) - min(x["rate"] for x in results["A"])) / rate_a
    fetched = sum(x.get("fetched", 0) for x in results["B"])
    failed = sum(x.get("failed", 0) for x in results["B"])
    page_ms = statistics.median(x.get("page_ms", 0) for x in results["B"])
    lines.append(
        f"throughput B/A {rate_b / rate_a:.3f} ({(1 - rate_b / rate_a) * 100:+.1f} % cost); "
        f"CPU/msg B/A {cpu_b / cpu_a:.3f} ({(cpu_b / cpu_a - 1) * 100:+.1f} %); "
        f"spread of the A runs' throughput {spread * 100:.1f} %"
    )
    lines.append(
        f"N = {n}, {rounds} round(s) of 4 runs, --workers {args.workers}; page requests {fetched} "
        f"answered, {failed} failed, median {page_ms:.1f} ms"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
