"""The claim with messages waiting for a retry ahead of the due ones: the same order and lease rules
in both stores, read from the queue indexes (queue_sql.py) rather than a walk of the waiting ones."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.store.test_store_queue import NOW, claim_in_threads, delivered, message, submitted

from postroom.mapi import tags as T
from postroom.store import FolderRole, MessageStore, QueueState, WaitKind, open_store, queue_sql
from postroom.store.queue_sql import QUEUE_INDEX_NAMES, due_params, due_sql, next_due_sql
from postroom.store.sqlbase import OFFLINE_EPOCH

LATER = NOW + timedelta(minutes=1)


def waiting(store: MessageStore, seconds: int, until: timedelta, kind: WaitKind = WaitKind.RETRY) -> int:
    """A message submitted at NOW + seconds that a transport deferred until NOW + until."""
    mid = submitted(store, f"w{seconds}@x.test", at=NOW + timedelta(seconds=seconds))
    assert store.claim_message("spooler", mid, NOW + timedelta(seconds=seconds), 60)
    store.release(mid, "spooler", NOW, NOW + until, "451 try later", kind)
    return mid


@contextmanager
def raw(backend: str, target: str) -> Iterator[Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]]:
    """The store's database without the store: run SQL written with `?` placeholders."""
    if backend == "sqlite":
        db = sqlite3.connect(target, isolation_level=None)
        try:
            yield lambda sql, params: db.execute(sql, params).fetchall()
        finally:
            db.close()
        return
    import psycopg

    with psycopg.connect(target, autocommit=True) as conn:

        def run(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
            cur = conn.execute(sql.replace("?", "%s").encode(), params)
            return cur.fetchall() if cur.description else []

        yield run


#: On SQLite, the retries due now are sorted while few, else found by a walk in submission order
#: (queue_sql.RETRY_SORT_MAX); a large negative bound makes every claim walk.
SORT_OR_WALK = pytest.mark.parametrize("sort_max", [queue_sql.RETRY_SORT_MAX, -(10**6)], ids=["sorted", "walked"])


@SORT_OR_WALK
def test_the_oldest_due_messages_are_claimed_first_past_the_ones_waiting_ahead_of_them(
    store: MessageStore, sort_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_sql, "RETRY_SORT_MAX", sort_max)
    ahead = waiting(store, 0, timedelta(hours=1))
    # Created out of submission order, so that id order is not the claim order by chance.
    fresh_too = submitted(store, "g@x.test", at=NOW + timedelta(seconds=4))
    retry_due_too = waiting(store, 3, timedelta(seconds=20))
    fresh = submitted(store, "f@x.test", at=NOW + timedelta(seconds=2))
    retry_due = waiting(store, 1, timedelta(seconds=10))
    offline = waiting(store, 5, timedelta(0), WaitKind.SEND_RECEIVE)
    held = submitted(store, "h@x.test", at=NOW + timedelta(seconds=6))
    store.hold(held, NOW, "operator says wait")
    msg = message("s@x.test")
    msg.props[T.PR_DEFERRED_SEND_TIME] = NOW + timedelta(hours=2)
    scheduled = store.create_and_submit(store.folder(FolderRole.OUTBOX).id, msg, NOW)

    assert store.due_messages(LATER, 10) == [retry_due, fresh, retry_due_too, fresh_too]
    assert store.due_messages(LATER, 10, exclude=[fresh]) == [retry_due, retry_due_too, fresh_too]
    assert store.due_messages(LATER, 2) == [retry_due, fresh]
    assert store.claim("me", LATER, 60, 1) == [retry_due]
    assert store.claim("me", LATER, 60, 1) == [fresh]
    assert store.claim("me", LATER, 60, 10) == [retry_due_too, fresh_too]
    assert store.claim("me", LATER, 60, 10) == []
    untouched = {e.id: e for e in store.queue() if e.id in (ahead, offline, held, scheduled)}
    assert [e.lease_owner for e in untouched.values()] == [None] * 4
    assert untouched[held].state is QueueState.HELD
    assert untouched[offline].waiting_for is WaitKind.SEND_RECEIVE
    assert untouched[scheduled].waiting_for is WaitKind.SCHEDULED
    # An hour later the first is due, and the leases taken above ran out: all in submission order.
    assert store.claim("me", NOW + timedelta(hours=1), 60, 10) == [ahead, retry_due, fresh, retry_due_too, fresh_too]


@SORT_OR_WALK
def test_a_lease_that_ran_out_is_claimable_past_waiting_messages_and_a_live_one_is_not(
    store: MessageStore, sort_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_sql, "RETRY_SORT_MAX", sort_max)
    for n in range(5):
        waiting(store, n, timedelta(hours=1))
    retry = waiting(store, 10, timedelta(seconds=30))
    fresh = submitted(store, "f@x.test", at=NOW + timedelta(seconds=11))
    assert store.claim("a", LATER, 30, 2) == [retry, fresh]
    assert store.mark_started("a", [retry, fresh]) == {retry, fresh}  # a transport has them
    assert store.claim("b", LATER + timedelta(seconds=10), 30, 5) == []
    assert store.next_due() == LATER + timedelta(seconds=30)  # the leases end before any retry is due

    store.finish(fresh, "a", LATER, [delivered(0)])
    assert store.claim("b", LATER + timedelta(seconds=31), 30, 5) == [retry]  # a's lease ran out
    entry = store.queue_entry(retry)
    assert entry is not None and entry.lease_owner == "b" and entry.previous_owner == "a"


def test_the_next_due_time_is_the_earliest_retry_past_offline_and_leased_messages(store: MessageStore) -> None:
    for n in range(3):
        waiting(store, n, timedelta(seconds=0), WaitKind.SEND_RECEIVE)
    assert store.next_due() is None  # only Send/Receive wakes these
    later = waiting(store, 3, timedelta(hours=2))
    waiting(store, 4, timedelta(hours=1))
    leased = waiting(store, 5, timedelta(minutes=30))
    assert store.next_due() == NOW + timedelta(minutes=30)
    assert store.claim_message("a", leased, NOW + timedelta(minutes=30), 3 * 3600)
    assert store.next_due() == NOW + timedelta(hours=1)  # the leased one's lease ends later still
    store.retry_now(later, NOW)
    assert store.next_due() is not None and store.next_due() <= NOW  # due at once


def test_concurrent_claimers_share_no_message_due_for_a_retry_behind_waiting_ones(
    store: MessageStore, open_another: Callable[[], MessageStore]
) -> None:
    for n in range(30):
        waiting(store, n, timedelta(hours=1))
    ids = [waiting(store, 100 + n, timedelta(seconds=n % 7)) for n in range(60)]
    claimed = [mid for got in claim_in_threads([open_another() for _ in range(4)], LATER).values() for mid in got]
    assert sorted(claimed) == ids  # each exactly once, and none of the waiting ones
    assert len(store.queue()) == 30


# --- the query plans ----------------------------------------------------------------------------------
def fill_waiting(backend: str, target: str, n: int) -> None:
    """n messages waiting for a retry and n due ones, written as rows (planners need a table whose
    size makes an index worth it; PostgreSQL also gets its statistics)."""
    rows = [("queued", i, 2e9, "retry") for i in range(n)] + [("queued", n + i, None, None) for i in range(n)]
    with raw(backend, target) as run:
        run("BEGIN", ())  # one commit, not one per row
        for row in rows:
            run("INSERT INTO messages (queue_state, submit_time, next_attempt, wait_kind) VALUES (?, ?, ?, ?)", row)
        run("COMMIT", ())
        if backend != "sqlite":
            run("ANALYZE messages", ())


def plan(backend: str, target: str, sql: str, params: Sequence[Any]) -> str:
    with raw(backend, target) as run:
        if backend == "sqlite":
            return "\n".join(str(r[3]) for r in run("EXPLAIN QUERY PLAN " + sql, params))
        return "\n".join(str(r[0]) for r in run("EXPLAIN " + sql, params))


def assert_reads_only_queue_indexes(backend: str, shown: str, *indexes: str) -> None:
    for name in indexes:
        assert name in shown, f"{name} is not used:\n{shown}"
    if backend == "sqlite":
        for line in shown.splitlines():
            if re.search(r"\bmessages\b", line):
                assert re.search(r"USING (COVERING )?INDEX queue_", line), (
                    f"reads messages without a queue index:\n{shown}"
                )
    else:
        assert "Seq Scan on messages" not in shown, shown
        assert "outgoing_queue" not in shown, shown


def test_the_claim_and_the_next_due_time_read_the_queue_indexes_and_never_scan_messages(
    backend: str, store_target: str
) -> None:
    open_store(store_target).close()
    fill_waiting(backend, store_target, 2000)
    sqlite = backend == "sqlite"
    lock = "" if sqlite else " FOR UPDATE SKIP LOCKED"
    claim = plan(backend, store_target, due_sql(lock, hints=sqlite), due_params(1e9, 1))
    assert_reads_only_queue_indexes(backend, claim, "queue_due_now", "queue_due_retry")
    if not sqlite:
        assert claim.count("LockRows") == 2, claim  # each part skips what other claimers locked as it reads
    due = plan(backend, store_target, due_sql("", " AND id NOT IN (?)", hints=sqlite), due_params(1e9, 20000, [1]))
    assert_reads_only_queue_indexes(backend, due, "queue_due_now", "queue_due_retry")
    if sqlite:  # many retries due at once: the retry part walks outgoing_queue from the oldest instead
        walk = plan(backend, store_target, due_sql("", hints=True, retries="outgoing_queue"), due_params(1e9, 1))
        assert "SEARCH messages USING INDEX outgoing_queue (queue_state=?)" in walk, walk
        assert not re.search(r"SCAN messages(?! USING)", walk), walk
    nxt = plan(backend, store_target, next_due_sql(hints=sqlite), (OFFLINE_EPOCH,))
    assert_reads_only_queue_indexes(backend, nxt, "queue_due_now", "queue_due_retry", "queue_leases")


def test_an_sqlite_store_made_at_version_4_before_the_queue_indexes_gets_them_when_opened(tmp_path: Path) -> None:
    store_target = str(tmp_path / "store.sqlite")
    open_store(store_target).close()
    db = sqlite3.connect(store_target, isolation_level=None)
    for name in QUEUE_INDEX_NAMES:
        db.execute(f"DROP INDEX {name}")
    db.close()
    open_store(store_target).close()
    db = sqlite3.connect(store_target)
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    db.close()
    assert set(QUEUE_INDEX_NAMES) <= names
