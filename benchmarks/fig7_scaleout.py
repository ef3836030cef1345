"""Figure 7 (scale-out): throughput with 1, 2 and 4 spooler processes on one PostgreSQL store,
beside 1 and 2 spooler processes on the embedded SQLite store, delivering to smtp-sink.

Each run: N messages (1 KiB, one recipient) are submitted first; then K `postroom spooler`
daemons (separate processes, each with its own profile directory pointing at the same store)
deliver them; the figure is N / (time from starting the daemons to the last outcome).
The SMTP transport's `connections` is a limit for all processes together, so each run
allows 4 per process: the connection limit is not what is measured.

    python benchmarks/fig7_scaleout.py --pg-url "$POSTROOM_TEST_PG_URL" [--n 4000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import postroom
from postroom.profile import Profile

BODY = ("x" * 78 + "\n") * 13


def with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-c search_path={schema}"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote), parts.fragment))


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "-m", "512", f"127.0.0.1:{port}", "1024"])
    time.sleep(0.5)
    return sink


def make_profile(directory: Path, store: str, port: int, connections: int) -> Path:
    profile = Profile.create(directory, with_defaults=False)
    profile.settings.update({"store": store, "spooler_concurrency": 16})
    options = {"host": "127.0.0.1", "port": port, "security": "none", "connections": connections}
    profile.add_service("smtp", "sink", options)
    profile.save()
    return directory


def one_run(store: str, processes: int, n: int, port: int, work: Path, per_process: int = 4) -> float:
    profiles = [make_profile(work / f"p{k}", store, port, per_process * processes) for k in range(processes)]
    # Submitting while offline keeps the daemons' first pass for the timed part.
    with postroom.logon(Profile.load(profiles[0])) as s:
        for start in range(0, n, 1000):
            s.submit_many(
                s.create_message(f"bench {i}", BODY).to(f"r{i}@sink.test") for i in range(start, min(n, start + 1000))
            )
        s.status()
        t0 = time.perf_counter()
        daemons = [
            subprocess.Popen(
                [sys.executable, "-m", "postroom", "--profile", str(p), "spooler", "--force", "--workers", "1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for p in profiles
        ]
        try:
            while s.queue():
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
        finally:
            for d in daemons:
                d.send_signal(signal.SIGTERM)
            for d in daemons:
                try:
                    d.wait(20)
                except subprocess.TimeoutExpired:
                    d.kill()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-url", default=os.environ.get("POSTROOM_TEST_PG_URL"))
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--connections-per-process", type=int, default=4)
    parser.add_argument("--only", default=None, help="one configuration, e.g. postgresql-2")
    args = parser.parse_args()
    if not shutil.which("smtp-sink"):
        sys.exit("fig7: smtp-sink (Postfix) is not installed")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    sink = start_sink(port)
    results: dict[str, Any] = {"n": args.n, "runs": args.runs, "figures": {}}
    configs: list[tuple[str, int]] = [("sqlite", 1), ("sqlite", 2)]
    if args.pg_url:
        configs += [("postgresql", 1), ("postgresql", 2), ("postgresql", 4)]
    if args.only:
        names = [f"{b}-{p}" for b, p in configs]
        if args.only not in names:
            parser.error(f"--only {args.only}: not one of {', '.join(names)} (postgresql-* needs --pg-url)")
        configs = [configs[names.index(args.only)]]
    try:
        for backend, processes in configs:
            rates = []
            for _ in range(args.runs):
                work = Path(tempfile.mkdtemp(prefix="fig7-"))
                try:
                    if backend == "sqlite":
                        store = str(work / "store.sqlite")
                        rates.append(one_run(store, processes, args.n, port, work, args.connections_per_process))
                    else:
                        import psycopg

                        schema = f"fig7_{uuid.uuid4().hex[:10]}"
                        with psycopg.connect(args.pg_url, autocommit=True) as conn:
                            conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
                        try:
                            url = with_schema(args.pg_url, schema)
                            rates.append(one_run(url, processes, args.n, port, work, args.connections_per_process))
                        finally:
                            with psycopg.connect(args.pg_url, autocommit=True) as conn:
                                conn.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            med = statistics.median(rates)
            results["figures"][f"{backend}-{processes}"] = {"runs": rates, "median": med}
            print(
                f"{backend:<10} {processes} spooler process(es): median {med:7.0f} msg/s  "
                f"runs {', '.join(f'{r:.0f}' for r in rates)}",
                flush=True,
            )
    finally:
        sink.terminate()
        sink.wait()
    base = results["figures"].get("postgresql-1", {}).get("median")
    for k in (2, 4):
        other = results["figures"].get(f"postgresql-{k}", {}).get("median")
        if base and other:
            print(f"postgresql {k} processes / 1 process: {other / base:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
