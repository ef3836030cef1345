"""Schema versions: a store is created at the latest schema, an older one is migrated (SQLite) or refused
until `postroom store migrate` (PostgreSQL), a newer one is always refused and left untouched."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime

import pytest

from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.message import MessageData, OriginalMime, Recipient
from postroom.store import FolderRole, open_store
from postroom.store.migrations import LATEST
from postroom.storeadmin import migrate

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


#: What versions 2 and later added, undone to make a store look as version 1 left it.
UNDO_AFTER_V1 = (
    "DROP TABLE transport_usage",
    "DROP TABLE breaker_state",
    "ALTER TABLE recipients DROP COLUMN waiting_for",
    "ALTER TABLE recipients DROP COLUMN detail",
    "ALTER TABLE messages DROP COLUMN first_try",
    "ALTER TABLE messages DROP COLUMN failures",
    "ALTER TABLE recipients DROP COLUMN declined",
    "DROP TABLE mime_originals",
    "DROP TABLE message_streams",
    "DROP TABLE spooler_passes",
    "DROP TABLE history_totals",
    "DROP TABLE history_minutes",
    "ALTER TABLE messages DROP COLUMN started",
)


def set_version(backend: str, target: str, version: int, *, undo_after_v1: bool = False) -> None:
    """Make the store look as an older (or newer) postroom left it."""
    undo = UNDO_AFTER_V1 if undo_after_v1 else ()
    if backend == "sqlite":
        db = sqlite3.connect(target)
        with db:
            for statement in undo:
                db.execute(statement)
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (version,))
        db.close()
        return
    import psycopg

    with psycopg.connect(target, autocommit=True) as conn:
        for statement in undo:
            conn.execute(statement.encode())
        conn.execute("UPDATE meta SET value=%s WHERE key='schema_version'", (str(version),))


def read_version(backend: str, target: str) -> int:
    if backend == "sqlite":
        db = sqlite3.connect(target)
        try:
            return int(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        finally:
            db.close()
    import psycopg

    with psycopg.connect(target) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        assert row is not None
        return int(row[0])


def test_a_new_store_has_the_latest_schema(backend: str, store_target: str) -> None:
    report = migrate(store_target)
    assert (report.before, report.after, report.changed) == (None, LATEST, True)
    assert read_version(backend, store_target) == LATEST
    again = migrate(store_target)
    assert (again.before, again.after, again.changed) == (LATEST, LATEST, False)
    assert report.kind == ("sqlite" if backend == "sqlite" else "postgresql")


def test_an_older_store_is_migrated_and_keeps_its_data(backend: str, store_target: str) -> None:
    store = open_store(store_target)
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, MessageData(props={T.PR_SUBJECT: "kept"}))
    uid = store.store_uid
    store.close()
    set_version(backend, store_target, 1, undo_after_v1=True)
    if backend == "postgres":
        # Shared by many processes: refused with what to do, never changed behind their backs.
        with pytest.raises(MAPIError) as err:
            open_store(store_target)
        assert err.value.code == HResult.MAPI_E_VERSION
        assert "postroom store migrate" in err.value.message and "schema 1" in err.value.message
        assert read_version(backend, store_target) == 1
        report = migrate(store_target)
        assert (report.before, report.after) == (1, LATEST)
    store = open_store(store_target)  # SQLite: migrated as it opens
    try:
        assert read_version(backend, store_target) == LATEST
        assert store.store_uid == uid and store.open_message(mid)[T.PR_SUBJECT] == "kept"
        store.record_send("smtp", NOW)  # type: ignore[attr-defined]  # the version 2 tables are there
        assert [s.waiting_for for s in store.recipient_states(mid)] == []  # the version 3 and 4 columns are read
        assert store.count_sends("smtp", NOW.replace(year=2025)) == 1  # type: ignore[attr-defined]
        kept = MessageData(props={T.PR_SUBJECT: "imported"}, original=OriginalMime("f" * 64, 3, data=b"A:b"))
        with_original = store.create_message(store.folder(FolderRole.INBOX).id, kept)  # the version 4 table
        assert store.open_message(with_original).original is not None
    finally:
        store.close()


def test_a_lease_held_when_the_store_is_migrated_to_version_6_counts_as_started(
    backend: str, store_target: str
) -> None:
    """Version 6 adds the "started" mark; a lease held before it may have been a transport call in
    progress, so it is taken over as outcome unknown, while a message nobody held is not."""
    store = open_store(store_target)
    outbox = store.folder(FolderRole.OUTBOX).id
    to = Recipient(props={T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: "a@x.test", T.PR_RECIPIENT_TYPE: 1})
    held, free = (
        store.create_message(outbox, MessageData(props={T.PR_SUBJECT: s}, recipients=[to])) for s in ("held", "free")
    )
    store.submit(held, NOW)
    store.submit(free, NOW)
    assert store.claim_messages("old spooler", [held], NOW, 10) == [held]
    store.close()
    set_version(backend, store_target, 5)
    undo = "ALTER TABLE messages DROP COLUMN started"
    if backend == "sqlite":
        db = sqlite3.connect(store_target)
        with db:
            db.execute(undo)
        db.close()
    else:
        import psycopg

        with psycopg.connect(store_target, autocommit=True) as conn:
            conn.execute(undo.encode())
        assert migrate(store_target).before == 5
    store = open_store(store_target)  # SQLite: migrated as it opens
    try:
        assert read_version(backend, store_target) == LATEST
        later = NOW.replace(hour=NOW.hour + 1)
        assert store.claim_messages("new spooler", [held, free], later, 10) == [held, free]
        claimed = store.load_claimed([held, free])
        assert claimed[held].previous_owner == "old spooler" and claimed[free].previous_owner is None
    finally:
        store.close()


def test_a_newer_store_is_refused_and_left_alone(backend: str, store_target: str) -> None:
    open_store(store_target).close()
    set_version(backend, store_target, LATEST + 7)
    for attempt in (lambda: open_store(store_target), lambda: migrate(store_target)):
        with pytest.raises(MAPIError) as err:
            attempt()
        assert err.value.code == HResult.MAPI_E_VERSION
        assert "newer postroom" in err.value.message
    assert read_version(backend, store_target) == LATEST + 7


def test_processes_opening_a_new_database_at_once_create_one_store(backend: str, store_target: str) -> None:
    uids: list[bytes] = []
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            s = open_store(store_target)
            uids.append(s.store_uid)
            s.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(set(uids)) == 1 and len(uids) == 4
    store = open_store(store_target)
    try:
        assert [f.name for f in store.folders()] == ["Inbox", "Outbox", "Sent Items", "Deleted Items"]
    finally:
        store.close()
