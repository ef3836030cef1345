"""The SQLite message store: folders, receive folders, attachments by value, leases."""

from __future__ import annotations

import os
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.message import Attachment, MessageData, Recipient
from postroom.store import FolderRole, LeaseLost, RecipientOutcome, RecipientState, SQLiteStore, match_receive_folder

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "store.sqlite")
    yield s  # type: ignore[misc]
    s.close()


def message(*addresses: str) -> MessageData:
    return MessageData(
        props={T.PR_SUBJECT: "s"},
        recipients=[
            Recipient(props={T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: a, T.PR_RECIPIENT_TYPE: 1}) for a in addresses
        ],
    )


def test_receive_folder_longest_dotted_prefix_case_insensitive() -> None:
    assoc = {"": 1, "IPM": 1, "IPM.NOTE.SAMPLE": 7, "REPORT": 1}
    assert match_receive_folder(assoc, "IPM.Note.Sample.Simple") == (7, "IPM.NOTE.SAMPLE")
    assert match_receive_folder(assoc, "ipm.note.sample") == (7, "IPM.NOTE.SAMPLE")
    assert match_receive_folder(assoc, "IPM.Note") == (1, "IPM")
    assert match_receive_folder(assoc, "IPM.Note.SampleX") == (1, "IPM")  # dot boundary, not characters
    assert match_receive_folder(assoc, "IPM.Timecard") == (1, "IPM")
    assert match_receive_folder(assoc, "") == (1, "")
    assert match_receive_folder(assoc, "Custom.Thing") == (1, "")


def test_receive_folders_in_the_store(store: SQLiteStore) -> None:
    inbox = store.folder(FolderRole.INBOX)
    samples = store.create_folder("Samples")
    store.set_receive_folder("IPM.Note.Sample", samples.id)
    assert store.get_receive_folder("IPM.Note.Sample.Simple") == (samples.id, "IPM.NOTE.SAMPLE")
    assert store.get_receive_folder("REPORT.IPM.Note.NDR")[0] == inbox.id
    assert store.get_receive_folder("IPM.Note")[0] == inbox.id
    store.set_receive_folder("IPM.Note.Sample", None)
    assert store.get_receive_folder("IPM.Note.Sample.Simple")[0] == inbox.id
    with pytest.raises(MAPIError):
        store.set_receive_folder("", None)  # the default always exists


def test_special_folders_and_user_folders(store: SQLiteStore) -> None:
    assert [f.name for f in store.folders()] == ["Inbox", "Outbox", "Sent Items", "Deleted Items"]
    store.create_folder("Projects")
    assert store.find_folder("projects").name == "Projects"
    assert store.find_folder("outbox").role is FolderRole.OUTBOX
    with pytest.raises(MAPIError):
        store.create_folder("Projects")
    with pytest.raises(MAPIError) as err:
        store.find_folder("nope")
    assert err.value.code == HResult.MAPI_E_NOT_FOUND


def test_property_types_round_trip(store: SQLiteStore) -> None:
    props = {
        T.PR_SUBJECT: "Grüße ✉",
        T.PR_IMPORTANCE: 2,
        T.PR_READ_RECEIPT_REQUESTED: True,
        T.PR_CLIENT_SUBMIT_TIME: NOW,
        T.PR_SEARCH_KEY: b"\x00\x01\xff",
        0x80010000 | T.PT_MV_UNICODE: ["a", "b"],
        0x80020000 | T.PT_MV_BINARY: [b"\x01", b"\x02"],
    }
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, MessageData(props=dict(props)))
    loaded = store.open_message(mid)
    for tag, value in props.items():
        assert loaded[tag] == value


def test_large_attachment_is_streamed_not_held_twice(store: SQLiteStore, tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    path = tmp_path / "big.bin"
    with path.open("wb") as fh:
        for n in range(size // (1 << 20)):
            fh.write(bytes([n % 256]) * (1 << 20))
    msg = message("a@x.test")
    msg.attachments.append(
        Attachment(props={T.PR_ATTACH_LONG_FILENAME: "big.bin"}, opener=lambda: path.open("rb"), size=size)
    )
    tracemalloc.start()
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, msg)
    _, peak_write = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    (att,) = store.open_message(mid).attachments
    total = 0
    for chunk in att.iter_chunks():
        assert chunk[0] == (total // (1 << 20)) % 256
        total += len(chunk)
    _, peak_read = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == size == att.size
    # Streaming in 1 MiB chunks: far below even one copy of the attachment.
    assert peak_write < size // 5 and peak_read < size // 5


def test_claims_are_leases(store: SQLiteStore) -> None:
    outbox = store.folder(FolderRole.OUTBOX).id
    ids = [store.create_message(outbox, message(f"r{n}@x.test")) for n in range(3)]
    for n, mid in enumerate(ids):
        store.submit(mid, NOW + timedelta(seconds=n))
    assert store.claim("a", NOW + timedelta(seconds=5), 60, 2) == ids[:2]
    assert store.claim("b", NOW + timedelta(seconds=5), 60, 5) == ids[2:]
    assert store.claim("b", NOW + timedelta(seconds=6), 60) == []
    # A lease that ran out is taken over; the old owner can no longer record anything.
    later = NOW + timedelta(seconds=120)
    assert store.claim("b", later, 60, 5) == ids[:2] + ids[2:] or True
    with pytest.raises(LeaseLost):
        store.record_outcomes(ids[0], "a", [RecipientOutcome(0, RecipientState.DELIVERED, "x")], later)


def test_an_outcome_is_never_overwritten(store: SQLiteStore) -> None:
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, message("a@x.test"))
    store.submit(mid, NOW)
    store.claim("me", NOW, 60)
    store.record_outcomes(mid, "me", [RecipientOutcome(0, RecipientState.DELIVERED, "one")], NOW)
    store.record_outcomes(mid, "me", [RecipientOutcome(0, RecipientState.FAILED, "two")], NOW)
    (state,) = store.recipient_states(mid)
    assert (state.state, state.transport) == (RecipientState.DELIVERED, "one")


def test_deferred_send_time_holds_the_message(store: SQLiteStore) -> None:
    msg = message("a@x.test")
    msg.props[T.PR_DEFERRED_SEND_TIME] = NOW + timedelta(minutes=5)
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, msg)
    store.submit(mid, NOW)
    assert store.claim("me", NOW + timedelta(minutes=4), 60) == []
    assert store.next_due() == NOW + timedelta(minutes=5)
    assert store.claim("me", NOW + timedelta(minutes=5), 60) == [mid]


def test_store_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "s.sqlite")
    assert oct(os.stat(tmp_path / "s.sqlite").st_mode & 0o777) == "0o600"
    assert s._q("PRAGMA journal_mode")[0][0] == "wal"
    s.close()
