"""Figure 7 (scale-out): throughput with 1, 2 and 4 spooler processes on one PostgreSQL store (fsync
on), beside 1 and 2 on the embedded SQLite store, delivering to smtp-sink, with the CPU each spooler
process and the database server used.

Each run: N messages (1 KiB, one recipient) are submitted first; then `postroom spooler --workers K`
(K spooler processes under one parent, the way an operator runs them) delivers them; the figure is
N / (time from starting the daemon to an empty queue). The SMTP transport's `connections` is a
limit for all processes together, so each run allows 4 per process: the connection limit is not
what is measured. The CPU of each worker (utime + stime from /proc, read just before the stop) and
of the PostgreSQL server's whole process tree (postmaster, the backends it reaped and the live
ones) over the run are reported per delivered message.

PostgreSQL runs in a private cluster started for the figure (.ci/start-postgres in a state
directory of its own, as soak.py does) and restarted with `fsync=on`, so commits cost what they
cost in production: the test suite's cluster runs with fsync off. `--pg-url` measures an existing
server instead, and the figure reports the fsync setting it found.

    python benchmarks/fig7_scaleout.py [-n 4000] [--runs 3] [--pg-url URL] [--quick] [--json FILE]
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common as C
from tests.store.pgutil import temp_schema

BODY = ("x" * 78 + "\n") * 13
QUEUED_SQL = "SELECT count(*) FROM messages WHERE queue_state IS NOT NULL"


@contextlib.contextmanager
def fsync_cluster() -> Iterator[tuple[str, int]]:
    """A private PostgreSQL cluster running with fsync on: its URL and its postmaster's pid."""
    from soak import PrivatePostgres  # a function-local import: soak.py is big and only this needs it

    pg = PrivatePostgres()
    try:
        data = pg.state / "data"
        argv = shlex.split((data / "postmaster.opts").read_text())[1:]
        options: list[str] = []
        skip = False
        for i, arg in enumerate(argv):
            if skip:
                skip = False
                continue
            if arg == "-D":
                skip = True
                continue
            options.append("fsync=on" if arg == "fsync=off" and i and argv[i - 1] == "-c" else arg)
        pg.ctl("stop", "-m", "fast")
        pg.ctl("start", "-o", shlex.join(options))
        yield pg.url, postmaster_pid(data)
    finally:
        pg.stop()


def postmaster_pid(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split()[0])


def server_setting(url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(f"SHOW {name}".encode()).fetchone()
    return str(row[0]) if row else "?"


def server_pid(url: str) -> int | None:
    """The postmaster's pid of a server on this machine (its data directory is readable), else None."""
    with contextlib.suppress(Exception):
        return postmaster_pid(Path(server_setting(url, "data_directory")))
    return None


@contextlib.contextmanager
def fresh_store(backend: str, pg_url: str | None, work: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield str(work / "store.sqlite")
        return
    assert pg_url is not None
    with temp_schema("fig7", pg_url) as url:
        yield url


def make_profile(directory: Path, store: str, port: int, connections: int) -> Path:
    from postroom.profile import Profile

    profile = Profile.create(directory, with_defaults=False)
    profile.settings.update({"store": store, "spooler_concurrency": 16})
    options = {"host": "127.0.0.1", "port": port, "security": "none", "connections": connections}
    profile.add_service("smtp", "sink", options)
    profile.save()
    return directory


def one_run(store: str, processes: int, n: int, port: int, work: Path, per_process: int, server: int | None) -> dict:
    import postroom
    from postroom.profile import Profile

    profile = make_profile(work / "p", store, port, per_process * processes)
    with postroom.logon(Profile.load(profile)) as s:
        for start in range(0, n, 1000):
            s.submit_many(
                s.create_message(f"bench {i}", BODY).to(f"r{i}@sink.test") for i in range(start, min(n, start + 1000))
            )
        server0 = C.tree_cpu_seconds(server) if server else None
        t0 = time.perf_counter()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "postroom", "--profile", str(profile), "spooler", "--workers", str(processes)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Counted with one index-only count, not listed: s.queue() reads every queued message
            # with its properties, and polled every 50 ms it was 78 % of the PostgreSQL server's
            # time in a run (88 ms a call); queue_counts() joins the recipients (1/3 of it).
            while s.engine.store._q(QUEUED_SQL)[0][0]:
                if daemon.poll() is not None:
                    raise RuntimeError(f"the spooler exited with status {daemon.returncode}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            pids = [daemon.pid] if processes == 1 else C.children(daemon.pid)
            per_worker = [C.tree_cpu_seconds(p) for p in pids]
            server_cpu = C.tree_cpu_seconds(server) - server0 if server and server0 is not None else None
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
    return {
        "rate": n / elapsed,
        "seconds": elapsed,
        "worker_cpu_ms": [c * 1000 / n for c in per_worker],
        "server_cpu_ms": None if server_cpu is None else server_cpu * 1000 / n,
    }


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", "--n", type=int, default=None, help="messages per run (default 4000; --quick 200)")
    ap.add_argument("--pg-url", default=None, help="an existing server instead of a private fsync=on cluster")
    ap.add_argument("--no-postgresql", action="store_true", help="SQLite only")
    ap.add_argument("--connections-per-process", type=int, default=4)
    ap.add_argument("--only", default=None, help="one configuration, e.g. postgresql-2")
    args = ap.parse_args()
    n = args.n or (200 if args.quick else 4000)
    runs = args.runs or (1 if args.quick else 3)
    result: dict[str, Any] = {"figure": "Figure 7: spooler processes on one store", "key": "fig7", "n": n}
    result.update(runs=runs, notes=[], figures={})
    configs: list[tuple[str, int]] = [("sqlite", 1), ("sqlite", 2)]
    use_pg = not args.no_postgresql and (args.pg_url or list(Path("/usr/lib/postgresql").glob("*/bin/initdb")))
    if use_pg:
        configs += [("postgresql", 1), ("postgresql", 2)] + ([] if args.quick else [("postgresql", 4)])
    else:
        result["notes"].append("PostgreSQL not measured: no server binaries (Debian's postgresql) and no --pg-url")
    if args.only:
        names = [f"{b}-{p}" for b, p in configs]
        if args.only not in names:
            ap.error(f"--only {args.only}: not one of {', '.join(names)}")
        configs = [configs[names.index(args.only)]]
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(C.Sink.start())
        pg_url, server = None, None
        if any(b == "postgresql" for b, _ in configs):
            if args.pg_url:
                pg_url, server = args.pg_url, server_pid(args.pg_url)
            else:
                C.log("fig7: starting a private PostgreSQL cluster with fsync on")
                pg_url, server = stack.enter_context(fsync_cluster())
            result["postgresql_fsync"] = server_setting(pg_url, "fsync")
            result["postgresql_synchronous_commit"] = server_setting(pg_url, "synchronous_commit")
        samples: dict[str, list[dict[str, Any]]] = {f"{b}-{p}": [] for b, p in configs}
        for r in range(runs):  # round-robin over the configurations, so load drift hits them all
            for backend, processes in configs:
                C.log(f"fig7 run {r + 1}/{runs}: {backend}, {processes} process(es), N={n}")
                with C.workdir("fig7") as work, fresh_store(backend, pg_url, work) as store:
                    samples[f"{backend}-{processes}"].append(
                        one_run(
                            store,
                            processes,
                            n,
                            sink.port,
                            work,
                            args.connections_per_process,
                            server if backend == "postgresql" else None,
                        )
                    )
    lines = [
        f"N = {n} messages × 1 KiB to {sink.kind}; `spooler --workers K`; median of {runs} run(s)"
        + (
            f"; PostgreSQL fsync={result['postgresql_fsync']}, synchronous_commit="
            f"{result['postgresql_synchronous_commit']}"
            if "postgresql_fsync" in result
            else ""
        )
    ]
    for name, xs in samples.items():
        rate = C.median([x["rate"] for x in xs])
        workers_cpu = [
            C.median([x["worker_cpu_ms"][i] for x in xs]) for i in range(min(len(x["worker_cpu_ms"]) for x in xs))
        ]
        server_cpu = [x["server_cpu_ms"] for x in xs if x["server_cpu_ms"] is not None]
        cpu = {"spoolers": sum(workers_cpu), "server": C.median(server_cpu) if server_cpu else None}
        result["figures"][name] = {
            "runs": [x["rate"] for x in xs],
            "median": rate,
            "worker_cpu_ms": workers_cpu,
            "cpu_ms_per_message": cpu,
        }
        lines.append(
            f"{name:<13} {C.fmt_rate(rate):>7} msg/s   CPU per message: "
            + " + ".join(f"{c:.2f}" for c in workers_cpu)
            + " ms (each spooler process)"
            + (f", server {cpu['server']:.2f} ms" if cpu["server"] is not None else "")
            + "   (runs: "
            + ", ".join(f"{x['rate']:.0f}" for x in xs)
            + ")"
        )
    figs = result["figures"]
    ratios: dict[str, float | None] = {}
    if "postgresql-1" in figs and "sqlite-1" in figs:
        ratios["PostgreSQL-1/SQLite-1"] = C.ratio(figs["postgresql-1"]["median"], figs["sqlite-1"]["median"])
    for k in (2, 4):
        if f"postgresql-{k}" in figs and "postgresql-1" in figs:
            ratios[f"PostgreSQL-{k}/PostgreSQL-1"] = C.ratio(
                figs[f"postgresql-{k}"]["median"], figs["postgresql-1"]["median"]
            )
    result["ratios"] = ratios
    pg1 = ratios.get("PostgreSQL-1/SQLite-1")
    result["targets"] = {"PostgreSQL-1 (fsync on) >= 0.9x SQLite-1": None if pg1 is None else pg1 >= 0.9}
    result["lines"] = lines
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
