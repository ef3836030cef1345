"""The original MIME stream of an imported message: kept beside its properties in both stores, read
only when asked for, kept when the message moves or is copied, deleted with it."""

from __future__ import annotations

from datetime import UTC, datetime

from postroom import mime, original
from postroom.mapi import tags as T
from postroom.mapi.message import Attachment, MessageData
from postroom.store import FolderRole, MessageStore

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

RAW = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: kept\r\n"
    b"X-Mailer: some client\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello\r\n"
)


def originals(store: MessageStore) -> int:
    return int(store._q("SELECT count(*) FROM mime_originals")[0][0])  # type: ignore[attr-defined]


def test_an_imported_message_keeps_its_exact_bytes_beside_its_properties(store: MessageStore) -> None:
    mid = store.create_message(store.folder(FolderRole.INBOX).id, mime.from_mime(RAW))
    stored = store.open_message(mid)
    assert stored.original is not None
    assert stored.original.data is None  # opening the message did not read them
    assert stored.original.size == len(RAW)
    assert stored.original.read_all() == RAW
    assert mime.original_bytes(stored) == RAW


def test_a_message_made_through_its_properties_has_no_original(store: MessageStore) -> None:
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, MessageData(props={T.PR_SUBJECT: "new"}))
    assert store.open_message(mid).original is None
    assert originals(store) == 0


def test_a_moved_or_copied_message_keeps_its_original_and_a_deleted_one_takes_it_along(store: MessageStore) -> None:
    inbox = store.folder(FolderRole.INBOX).id
    mid = store.create_message(inbox, mime.from_mime(RAW))
    store.move_message(mid, store.folder(FolderRole.DELETED_ITEMS).id)
    assert mime.original_bytes(store.open_message(mid)) == RAW
    # A copy made from the opened message (as an NDR embeds its original) streams the bytes over.
    copy = store.create_message(inbox, store.open_message(mid))
    holder = MessageData(props={T.PR_SUBJECT: "holder"}, attachments=[Attachment(embedded=store.open_message(mid))])
    outer = store.create_message(inbox, holder)
    assert mime.original_bytes(store.open_message(copy)) == RAW
    inner = store.open_message(outer).attachments[0].embedded
    assert inner is not None and mime.original_bytes(inner) == RAW
    assert originals(store) == 3
    store.delete_message(mid)
    store.delete_message(outer)
    assert originals(store) == 1


def test_a_large_original_is_kept_whole(store: MessageStore) -> None:
    body = b"".join(b"%076d\r\n" % n for n in range(20 * 1024 * 1024 // 78))
    raw = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: big\r\n\r\n" + body
    md = MessageData(props={T.PR_SUBJECT: "big"})
    original.keep(md, raw)  # what from_mime does, without parsing 20 MB
    mid = store.create_message(store.folder(FolderRole.INBOX).id, md)
    stored = store.open_message(mid)
    assert stored.original is not None and stored.original.size == len(raw)
    assert stored.original.read_all() == raw


def test_a_stored_and_submitted_message_is_unchanged_until_its_properties_change(store: MessageStore) -> None:
    outbox = store.folder(FolderRole.OUTBOX).id
    rich = RAW.replace(
        b"To: bob@example.net", b'To: "Bob B." <bob@example.net>, carol@example.net\r\nCc: d@example.net'
    )
    sent = store.create_and_submit(outbox, mime.from_mime(rich), NOW)
    assert original.unchanged(store.open_message(sent))
    draft = store.create_message(outbox, mime.from_mime(rich))
    assert original.unchanged(store.open_message(draft))
    store.set_props(draft, {T.PR_SUBJECT: "edited in the store"})
    edited = store.open_message(draft)
    assert not original.unchanged(edited) and mime.original_bytes(edited) is None
    assert b"Subject: edited in the store" in mime.to_bytes(edited)
