"""Issue: a transport's connection limit holds across spooler processes, on both stores, and
the processes share it fairly.

Three real spooler processes share one store (an SQLite file, or a PostgreSQL database) and
one SMTP transport with `connections = 2`. Each process works on several messages at once, so
on its own each would open both connections: together they would open six. The sink counts
the connections open at once; it must never see more than two, and every message must
arrive exactly once (nobody is killed here).

Two busy processes with `connections = 4` must each get about half of them: neither keeps all
four while the other's messages wait for a slot.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.harness.spoolers import (
    delivered_by,
    free_port,
    message_id,
    sink_counts,
    smtp_profile,
    start_sink,
    start_spooler,
    stop,
)
from tests.store.pgutil import sqlite_or_postgres

from postroom.transports.smtp_pool import SLOT_WAIT_SECONDS

pytestmark = pytest.mark.integration

MESSAGES = 300
SPOOLERS = 3
CONNECTIONS = 2


@pytest.fixture(params=["sqlite", "postgres"])
def store_setting(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with sqlite_or_postgres(request.param, tmp_path / "shared.sqlite", "slots") as where:
        yield where


@dataclass
class Run:
    peak: int  # connections open at once, at the most
    opened: int
    shares: list[int]  # recipients each spooler reported delivered
    slot_waits: int  # messages that waited for a connection slot until SLOT_WAIT_SECONDS ran out


def run_spoolers(work: Path, store: str, spoolers: int, messages: int, connections: int, concurrency: int) -> Run:
    """Start the spoolers idle, submit the messages, wait until they are all delivered exactly once."""
    import postroom
    from postroom.profile import Profile

    port = free_port()
    sink_log = work / "sink.log"
    sink = start_sink(port, sink_log)
    settings = {"store": store, "lease_seconds": 10.0, "spooler_concurrency": concurrency}
    profiles = [smtp_profile(work / f"node{n}", port, settings, {"connections": connections}) for n in range(spoolers)]
    logs = [work / f"spooler{n}.log" for n in range(spoolers)]
    processes = [start_spooler(p, log) for p, log in zip(profiles, logs, strict=True)]
    try:
        with postroom.logon(Profile.load(profiles[0])) as session:
            time.sleep(2.0)  # the spoolers are up and listening
            assert all(s.poll() is None for s in processes), [log.read_text() for log in logs]
            ids = session.submit_many(
                [session.create_message(f"slot {i}", "body\n").to(f"ok-{i}@sink.test") for i in range(messages)]
            )
            deadline = time.monotonic() + 240
            while session.queue() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not session.queue(), [log.read_text()[-2000:] for log in logs]
            message_ids = [message_id(session, m) for m in ids]
            slot_waits = sum(
                any(e.kind == "wait" and "connection(s)" in e.detail for e in session.events(m)) for m in ids
            )
    finally:
        stop(processes, sink, seconds=30)
    counts = sink_counts(sink_log)
    assert sorted(counts[m] for m in message_ids) == [1] * messages  # each exactly once
    last = (work / "sink.log.connections").read_text().splitlines()[-1]
    open_now, peak, opened = (int(n) for n in last.split())
    assert open_now == 0
    return Run(peak, opened, [delivered_by(log) for log in logs], slot_waits)


def backend(store: str) -> str:
    return "postgres" if store.startswith("postgresql") else "sqlite"


def test_spooler_processes_together_keep_to_the_connection_limit(
    tmp_path: Path, store_setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_spoolers(tmp_path, store_setting, SPOOLERS, MESSAGES, CONNECTIONS, concurrency=4)
    with capsys.disabled():
        print(
            f"\n[{backend(store_setting)}] {MESSAGES} messages, {SPOOLERS} spoolers, connections={CONNECTIONS}: "
            f"at most {run.peak} open at once, {run.opened} opened in all; delivered per spooler {run.shares}"
        )
    assert run.peak <= CONNECTIONS
    assert sum(run.shares) == MESSAGES


def test_two_busy_spooler_processes_share_the_connections_fairly(
    tmp_path: Path, store_setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    messages, connections = 600, 4
    run = run_spoolers(tmp_path, store_setting, 2, messages, connections, concurrency=8)
    with capsys.disabled():
        print(
            f"\n[{backend(store_setting)}] {messages} messages, 2 busy spoolers, connections={connections}: "
            f"at most {run.peak} open at once, {run.opened} opened in all; delivered per spooler {run.shares}; "
            f"messages that waited {SLOT_WAIT_SECONDS:g} s for a slot: {run.slot_waits}"
        )
    assert run.peak <= connections
    assert sum(run.shares) == messages
    assert run.slot_waits == 0  # a busy process gave back what it held beyond its share
    assert min(run.shares) >= messages // 4, run.shares
