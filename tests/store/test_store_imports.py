"""The import key (`MessageStore.import_message`, for `postroom import`) on both stores: a message is
saved once per key, a key whose message was deleted is taken again, and every MAPI property type
the .msg import brings is stored and read back as it was."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from postroom.mapi import tags as T
from postroom.mapi.message import MessageData
from postroom.store import FolderRole, MessageStore, open_store


def note(subject: str) -> MessageData:
    return MessageData(props={T.PR_SUBJECT: subject})


def test_a_message_is_imported_once_per_key(store: MessageStore) -> None:
    inbox = store.folder(FolderRole.INBOX).id
    first = store.import_message(inbox, note("one"), "k1")
    assert first is not None
    assert store.import_message(inbox, note("one again"), "k1") is None
    second = store.import_message(inbox, note("two"), "k2")
    assert second is not None and second != first
    assert sorted(m.subject for m in store.list_messages(inbox)) == ["one", "two"]


def test_a_key_whose_message_was_deleted_is_imported_again(store: MessageStore) -> None:
    inbox = store.folder(FolderRole.INBOX).id
    mid = store.import_message(inbox, note("one"), "k1")
    assert mid is not None
    store.delete_message(mid)
    again = store.import_message(inbox, note("one"), "k1")
    assert again is not None and again != mid
    assert store.import_message(inbox, note("one"), "k1") is None


def test_two_imports_of_one_key_at_once_save_one_message(store: MessageStore, backend: str, store_target: str) -> None:
    other = open_store(store_target)
    inbox = store.folder(FolderRole.INBOX).id
    results: dict[str, int | None] = {}
    inside = threading.Event()

    def first() -> None:  # an import batch still open (Session.import_files commits every 200)
        with store.batch():
            results["first"] = store.import_message(inbox, note("one"), "k1")
            inside.set()
            wait_until_another_waits_for(store, backend, store_target)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(30)
        results["second"] = other.import_message(inbox, note("one"), "k1")
    finally:
        thread.join(30)
        other.close()
    assert results["first"] is not None and results["second"] is None
    assert [m.subject for m in store.list_messages(inbox)] == ["one"]


def wait_until_another_waits_for(store: MessageStore, backend: str, target: str) -> None:
    """Until another session waits for a lock that `store`'s open transaction holds (PostgreSQL),
    or a moment (SQLite, where the second writer cannot begin before the first commits anyway)."""
    if backend == "sqlite":
        time.sleep(0.3)
        return
    import psycopg

    (holder,) = store._q("SELECT pg_backend_pid()")[0]  # type: ignore[attr-defined]  # the batch's session
    with psycopg.connect(target, autocommit=True) as conn:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder,)
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.02)


def test_every_property_type_a_msg_file_brings_is_stored_as_it_was(store: MessageStore) -> None:
    when = datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    props: dict[int, Any] = {
        T.prop_tag(0x0004, 0x6001): 1.5,  # PT_FLOAT
        T.prop_tag(0x0006, 0x6002): 123_4500,  # PT_CURRENCY
        T.prop_tag(0x0007, 0x6003): 43831.25,  # PT_APPTIME
        T.prop_tag(T.PT_ERROR, 0x6004): 0x8004010F,
        T.prop_tag(T.PT_CLSID, 0x6005): bytes(range(16)),
        T.prop_tag(T.MV_FLAG | T.PT_SYSTIME, 0x6006): [when, when],
        T.prop_tag(T.MV_FLAG | T.PT_CLSID, 0x6007): [bytes(16), bytes(range(16))],
        T.prop_tag(T.MV_FLAG | T.PT_SHORT, 0x6008): [-1, 2],
        T.prop_tag(T.MV_FLAG | 0x0004, 0x6009): [0.5, -2.0],
        T.prop_tag(T.MV_FLAG | T.PT_I8, 0x600A): [2**40, -(2**40)],
        T.prop_tag(T.MV_FLAG | T.PT_STRING8, 0x600B): ["a", "b"],
        T.prop_tag(T.MV_FLAG | T.PT_BINARY, 0x600C): [b"\0", b""],
    }
    mid = store.import_message(store.folder(FolderRole.INBOX).id, MessageData(props=dict(props)), "every type")
    assert mid is not None
    stored = store.open_message(mid).props
    assert {tag: stored.get(tag) for tag in props} == props
