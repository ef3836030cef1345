"""The status page's queue page with a deep queue: how long the first page, a page deep in the
queue, and a filtered page take, with 100,000 queued messages (issue 19 asks under 200 ms).

The messages are submitted offline (nothing sends them), then `postroom serve http` serves the
profile on a free loopback port and each page is fetched --runs times; the median is reported.
Keyset paging (store schema 5) should make the deep page cost what the first one does.

    python benchmarks/web_queue_page.py [--messages 100000] [--runs 10] [--quick] [--json out.json]
"""

from __future__ import annotations

import subprocess
import time
import urllib.request

from common import (
    PY,
    arg_parser,
    emit,
    free_port,
    log,
    machine,
    median,
    stop_process,
    submit_batches,
    wait_http,
    workdir,
)


def fetch_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
        assert response.status == 200
    return (time.perf_counter() - started) * 1000


def main() -> None:
    ap = arg_parser(__doc__ or "")
    ap.add_argument("--messages", type=int, default=100_000)
    args = ap.parse_args()
    n = 1000 if args.quick else args.messages
    runs = 1 if args.quick else (args.runs or 10)

    import postroom
    from postroom.profile import Profile

    with workdir("web") as d:
        profile = Profile.create(d / "profile")
        started = time.perf_counter()
        with postroom.logon(profile) as session:
            session.set_mode("offline")
            submit_batches(session, n, 1000)
            middle = session.queue_page(limit=1).entries[0].id + n * 9 // 10
            held = session.queue_page(limit=1).entries[0].id
            session.hold(held)
        log(f"{n} messages queued in {time.perf_counter() - started:.1f} s")
        port = free_port()
        page = subprocess.Popen(
            [PY, "-m", "postroom", "--profile", str(d / "profile"), "serve", "http", "--listen", f"127.0.0.1:{port}"],
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base)
            pages = {
                "first page": "/queue",
                "page 90% deep": f"/queue?after={middle}",
                "held only": "/queue?state=held",
                "text filter (last page)": f"/queue?q=bench+{n - 1}",
                "overview": "/",
            }
            results = {}
            for name, path in pages.items():
                fetch_ms(base + path)  # warm
                results[name] = median([fetch_ms(base + path) for _ in range(runs)])
        finally:
            stop_process(page)
    emit(
        {
            "figure": f"Status page: the queue page with {n:,} queued messages (median of {runs})",
            "messages": n,
            "ms": results,
            "machine": machine(),
            "lines": [f"{name:26s} {ms:8.1f} ms" for name, ms in results.items()],
            "notes": ["the text filter reads the queue in order until the page is full: it scans when few match"],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
