"""Issue 17: a spooler renews every lease it holds with one statement per interval, however many
messages it has in flight, and a lease of a few seconds outlives a delivery that takes longer, on
SQLite and on PostgreSQL.

Sixteen messages sit in a transport that takes longer than the lease. Meanwhile the store's
statement counter runs, and another store object (another spooler, as far as the store knows) tries
to claim them once the lease would have run out without renewals."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.store.pgutil import require_server, temp_schema

import postroom
from postroom.store import open_store

from support import sleepy
from support.profiles import make_profile

pytestmark = [pytest.mark.integration]

IN_FLIGHT = 16
LEASE_SECONDS = 3.0
DELIVERY_SECONDS = 6.0  # twice the lease
#: One renewal of every lease: BEGIN, the UPDATE, COMMIT (and on PostgreSQL the pool's connection check).
STATEMENTS_PER_RENEWAL = 4


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {}
        return
    require_server()
    with temp_schema("leases") as url:
        yield {"store": url}


def test_one_statement_per_interval_renews_every_lease_and_a_short_lease_outlives_a_longer_delivery(
    tmp_path: Path, store_settings: dict[str, Any]
) -> None:
    sleepy.reset()
    profile = make_profile(tmp_path / "p", ("sleepy", {"seconds": DELIVERY_SECONDS, "gate": IN_FLIGHT}), kind="sleepy")
    profile.settings.update({"spooler_concurrency": IN_FLIGHT, "lease_seconds": LEASE_SECONDS, **store_settings})
    profile.save()
    target = profile.store_url or str(profile.store_path)
    seen: dict[str, Any] = {}

    with postroom.logon(profile) as s:
        ids = s.submit_many(s.create_message(f"m{i}", "body").to(f"r{i}@x.test") for i in range(IN_FLIGHT))
        counts = s.engine.store.count_statements()

        def watch() -> None:
            """While every message is in the transport: count, then try to take them over."""
            if not sleepy.ALL_STARTED.wait(60):
                return
            before, started = counts.snapshot(), time.monotonic()
            time.sleep(LEASE_SECONDS + 1.0)  # past the claims' first lease
            after, seen["seconds"] = counts.snapshot(), time.monotonic() - started
            seen["statements"], seen["commits"] = after[0] - before[0], after[1] - before[1]
            other = open_store(target)
            try:
                seen["stolen"] = other.claim("another spooler", datetime.now(UTC), LEASE_SECONDS, IN_FLIGHT)
            finally:
                other.close()

        watcher = threading.Thread(target=watch)
        watcher.start()
        summary = s.deliver()
        watcher.join()
        assert s.queue() == []

    assert "stolen" in seen, "the messages never were all in the transport at once"
    assert seen["stolen"] == []  # every lease was renewed in time
    assert summary.delivered == IN_FLIGHT and len(ids) == IN_FLIGHT
    assert set(sleepy.STARTED.values()) == {1}  # each message sent once
    # Nothing but the renewals ran meanwhile: a statement or so per interval, not one per message.
    renewals = seen["commits"]
    assert 1 <= renewals <= seen["seconds"] / (LEASE_SECONDS / 3) + 1, seen  # one per interval at most
    # A renewal under way at either snapshot counts some of its statements and not its commit.
    assert seen["statements"] <= (renewals + 2) * STATEMENTS_PER_RENEWAL, seen
