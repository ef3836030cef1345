"""Issue 17: after a SIGKILL, only the messages a transport was called for are "outcome unknown".

A real spooler process delivers over SMTP to a sink that takes about half a second per message on
two connections, so while the first batch is in the transport the next one is claimed ahead,
waiting for workers. It is killed with SIGKILL, and the store is read as it left it: which
messages it held, and which of those it had marked started. A new spooler then takes the leases
over when they run out. A started message is "outcome unknown" (resent, or held for an operator
under crash_policy "hold"); a message only claimed ahead is simply due again: no outcome-unknown
event, never held. Nothing is lost, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import wait_until
from tests.harness.spoolers import (
    free_port,
    outcome_was_unknown,
    resolve_held,
    sink_lines,
    smtp_profile,
    start_sink,
    start_spooler,
    stop,
    tally,
)
from tests.store.pgutil import sqlite_or_postgres

pytestmark = [pytest.mark.integration]

MESSAGES = 40
CONCURRENCY = 8
LEASE_SECONDS = 2.0
#: How long the spoolers get for each step (the sink takes about half a second a message).
STEP_SECONDS = 120.0
HELD_SQL = "SELECT id, started FROM messages WHERE lease_owner IS NOT NULL AND queue_state='queued'"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the store lives: an SQLite file, or a PostgreSQL URL (a schema of its own)."""
    with sqlite_or_postgres(request.param, tmp_path / "store.sqlite", "ahead") as where:
        yield where


def held_at_kill(store: str) -> tuple[set[int], set[int]]:
    """(started, only claimed) among the messages a dead spooler's leases still hold, read raw."""
    if store.startswith("postgresql"):
        import psycopg

        with psycopg.connect(store) as conn:
            rows = conn.execute(HELD_SQL).fetchall()
    else:
        db = sqlite3.connect(store)
        try:
            rows = db.execute(HELD_SQL).fetchall()
        finally:
            db.close()
    return {int(m) for m, s in rows if s}, {int(m) for m, s in rows if not s}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("crash_policy", ["resend", "hold"])
def test_a_killed_spoolers_claimed_ahead_messages_are_due_again_and_only_started_ones_are_outcome_unknown(
    tmp_path: Path, store: str, crash_policy: str
) -> None:
    import postroom
    from postroom.profile import Profile
    from postroom.store import QueueState

    port = free_port()
    sink_log = tmp_path / "sink.log"
    sink_log.touch()
    settings = {
        "store": store,
        "lease_seconds": LEASE_SECONDS,
        "crash_policy": crash_policy,
        "spooler_concurrency": CONCURRENCY,
    }
    profile = smtp_profile(tmp_path / "profile", port, settings, {"connections": 2})
    sink = start_sink(port, sink_log, ["--data-delay", "0.4:0.6"])
    spoolers = []
    resolved = 0
    try:
        with postroom.logon(Profile.load(profile)) as session:
            drafts = [
                session.create_message(f"a {i}", f"message {i}\n").to(f"ok-{i}@sink.test") for i in range(MESSAGES)
            ]
            ids = list(session.submit_many(drafts))
            first = start_spooler(profile, tmp_path / "first.log")
            spoolers.append(first)
            assert wait_until(lambda: len(sink_lines(sink_log)) >= 2, STEP_SECONDS), (
                tmp_path / "first.log"
            ).read_text()
            first.send_signal(signal.SIGKILL)
            first.wait()
            started, ahead = held_at_kill(store)
            assert started and ahead, (started, ahead)  # the kill caught a batch in the transport, one claimed ahead

            spoolers.append(start_spooler(profile, tmp_path / "second.log"))

            def settled() -> bool:
                return all(q.state is QueueState.HELD for q in session.queue())

            assert wait_until(settled, STEP_SECONDS), (tmp_path / "second.log").read_text()
            held = {q.id for q in session.queue()}
            if crash_policy == "hold":
                assert held == started  # held for an operator: exactly those a transport was called for
                resolved = resolve_held(session, sink_log)
                assert wait_until(lambda: not session.queue(), STEP_SECONDS)
            else:
                assert held == set()
            unknown = {m for m in ids if outcome_was_unknown(session, m)}
            outcome = tally(session, ids, sink_log)
    finally:
        stop(spoolers, sink)
    assert unknown == started  # not one claimed-ahead message among them
    assert not unknown & ahead
    assert outcome.lost == 0 and not outcome.problems, outcome.problems[:5]
    assert outcome.once + outcome.duplicates == MESSAGES
    if crash_policy == "hold":
        assert resolved == len(started) and outcome.duplicates == 0
    else:
        assert outcome.unknown_duplicates <= 2  # at most one message on each of the two connections
