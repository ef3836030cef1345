"""Per-transport limits that hold across processes, and store notifications: both stores."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from postroom.mapi import tags as T
from postroom.mapi.message import MessageData, Recipient
from postroom.store import FolderRole, MessageStore
from postroom.store.notify import Notification

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def limits(store: MessageStore) -> Any:
    """The cross-process limit methods (both stores have them; the MessageStore ABC does not list them yet)."""
    return store


def test_record_and_count_sends(store: MessageStore, open_another: Callable[[], MessageStore]) -> None:
    a, b = limits(store), limits(open_another())
    for n in range(3):
        a.record_send("smtp", NOW + timedelta(seconds=n), "p1")
    b.record_send("smtp", NOW + timedelta(seconds=3), "p2")
    b.record_send("fax", NOW, "p2")
    assert a.count_sends("smtp", NOW - timedelta(seconds=1)) == 4
    assert b.count_sends("smtp", NOW + timedelta(seconds=1)) == 2
    assert a.count_sends("fax", NOW - timedelta(minutes=1)) == 1
    assert a.count_sends("none", NOW - timedelta(days=9)) == 0
    # Rows older than two days are pruned when a transport records its next send.
    a.record_send("smtp", NOW + timedelta(days=3))
    assert a.count_sends("smtp", NOW - timedelta(days=1)) == 1


def test_reserve_send_holds_a_limit_across_processes(
    store: MessageStore, open_another: Callable[[], MessageStore]
) -> None:
    stores = [limits(store)] + [limits(open_another()) for _ in range(3)]
    rule = [(5, 60.0), (0, 3600.0)]  # at most 5 per minute; 0 = no hourly limit
    granted: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for _ in range(5):
            if stores[n].reserve_send("smtp", NOW, rule, f"p{n}") == 0.0:
                with lock:
                    granted.append(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(granted) == 5  # 20 tries from 4 "processes", 5 slots
    wait = stores[0].reserve_send("smtp", NOW + timedelta(seconds=10), rule)
    assert wait == 50.0  # the oldest of the last 5 leaves the window at NOW + 60 s
    assert stores[1].reserve_send("smtp", NOW + timedelta(seconds=61), rule) == 0.0
    assert stores[1].count_sends("smtp", NOW - timedelta(seconds=1)) == 6


def test_breaker_state_is_shared(store: MessageStore, open_another: Callable[[], MessageStore]) -> None:
    a, b = limits(store), limits(open_another())
    assert a.breaker_state("smtp") == {}
    a.set_breaker_state("smtp", {"failures": 5, "open_until": 1234.5, "last_error": "refused"}, NOW)
    assert b.breaker_state("smtp") == {"failures": 5, "open_until": 1234.5, "last_error": "refused"}

    def take_probe(state: dict[str, Any]) -> dict[str, Any] | None:
        if state.get("probe"):
            return None  # someone else probes
        return {**state, "probe": "me"}

    assert b.update_breaker_state("smtp", take_probe, NOW)["probe"] == "me"
    assert a.update_breaker_state("smtp", take_probe, NOW)["probe"] == "me"  # unchanged: already taken
    assert a.update_breaker_state("new", lambda s: {"failures": 1}, NOW) == {"failures": 1}
    assert b.breaker_state("new") == {"failures": 1}


def test_breaker_probe_is_taken_once_across_processes(
    store: MessageStore, open_another: Callable[[], MessageStore]
) -> None:
    stores = [limits(store)] + [limits(open_another()) for _ in range(3)]
    winners: list[int] = []

    def worker(n: int) -> None:
        state = stores[n].update_breaker_state(
            "smtp", lambda s: None if s.get("probe") else {**s, "probe": f"p{n}"}, NOW
        )
        if state.get("probe") == f"p{n}":
            winners.append(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(winners) == 1


# --- notifications -----------------------------------------------------------------------------------------------
def _message() -> MessageData:
    return MessageData(
        props={T.PR_SUBJECT: "n"},
        recipients=[Recipient(props={T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: "a@x.test", T.PR_RECIPIENT_TYPE: 1})],
    )


async def _collect(listener: Any, timeout: float = 1.0) -> list[Notification]:
    notes: list[Notification] = []
    while (note := await listener.get(timeout)) is not None:
        notes.append(note)
        timeout = 0.3
    return notes


def test_submit_and_new_mail_notify_other_processes(
    store: MessageStore, open_another: Callable[[], MessageStore]
) -> None:
    other = open_another()
    outbox = store.folder(FolderRole.OUTBOX).id

    async def run() -> list[Notification]:
        with other.bus.listen() as listener:
            listener.attach()
            mid = store.create_and_submit(outbox, _message(), NOW)
            store.deliver_message(store.folder(FolderRole.INBOX).id, MessageData(props={}), NOW)
            store.bus.publish("mode", mode="offline")
            notes = await _collect(listener)
            assert any(n.kind == "submitted" and n.data.get("message_id") == mid for n in notes)
            return notes

    notes = asyncio.run(run())
    kinds = [n.kind for n in notes]
    assert "newmail" in kinds and {"kind": notes[-1].kind, **notes[-1].data} == {"kind": "mode", "mode": "offline"}


def test_notifications_before_attach_are_kept(store: MessageStore) -> None:
    async def run() -> list[Notification]:
        listener = store.bus.listen()
        try:
            store.create_and_submit(store.folder(FolderRole.OUTBOX).id, _message(), NOW)
            await asyncio.sleep(0.2)
            return await _collect(listener)
        finally:
            listener.close()

    assert [n.kind for n in asyncio.run(run())] == ["submitted"]


def test_a_batch_notifies_only_after_it_commits(store: MessageStore) -> None:
    outbox = store.folder(FolderRole.OUTBOX).id

    async def run() -> tuple[list[Notification], list[Notification]]:
        with store.bus.listen() as listener:
            listener.attach()
            try:
                with store.batch():
                    store.create_and_submit(outbox, _message(), NOW)
                    raise RuntimeError("rolled back")
            except RuntimeError:
                pass
            rolled_back = await _collect(listener, 0.5)
            with store.batch():
                first = store.create_and_submit(outbox, _message(), NOW)
                second = store.create_and_submit(outbox, _message(), NOW)
            committed = await _collect(listener)
            assert [n.data["message_id"] for n in committed] == [first, second]
            return rolled_back, committed

    rolled_back, committed = asyncio.run(run())
    assert rolled_back == []
    assert [n.kind for n in committed] == ["submitted", "submitted"]


def test_async_iteration_of_a_listener(store: MessageStore) -> None:
    async def run() -> Notification:
        with store.bus.listen() as listener:
            listener.attach()
            store.bus.publish("queue", retry=3)
            async for note in listener:
                return note
        raise AssertionError("no notification")

    note = asyncio.run(asyncio.wait_for(run(), 5))
    assert (note.kind, note.data) == ("queue", {"retry": 3})


def test_a_listener_that_binds_after_a_publish_hears_the_next_one(store: MessageStore, backend: str) -> None:
    """The SQLite bus lists its directory again only when it changed: a listener that binds within
    the same tick of the file system's clock (the directory's mtime as it was) is heard too."""
    if backend != "sqlite":
        return
    import os

    directory = store.bus.directory

    async def hears(listener: Any) -> bool:
        store.bus.publish("queue", probe=1)
        return any(n.data == {"probe": 1} for n in await _collect(listener, 0.5))

    async def run() -> None:
        with store.bus.listen() as first:
            first.attach()
            old = os.stat(directory).st_mtime_ns - 10_000_000_000
            os.utime(directory, ns=(old, old))  # changed long ago: the listing may be kept
            assert await hears(first)
            with store.bus.listen() as second:  # the directory changes: listed again
                second.attach()
                assert await hears(second)
                listed = os.stat(directory).st_mtime_ns
                with store.bus.listen() as third:
                    third.attach()
                    os.utime(directory, ns=(listed, listed))  # as if bound in the same tick
                    assert await hears(third)
            assert await hears(first)  # the two that closed are not sent to, and no error

    asyncio.run(run())


def test_postgresql_connections_that_die_are_replaced(store: MessageStore, backend: str) -> None:
    """A listener reconnects by itself (and says "rescan"); the pool replaces dead connections."""
    if backend != "postgres":
        return
    import os

    import psycopg

    listener_class = type(store.bus.listen())
    listener_class.RETRY_SECONDS = 0.2  # type: ignore[attr-defined]

    def kill(pids: list[int]) -> None:
        with psycopg.connect(os.environ["POSTROOM_TEST_PG_URL"], autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))

    async def run() -> list[Notification]:
        with store.bus.listen() as listener:
            listener.attach()
            pool = store._pool  # type: ignore[attr-defined]
            with pool.connection() as conn:
                pids = [conn.info.backend_pid, listener._conn.info.backend_pid]
            kill(pids)
            first = await _collect(listener, 3.0)
            store.create_and_submit(store.folder(FolderRole.OUTBOX).id, _message(), NOW)
            return first + await _collect(listener, 3.0)

    try:
        notes = asyncio.run(run())
    finally:
        listener_class.RETRY_SECONDS = 2.0  # type: ignore[attr-defined]
    kinds = [n.kind for n in notes]
    assert kinds.count("queue") >= 1 and kinds[-1] == "submitted"
    assert len(store.queue()) == 1
