"""SQLite's batch_synced_later and sync_log (store/sqlite.py): a commit without its fsync, then
the fsync apart, on any thread; the connection's other commits keep synchronous=FULL."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from postroom.envelope import SubmissionSource, envelope_message
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.message import MessageData
from postroom.store import FolderRole
from postroom.store.sqlite import SQLiteStore

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
FULL = 2


def message(n: int) -> MessageData:
    raw = f"From: a@example.org\r\nSubject: m{n}\r\n\r\nbody {n}\r\n".encode()
    return envelope_message(raw, "a@example.org", [f"u{n}@example.org"], SubmissionSource.SMTP)


def synchronous(store: SQLiteStore) -> int:
    (level,) = store._db.execute("PRAGMA synchronous").fetchone()
    return int(level)


def test_a_batch_synced_later_is_seen_by_other_connections_at_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    assert store.syncs_later  # WAL
    outbox = store.folder(FolderRole.OUTBOX).id
    with store.batch_synced_later():
        mid = store.create_and_submit(outbox, message(1), NOW)
    other = sqlite3.connect(tmp_path / "s.sqlite")
    assert other.execute("SELECT count(*) FROM messages WHERE id=?", (mid,)).fetchone() == (1,)
    other.close()
    done = threading.Thread(target=store.sync_log)  # the intake thread's part
    done.start()
    done.join()
    assert synchronous(store) == FULL


def test_the_connection_is_synchronous_full_again_after_a_batch_that_failed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    outbox = store.folder(FolderRole.OUTBOX).id
    with pytest.raises(MAPIError) as refused, store.batch_synced_later():
        store.create_and_submit(outbox, message(1), NOW)
        raise MAPIError(HResult.MAPI_E_CALL_FAILED, "given up")
    assert refused.value.code == HResult.MAPI_E_CALL_FAILED
    assert synchronous(store) == FULL
    assert store.queue() == []


def test_inside_another_batch_it_is_part_of_that_one(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    outbox = store.folder(FolderRole.OUTBOX).id
    commits = store.statements.commits
    with store.batch():
        assert synchronous(store) == FULL
        with store.batch_synced_later():
            store.create_and_submit(outbox, message(1), NOW)
            assert synchronous(store) == FULL  # the outer batch's COMMIT syncs
        store.create_and_submit(outbox, message(2), NOW)
    assert store.statements.commits == commits + 1
    assert len(store.queue()) == 2
