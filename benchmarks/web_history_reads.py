"""What the status page's charts and /metrics read from the history, at 1,000 and 100,000 delivered
messages (issue 19): the reads must not grow with the history.

For each size, the messages are submitted and delivered by one `deliver()` pass through the
benchmark `stamp` transport (the real write path: the history and its running totals, store schema
6). Then, in this process, the median of --runs calls of each read:

* the totals (what the page and /metrics read now): `delivery_stats(LATENCY_BUCKETS)`, the hour's
  chart (60 steps of a minute) and the day's (48 steps of 30 minutes);
* the history scans the code before schema 6 ran for the same answers (still there for times or
  bounds the totals do not keep): the latency histogram joined over the whole history, and the
  chart read from the events themselves;

and over HTTP, `postroom serve http` on the profile (the stamp service removed: serve loads only
built-in kinds): `/metrics` and the overview page, each fetched --runs times after a warm-up. The
page caches its reads for 5 s (60 s for the day's chart); the fetches here are further apart than
that only when --pause is given, so by default they mostly show the cached cost; the in-process
figures are the reads themselves.

    python benchmarks/web_history_reads.py [--sizes 1000,100000] [--runs 10] [--pause 5.5]
        [--pg-url postgresql://…] [--quick] [--json out.json]

With --pg-url the store is on PostgreSQL (a fresh schema on that server, dropped afterwards).
"""

from __future__ import annotations

import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import common as C
import stamp_transport  # noqa: F401  (registers the "stamp" transport kind)
from statement_count import fresh_schema


def ms(read: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        read()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def fetch_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
        assert response.status == 200
    return (time.perf_counter() - started) * 1000


def measure(n: int, work: Path, runs: int, pause: float, store_url: str | None) -> dict[str, Any]:
    import postroom
    from postroom.profile import Profile
    from postroom.web.metrics import LATENCY_BUCKETS

    prof = C.make_profile(
        work / "profile",
        concurrency=64,
        settings={"store": store_url} if store_url else {},
        services=[("stamp", "local", {"file": str(work / "stamps"), "address_types": ["SMTP"]})],
    )
    started = time.perf_counter()
    with postroom.logon(prof) as session:
        C.submit_batches(session, n, 1000)
        summary = session.deliver()
        if summary.delivered != n:
            raise RuntimeError(f"{summary.delivered} of {n} delivered")
        C.log(f"{n:,} messages submitted and delivered in {time.perf_counter() - started:.1f} s")
        store: Any = session.engine.store
        end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        odd = end - timedelta(seconds=1)  # not a whole minute: answered from the history itself
        scanned_bounds = (*LATENCY_BUCKETS, 1e12)  # a bound the totals do not keep: the latency scan
        reads = {
            "totals: counters + latency histogram": lambda: session.delivery_stats(LATENCY_BUCKETS),
            "totals: hour chart (60 x 1 min)": lambda: session.activity(end - timedelta(hours=1), end, step_seconds=60),
            "totals: day chart (48 x 30 min)": lambda: session.activity(
                end - timedelta(days=1), end, step_seconds=1800
            ),
            "scan: latency histogram (old code)": lambda: session.delivery_stats(scanned_bounds),
            "scan: hour chart (old code)": lambda: session.activity(odd - timedelta(hours=1), odd, step_seconds=60),
            "scan: day chart (old code)": lambda: session.activity(odd - timedelta(days=1), odd, step_seconds=1800),
        }
        results = {name: ms(read, runs) for name, read in reads.items()}
        rows = {
            t: int(store._q(f"SELECT count(*) FROM {t}")[0][0]) for t in ("events", "history_totals", "history_minutes")
        }
    profile = Profile.load(prof)
    profile.remove_service("local")
    profile.save()
    port = C.free_port()
    page = subprocess.Popen(
        [C.PY, "-m", "postroom", "--profile", str(prof), "serve", "http", "--listen", f"127.0.0.1:{port}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        C.wait_http(base)
        for name, path in (("http: /metrics", "/metrics"), ("http: overview", "/")):
            first = fetch_ms(base + path)  # the first fetch reads everything (nothing cached yet)
            times = []
            for _ in range(runs):
                time.sleep(pause)
                times.append(fetch_ms(base + path))
            results[name + " (first fetch)"] = first
            results[name] = statistics.median(times)
    finally:
        C.stop_process(page)
    return {"n": n, "store": "postgresql" if store_url else "sqlite", "ms": results, "rows": rows}


def main() -> None:
    ap = C.arg_parser(__doc__ or "")
    ap.add_argument("--sizes", default="1000,100000", help="delivered messages, comma-separated")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between HTTP fetches (5.5: past the cache)")
    ap.add_argument("--pg-url", default=None, help="put the store on this PostgreSQL server (a fresh schema)")
    args = ap.parse_args()
    sizes = [200] if args.quick else [int(s) for s in args.sizes.split(",")]
    runs = 1 if args.quick else (args.runs or 10)
    out = []
    for n in sizes:
        with C.workdir("history-reads") as work, fresh_schema(args.pg_url) as url:
            out.append(measure(n, work, runs, args.pause, url))
    lines = []
    for r in out:
        rows = ", ".join(f"{t} {k:,}" for t, k in r["rows"].items())
        lines.append(f"{r['n']:,} delivered messages on {r['store']}; rows: {rows}")
        lines += [f"  {name:44s} {value:9.2f} ms" for name, value in r["ms"].items()]
    C.emit(
        {
            "figure": f"History reads of the status page and /metrics (median of {runs})",
            "results": out,
            "machine": C.machine(),
            "lines": lines,
            "notes": ["scan rows are what the code before store schema 6 read for the same answers"],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
