"""Claim cost against queue depth: messages waiting for a retry ahead of the due ones.

    python benchmarks/claim_depth.py [--pg-url URL] [--depths 0,10000,100000] [--claims 200]

For each store and each depth W, a fresh store gets W queued messages waiting for a retry (an hour
from now), submitted *before* 300 due messages, so an oldest-first claim must get past them. It
then times one-message claims (`claim`, the spooler's `due_messages` read of up to SCAN candidates,
and `next_due`, which the idle daemon runs every turn) and reports medians and the ratio to the
same store with W = 0, measured in the same run. The rows are inserted with plain SQL (the claim
reads only the queue columns), so building 100k costs seconds, not a submit of 100k messages. On
PostgreSQL the table is ANALYZEd after the load, as autovacuum would do; SQLite has no statistics.
The query plans are printed too (EXPLAIN QUERY PLAN / EXPLAIN).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common as C
from common import arg_parser, emit, log, machine, workdir
from tests.store.pgutil import temp_schema

from postroom.spooler.scheduler import SCAN
from postroom.store import open_store

DUE = 300
WAIT_SECONDS = 3600.0


def rows(waiting: int, now: float) -> list[tuple[Any, ...]]:
    """(queue_state, submit_time, next_attempt, wait_kind): the waiting first (older), then the due."""
    out: list[tuple[Any, ...]] = [
        ("queued", now - 86400 + i * 0.01, now + WAIT_SECONDS, "retry") for i in range(waiting)
    ]
    out += [("queued", now - 3600 + i * 0.01, None, None) for i in range(DUE)]
    return out


def load_sqlite(path: Path, waiting: int, now: float) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.executemany(
        "INSERT INTO messages (queue_state, submit_time, next_attempt, wait_kind) VALUES (?, ?, ?, ?)",
        rows(waiting, now),
    )
    db.commit()
    db.close()


def load_postgres(url: str, waiting: int, now: float) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        with (
            conn.cursor() as cur,
            cur.copy("COPY messages (queue_state, submit_time, next_attempt, wait_kind) FROM STDIN") as cp,
        ):
            for row in rows(waiting, now):
                cp.write_row(row)
        conn.execute("ANALYZE messages")


def timed(fn: Callable[[], object], n: int) -> float:
    """Median seconds of n calls."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def plans(backend: str, target: str, now: float) -> list[str]:
    """The query plan of the claim's SELECT: the store's own (queue_sql), or main's before it existed."""
    try:
        from postroom.store.queue_sql import due_params, due_sql

        sql, params = due_sql("", hints=backend == "sqlite"), due_params(now, 1)
    except ImportError:
        sql = (
            "SELECT id FROM messages WHERE queue_state='queued' AND coalesce(next_attempt, 0) <= ? "
            "AND (lease_owner IS NULL OR lease_until < ?) ORDER BY submit_time, id LIMIT ?"
        )
        params = (now, now, 1)
    if backend == "sqlite":
        import sqlite3

        db = sqlite3.connect(target)
        got = [" | ".join(str(r[3]) for r in db.execute("EXPLAIN QUERY PLAN " + sql, params))]
        db.close()
        return got
    import psycopg

    with psycopg.connect(target) as conn:
        rows = conn.execute(("EXPLAIN " + sql.replace("?", "%s")).encode(), params)
        return [" | ".join(r[0].strip() for r in rows)]


def measure(backend: str, target: str, waiting: int, claims: int) -> dict[str, Any]:
    now = time.time()
    store = open_store(target)  # creates the schema
    try:
        (load_sqlite(Path(target), waiting, now) if backend == "sqlite" else load_postgres(target, waiting, now))
        at = datetime.fromtimestamp(now, UTC)
        claimed: list[int] = []
        claim = timed(lambda: claimed.extend(store.claim("bench", at, 600, 1)), claims)
        due = timed(lambda: store.due_messages(at, SCAN, claimed), max(5, claims // 20))
        next_due = timed(store.next_due, claims)
        assert len(claimed) == claims, f"{len(claimed)} claimed of {claims}"
        return {"claim_s": claim, "due_messages_s": due, "next_due_s": next_due, "plan": plans(backend, target, now)}
    finally:
        store.close()


def idle_cpu(waiting: int, window: float, work: Path) -> float:
    """CPU seconds per minute of an idle spooler daemon (SQLite profile) with `waiting` messages
    waiting for a retry an hour away: what it spends looking at the queue on each turn."""
    import sqlite3

    import postroom

    prof = C.make_profile(work / "profile", smtp_port=C.free_port())
    with postroom.logon(prof) as session:
        store_path = session.profile.store_path
    load_sqlite(store_path, waiting, time.time())
    db = sqlite3.connect(store_path)
    db.execute("DELETE FROM messages WHERE next_attempt IS NULL")  # idle: nothing due
    db.commit()
    db.close()
    daemon = C.spooler_daemon(prof, work / "daemon.log")
    try:
        C.wait_daemon_ready(prof, daemon)
        time.sleep(2.0)  # start-up done
        cpu0, w0 = C.cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(window)
        cpu1, w1 = C.cpu_seconds(daemon.pid), time.monotonic()
    finally:
        C.stop_process(daemon, 30)
    return (cpu1 - cpu0) * 60 / (w1 - w0)


def main() -> None:
    ap = arg_parser(__doc__.splitlines()[0])
    ap.add_argument("--pg-url", default=os.environ.get("POSTROOM_TEST_PG_URL"))
    ap.add_argument("--depths", default="0,10000,100000")
    ap.add_argument("--claims", type=int, default=200)
    ap.add_argument("--idle-window", type=float, default=60.0, help="seconds of idle daemon CPU measured (0: none)")
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    claims = min(args.claims, DUE)
    window = args.idle_window
    if args.quick:
        depths, claims, window = [0, 1000], 20, 2.0
    backends = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    result: dict[str, Any] = {"figure": "claim cost against retry-waiting depth", "machine": machine(), "data": {}}
    lines = []
    for backend in backends:
        base: dict[str, float] = {}
        for waiting in depths:
            log(f"{backend}: {waiting} waiting")
            with workdir("claim") as work:
                if backend == "sqlite":
                    got = measure(backend, str(work / "store.sqlite"), waiting, claims)
                else:
                    got = measure_pg(args.pg_url, waiting, claims)
            result["data"][f"{backend}-{waiting}"] = got
            if waiting == depths[0]:
                base = got
            lines.append(
                f"{backend:<10} {waiting:>7} waiting: claim {got['claim_s'] * 1e6:9.0f} µs "
                f"({got['claim_s'] / base['claim_s']:6.1f}x)  due_messages {got['due_messages_s'] * 1e6:9.0f} µs "
                f"({got['due_messages_s'] / base['due_messages_s']:6.1f}x)  next_due {got['next_due_s'] * 1e6:9.0f} µs "
                f"({got['next_due_s'] / base['next_due_s']:6.1f}x)"
            )
            lines.append(f"           plan: {got['plan'][0]}")
    if window > 0:
        idle: dict[int, float] = {}
        for waiting in (depths[0], depths[-1]):
            log(f"idle daemon: {waiting} waiting, {window:g} s")
            with workdir("claim-idle") as work:
                idle[waiting] = idle_cpu(waiting, window, work)
        result["data"]["idle_cpu_per_minute"] = idle
        ref = idle[depths[0]]
        for waiting, cpu in idle.items():
            lines.append(
                f"idle daemon (sqlite), {waiting:>7} waiting: {cpu:.3f} CPU s/min"
                + (f" ({cpu / ref:.1f}x)" if ref > 0 else "")
            )
    result["lines"] = lines
    result["notes"] = [f"ratios against {depths[0]} waiting on the same store, same run; medians of {claims} claims"]
    emit(result, args.json)


def measure_pg(pg_url: str, waiting: int, claims: int) -> dict[str, Any]:
    with temp_schema("claimdepth", pg_url) as url:
        return measure("postgresql", url, waiting, claims)


if __name__ == "__main__":
    main()
