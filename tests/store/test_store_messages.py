"""Folders, messages, properties, attachments and receive folders: the same behaviour in both stores."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.flags import MessageFlags
from postroom.mapi.message import Attachment, MessageData, Recipient
from postroom.store import FolderRole, MessageStore, open_store

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def message(*addresses: str, subject: str = "s") -> MessageData:
    return MessageData(
        props={T.PR_SUBJECT: subject},
        recipients=[
            Recipient(
                props={T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: a, T.PR_DISPLAY_NAME: a, T.PR_RECIPIENT_TYPE: 1}
            )
            for a in addresses
        ],
    )


def code(exc: pytest.ExceptionInfo[MAPIError]) -> HResult:
    return exc.value.code


# --- folders -------------------------------------------------------------------------------------------
def test_special_folders_and_user_folders(store: MessageStore) -> None:
    assert [f.name for f in store.folders()] == ["Inbox", "Outbox", "Sent Items", "Deleted Items"]
    store.create_folder("Projects")
    assert store.find_folder("projects").name == "Projects"
    assert store.find_folder("outbox").role is FolderRole.OUTBOX
    with pytest.raises(MAPIError):
        store.create_folder("Projects")
    with pytest.raises(MAPIError) as err:
        store.find_folder("nope")
    assert err.value.code == HResult.MAPI_E_NOT_FOUND


def test_find_folder_by_id_entry_id_role_and_name(store: MessageStore) -> None:
    projects = store.create_folder("Projects")
    inner = store.create_folder("Inner", projects.id)
    assert inner.parent_id == projects.id
    for ref in (projects.id, str(projects.id), projects.entry_id, "PROJECTS"):
        assert store.find_folder(ref).id == projects.id
    assert store.find_folder("sentmail").role is FolderRole.SENT_ITEMS
    assert store.find_folder(FolderRole.INBOX.value).id == store.folder(FolderRole.INBOX).id
    for bad in (b"\x00" * 29, 999_999, "99999999999999999999999", b"junk"):
        with pytest.raises(MAPIError) as err:
            store.find_folder(bad)
        assert code(err) == HResult.MAPI_E_NOT_FOUND
    assert [f.name for f in store.folders()][-2:] == ["Projects", "Inner"]


def test_folder_names_are_checked_and_unique_ignoring_ascii_case(store: MessageStore) -> None:
    for bad in ("", "  ", "a/b", "line\nbreak", "nul\0"):
        with pytest.raises(MAPIError) as err:
            store.create_folder(bad)
        assert code(err) == HResult.MAPI_E_INVALID_PARAMETER
    store.create_folder("Faxes")
    with pytest.raises(MAPIError):
        store.create_folder("FAXES")
    # SQLite's NOCASE folds ASCII letters only; the PostgreSQL store does exactly the same.
    store.create_folder("Ärger")
    store.create_folder("ärger")
    # The same name under another parent is fine.
    store.create_folder("Faxes", store.folder(FolderRole.INBOX).id)


def test_folder_counts(store: MessageStore) -> None:
    outbox = store.folder(FolderRole.OUTBOX).id
    for _ in range(3):
        store.create_message(outbox, message("a@x.test"))
    counts = {f.name: f.count for f in store.folders()}
    assert counts["Outbox"] == 3 and counts["Inbox"] == 0


def test_store_uid_and_entry_ids_are_stable_across_opens(store: MessageStore, store_target: str) -> None:
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, message("a@x.test"))
    entry = store.entry_id_of(mid)
    assert len(store.store_uid) == 16 and entry[4:20] == store.store_uid
    again = open_store(store_target)
    try:
        assert again.store_uid == store.store_uid
        assert again.resolve_message(entry) == mid
        assert again.folder(FolderRole.SENT_ITEMS).entry_id == store.folder(FolderRole.SENT_ITEMS).entry_id
    finally:
        again.close()


# --- messages ------------------------------------------------------------------------------------------
def test_property_types_round_trip(store: MessageStore) -> None:
    props = {
        T.PR_SUBJECT: "Grüße ✉ \0 nul",
        T.PR_IMPORTANCE: 2,
        T.PR_READ_RECEIPT_REQUESTED: True,
        T.PR_CLIENT_SUBMIT_TIME: NOW,
        T.PR_SEARCH_KEY: b"\x00\x01\xff",
        0x80010000 | T.PT_MV_UNICODE: ["a", "b"],
        0x80020000 | T.PT_MV_BINARY: [b"\x01", b"\x02"],
        0x80030000 | T.PT_I8: 2**62,
        0x80040000 | T.PT_DOUBLE: 0.1,
    }
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, MessageData(props=dict(props)))
    loaded = store.open_message(mid)
    for tag, value in props.items():
        assert loaded[tag] == value
    assert loaded[T.PR_ENTRYID] == store.entry_id_of(mid)


def test_a_value_that_cannot_be_stored_is_refused(store: MessageStore) -> None:
    outbox = store.folder(FolderRole.OUTBOX).id
    with pytest.raises(MAPIError) as err:
        store.create_message(outbox, MessageData(props={T.PR_SUBJECT: "lone \ud800 surrogate"}))
    assert code(err) == HResult.MAPI_E_INVALID_PARAMETER
    assert store.list_messages(outbox) == []


def test_recipients_and_display_lists(store: MessageStore) -> None:
    msg = message("a@x.test", "b@x.test")
    msg.recipients[1].props[T.PR_RECIPIENT_TYPE] = 2  # CC
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, msg)
    loaded = store.open_message(mid)
    assert [r.row_id for r in loaded.recipients] == [0, 1]
    assert [r.props[T.PR_ROWID] for r in loaded.recipients] == [0, 1]
    assert loaded[T.PR_DISPLAY_TO] == "a@x.test" and loaded[T.PR_DISPLAY_CC] == "b@x.test"
    store.set_recipients(mid, [Recipient(props={T.PR_DISPLAY_NAME: "C", T.PR_RECIPIENT_TYPE: 1})])  # type: ignore[attr-defined]
    assert store.open_message(mid)[T.PR_DISPLAY_TO] == "C"


def test_set_props_merges_and_deletes_until_submitted(store: MessageStore) -> None:
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, message("a@x.test"))
    store.set_props(mid, {T.PR_IMPORTANCE: 2, T.PR_SUBJECT: "new"}, delete=[T.PR_DISPLAY_CC])
    loaded = store.open_message(mid)
    assert loaded[T.PR_SUBJECT] == "new" and loaded[T.PR_IMPORTANCE] == 2 and T.PR_DISPLAY_CC not in loaded.props
    store.submit(mid, NOW)
    with pytest.raises(MAPIError) as err:
        store.set_props(mid, {T.PR_SUBJECT: "too late"})
    assert code(err) == HResult.MAPI_E_SUBMITTED
    with pytest.raises(MAPIError) as err:
        store.set_props(424242, {T.PR_SUBJECT: "x"})
    assert code(err) == HResult.MAPI_E_NOT_FOUND


def test_list_messages_and_summaries(store: MessageStore) -> None:
    outbox = store.folder(FolderRole.OUTBOX).id
    ids = [store.create_message(outbox, message(f"r{n}@x.test", subject=f"s{n}")) for n in range(4)]
    rows = store.list_messages(outbox)
    assert [r.id for r in rows] == ids
    assert rows[0].subject == "s0" and rows[0].display_to == "r0@x.test" and rows[0].message_class == "IPM.Note"
    assert rows[0].entry_id == store.entry_id_of(ids[0])
    assert rows[0].flags & MessageFlags.UNSENT
    assert [r.id for r in store.list_messages(outbox, limit=2)] == ids[:2]
    assert store.message_folder(ids[0]) == outbox


def test_resolve_message_by_number_and_entry_id(store: MessageStore) -> None:
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, message("a@x.test"))
    entry = store.entry_id_of(mid)
    assert store.resolve_message(mid) == mid
    assert store.resolve_message(str(mid)) == mid
    assert store.resolve_message(entry) == mid
    assert store.resolve_message(entry.hex()) == mid
    foreign = entry[:4] + bytes(16) + entry[20:]
    for bad in (foreign, 9999, "zz", "99999999999999999999999999", entry.hex()[:-2]):
        with pytest.raises(MAPIError) as err:
            store.resolve_message(bad)
        assert code(err) == HResult.MAPI_E_NOT_FOUND


def test_ids_no_row_can_have_are_simply_not_found(store: MessageStore) -> None:
    """IDs beyond 64 bits, zero or below, and digits int() cannot read: the same MAPI errors in both stores."""
    outbox = store.folder(FolderRole.OUTBOX).id
    mid = store.create_message(outbox, message("a@x.test"))
    big = 1 << 64
    forged = store.entry_id_of(mid)[:21] + (big - 1).to_bytes(8, "little")  # a well-formed entry ID, ID 2**64-1
    for bad in (big, 0, -1):
        for call in (store.open_message, store.message_folder, store.delete_message):
            with pytest.raises(MAPIError) as err:
                call(bad)
            assert code(err) == HResult.MAPI_E_NOT_FOUND
        queue_calls: list[Callable[[int], None]] = [
            lambda m: store.abort_submit(m, NOW),
            lambda m: store.hold(m, NOW, "r"),
        ]
        for queue_call in queue_calls:
            with pytest.raises(MAPIError) as err:
                queue_call(bad)
            assert code(err) == HResult.MAPI_E_NOT_IN_QUEUE
        assert store.queue(bad) == []
        assert store.queue_entry(bad) is None
        assert store.recipient_states(bad) == []
        assert store.events(bad) == []
        with pytest.raises(MAPIError) as err:
            store.set_receive_folder("IPM.X", bad)
        assert code(err) == HResult.MAPI_E_NOT_FOUND
    for ref in ("²", str(big), forged):
        with pytest.raises(MAPIError) as err:
            store.resolve_message(ref)
        assert code(err) == HResult.MAPI_E_NOT_FOUND
        with pytest.raises(MAPIError) as err:
            store.find_folder(ref)
        assert code(err) == HResult.MAPI_E_NOT_FOUND


def test_move_and_delete(store: MessageStore) -> None:
    outbox = store.folder(FolderRole.OUTBOX).id
    drafts = store.create_folder("Drafts")
    mid = store.create_message(outbox, message("a@x.test"))
    store.move_message(mid, drafts.id)
    assert store.message_folder(mid) == drafts.id
    store.delete_message(mid)
    with pytest.raises(MAPIError) as err:
        store.open_message(mid)
    assert code(err) == HResult.MAPI_E_NOT_FOUND
    with pytest.raises(MAPIError) as err:
        store.delete_message(mid)
    assert code(err) == HResult.MAPI_E_NOT_FOUND
    # IDs are never reused after a delete: entry IDs stay unique.
    assert store.create_message(outbox, message("b@x.test")) > mid


def test_a_message_the_spooler_holds_cannot_be_deleted(store: MessageStore) -> None:
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, message("a@x.test"))
    store.submit(mid, NOW)
    assert store.claim("spooler", NOW, 60) == [mid]
    with pytest.raises(MAPIError) as err:
        store.delete_message(mid)
    assert code(err) == HResult.MAPI_E_NO_ACCESS


# --- attachments -------------------------------------------------------------------------------------------
def test_attachments_by_value_and_embedded(store: MessageStore) -> None:
    inner = message("inner@x.test", subject="inner")
    inner.attachments.append(Attachment(props={T.PR_ATTACH_LONG_FILENAME: "deep.txt"}, data=b"deep"))
    msg = message("a@x.test")
    msg.attachments += [
        Attachment(props={T.PR_ATTACH_LONG_FILENAME: "a.bin"}, data=bytes(range(256)) * 10),
        Attachment(props={}, embedded=inner),
        Attachment(props={T.PR_ATTACH_LONG_FILENAME: "empty"}, data=b""),
    ]
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, msg)
    loaded = store.open_message(mid)
    assert loaded[T.PR_HASATTACH] is True and loaded[T.PR_MESSAGE_FLAGS] & MessageFlags.HASATTACH
    first, embedded, empty = loaded.attachments
    assert [a.num for a in loaded.attachments] == [0, 1, 2]
    assert first.read_all() == bytes(range(256)) * 10 and first.size == 2560 and first[T.PR_ATTACH_SIZE] == 2560
    assert empty.read_all() == b"" and empty.size == 0
    assert embedded.embedded is not None and embedded.embedded[T.PR_SUBJECT] == "inner"
    assert embedded.embedded.recipients[0].props[T.PR_EMAIL_ADDRESS] == "inner@x.test"
    assert embedded.embedded.attachments[0].read_all() == b"deep"
    # An embedded message is not a message of any folder.
    assert [m.id for m in store.list_messages(store.folder(FolderRole.OUTBOX).id)] == [mid]


def test_reading_an_attachment_in_pieces(store: MessageStore) -> None:
    data = bytes(n % 251 for n in range(3 * (1 << 20) + 7))
    msg = message("a@x.test")
    msg.attachments.append(Attachment(props={}, data=data))
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, msg)
    (att,) = store.open_message(mid).attachments
    with att.open() as stream:
        assert stream.read(5) == data[:5]
        stream.seek(1 << 20)
        assert stream.tell() == 1 << 20
        assert stream.read(10) == data[1 << 20 : (1 << 20) + 10]
        assert stream.read() == data[(1 << 20) + 10 :]
        assert stream.read(1) == b""


def test_add_attachment_streams_from_a_file_and_checks_its_size(store: MessageStore, tmp_path: Path) -> None:
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, message("a@x.test"))
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)
    with path.open("rb") as fh:
        num = store.add_attachment(mid, {T.PR_ATTACH_LONG_FILENAME: "f.bin"}, fh)
    assert num == 0
    assert store.add_attachment(mid, {}, b"small") == 1
    loaded = store.open_message(mid)
    assert [a.size for a in loaded.attachments] == [3_000_000, 5]
    assert loaded.attachments[0].read_all() == b"x" * 3_000_000
    for size in (10, 3_000_001):  # the stream is longer / shorter than announced: refused, nothing stored
        with pytest.raises(MAPIError) as err:
            store.add_attachment(mid, {}, io.BytesIO(b"y" * 3_000_000), size=size)
        assert code(err) == HResult.MAPI_E_CORRUPT_DATA
    assert len(store.open_message(mid).attachments) == 2
    store.submit(mid, NOW)
    with pytest.raises(MAPIError) as err:
        store.add_attachment(mid, {}, b"late")
    assert code(err) == HResult.MAPI_E_SUBMITTED


def test_large_attachment_is_streamed_not_held_twice(store: MessageStore, tmp_path: Path) -> None:
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


def test_deleting_a_message_deletes_its_embedded_messages(store: MessageStore) -> None:
    def rows(table: str) -> int:
        return int(store._q(f"SELECT count(*) FROM {table}")[0][0])

    before = {table: rows(table) for table in ("messages", "recipients", "attachments")}
    innermost = message("j@x.test", subject="innermost")
    inner = message("i@x.test", subject="inner")
    inner.attachments.append(Attachment(props={}, embedded=innermost))
    msg = message("a@x.test")
    msg.attachments.append(Attachment(props={}, embedded=inner))
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, msg)
    (attachment,) = store.open_message(mid).attachments
    assert attachment.embedded is not None and attachment.embedded.subject == "inner"
    assert rows("messages") == before["messages"] + 3  # the outer message and the two embedded ones

    store.delete_message(mid)
    with pytest.raises(MAPIError):
        store.open_message(mid)
    # The embedded messages (which live in no folder) are gone too, with their recipients and attachments.
    assert {table: rows(table) for table in before} == before


# --- receive folders --------------------------------------------------------------------------------------------
def test_receive_folders_in_the_store(store: MessageStore) -> None:
    inbox = store.folder(FolderRole.INBOX)
    samples = store.create_folder("Samples")
    store.set_receive_folder("IPM.Note.Sample", samples.id)
    assert store.get_receive_folder("IPM.Note.Sample.Simple") == (samples.id, "IPM.NOTE.SAMPLE")
    assert store.get_receive_folder("REPORT.IPM.Note.NDR")[0] == inbox.id
    assert store.get_receive_folder("IPM.Note")[0] == inbox.id
    store.set_receive_folder("ipm.note.sample", inbox.id)  # replaces the association
    assert store.get_receive_folder("IPM.Note.Sample.Simple")[0] == inbox.id
    store.set_receive_folder("IPM.Note.Sample", None)
    assert "IPM.NOTE.SAMPLE" not in store.receive_folders()
    assert store.receive_folders()["IPC"] == store.folder(FolderRole.ROOT).id
    with pytest.raises(MAPIError):
        store.set_receive_folder("", None)  # the default always exists
    with pytest.raises(MAPIError) as err:
        store.set_receive_folder("IPM.X", 987654)
    assert code(err) == HResult.MAPI_E_NOT_FOUND
