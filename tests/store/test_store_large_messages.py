"""Large properties (schema 5): a message's body from codec.STREAM_THRESHOLD up lives in a row of
its own, outside the bag, so claiming, finishing or moving the message never rewrites it; stores
written before schema 5 open with their large bodies moved out, on both stores."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.store.test_store_migrations import read_version

from postroom.mapi import tags as T
from postroom.mapi.message import MessageData, Recipient
from postroom.store import FolderRole, MessageStore, RecipientOutcome, RecipientState, open_store
from postroom.store.codec import STREAM_THRESHOLD, encode_bag
from postroom.store.migrations import LATEST
from postroom.storeadmin import migrate

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DATA = Path(__file__).parent.parent / "data" / "stores"
BIG_TEXT = "".join(f"line {i:05d}: a large body \u00e9\u4e2d\n" for i in range(STREAM_THRESHOLD // 16))
BIG_HTML = b"<p>" + bytes(range(256)) * (STREAM_THRESHOLD // 128) + b"</p>"


def big_message(body: str = BIG_TEXT) -> MessageData:
    rcpt = Recipient(
        props={T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: "a@x.test", T.PR_DISPLAY_NAME: "A", T.PR_RECIPIENT_TYPE: 1}
    )
    return MessageData(props={T.PR_SUBJECT: "big", T.PR_BODY: body, T.PR_HTML: BIG_HTML}, recipients=[rcpt])


@contextmanager
def raw_sql(target: str) -> Iterator[Any]:
    """A connection of its own to the store's database, with `?` placeholders on both."""
    if target.startswith("postgres"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            yield _Qmark(conn)
        return
    db = sqlite3.connect(target, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


class _Qmark:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s").encode(), params)


def stored(target: str, mid: int) -> tuple[int, list[tuple[int, int, int]]]:
    """(the length of the message's bag, its stream rows as (row id, tag, length))."""
    with raw_sql(target) as db:
        bag = db.execute("SELECT length(props) FROM messages WHERE id=?", (mid,)).fetchone()[0]
        rows = db.execute(
            "SELECT id, tag, length(data) FROM message_streams WHERE message_id=? ORDER BY tag", (mid,)
        ).fetchall()
    return int(bag), [(int(a), int(b), int(c)) for a, b, c in rows]


def test_a_large_body_is_stored_outside_the_bag_and_read_back_exactly(store: MessageStore, store_target: str) -> None:
    mid = store.create_and_submit(store.folder(FolderRole.OUTBOX).id, big_message(), NOW)
    bag, streams = stored(store_target, mid)
    assert bag < 2000
    assert [(tag, size) for _, tag, size in streams] == sorted(
        [(T.PR_BODY, len(BIG_TEXT.encode())), (T.PR_HTML, len(BIG_HTML))]
    )
    opened = store.open_message(mid)
    assert opened[T.PR_BODY] == BIG_TEXT and opened[T.PR_HTML] == BIG_HTML and opened[T.PR_SUBJECT] == "big"


def test_claim_finish_and_a_folder_move_never_rewrite_the_body(store: MessageStore, store_target: str) -> None:
    mid = store.create_and_submit(store.folder(FolderRole.OUTBOX).id, big_message(), NOW)
    before = stored(store_target, mid)[1]
    assert store.claim_message("spooler-a", mid, NOW, 60.0)
    store.finish(mid, "spooler-a", NOW + timedelta(seconds=1), [RecipientOutcome(0, RecipientState.DELIVERED, "x")])
    store.move_message(mid, store.folder(FolderRole.SENT_ITEMS).id)
    bag, after = stored(store_target, mid)
    assert after == before and bag < 2000  # the same rows, never deleted and inserted again
    assert store.open_message(mid)[T.PR_BODY] == BIG_TEXT


def test_setting_a_body_moves_it_between_the_bag_and_its_own_row(store: MessageStore, store_target: str) -> None:
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, MessageData(props={T.PR_BODY: "short"}))
    assert stored(store_target, mid)[1] == []
    store.set_props(mid, {T.PR_BODY: BIG_TEXT})
    assert [tag for _, tag, _ in stored(store_target, mid)[1]] == [T.PR_BODY]
    assert store.open_message(mid)[T.PR_BODY] == BIG_TEXT
    store.set_props(mid, {T.PR_BODY: "short again"})
    assert stored(store_target, mid)[1] == []
    assert store.open_message(mid)[T.PR_BODY] == "short again"
    store.set_props(mid, {T.PR_HTML: BIG_HTML})
    store.set_props(mid, {}, delete=[T.PR_HTML])
    assert stored(store_target, mid)[1] == [] and T.PR_HTML not in store.open_message(mid).props


def test_deleting_a_message_deletes_its_body(store: MessageStore, store_target: str) -> None:
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, big_message())
    store.delete_message(mid)
    with raw_sql(store_target) as db:
        assert db.execute("SELECT count(*) FROM message_streams").fetchone()[0] == 0


def test_a_batch_of_large_messages_keeps_each_body_apart(store: MessageStore, store_target: str) -> None:
    bodies = [BIG_TEXT + str(n) for n in range(3)]
    ids = store.create_and_submit_many(store.folder(FolderRole.OUTBOX).id, [big_message(b) for b in bodies], NOW)
    assert ids == sorted(ids) and len(set(ids)) == 3
    for mid, body in zip(ids, bodies, strict=True):
        assert stored(store_target, mid)[0] < 2000
        assert store.open_message(mid)[T.PR_BODY] == body


def test_a_schema_4_sqlite_store_made_by_the_previous_code_opens_with_its_bodies_moved_out(tmp_path: Path) -> None:
    # Written by postroom at schema 4 (the code before this change): the body and PR_HTML in the bag.
    target = tmp_path / "store.sqlite"
    shutil.copy(DATA / "schema4-large-body.sqlite", target)
    assert read_version("sqlite", str(target)) == 4
    store = open_store(str(target))
    try:
        assert read_version("sqlite", str(target)) == LATEST
        opened = store.open_message(1)
        assert opened[T.PR_SUBJECT] == "large, from schema 4"
        expected = "".join(f"line {i:05d} of a large body, made by schema 4 \u00e9\n" for i in range(2000))
        assert opened[T.PR_BODY] == expected
        assert opened[T.PR_HTML] == ("<p>" + "h" * 70 + "</p>\n").encode() * 600
        assert [a.read_all() for a in opened.attachments] == [b"\x00\x01" * 1000]
        assert store.open_message(2)[T.PR_BODY] == "short"
        bag, streams = stored(str(target), 1)
        assert bag < 2000 and sorted(tag for _, tag, _ in streams) == sorted([T.PR_BODY, T.PR_HTML])
        assert [e.id for e in store.queue()] == [1]  # still queued, as it was
    finally:
        store.close()


def test_a_store_at_schema_4_is_migrated_with_its_large_bodies_moved_out(backend: str, store_target: str) -> None:
    store = open_store(store_target)
    mid = store.create_and_submit(store.folder(FolderRole.OUTBOX).id, big_message(), NOW)
    small = store.create_message(store.folder(FolderRole.INBOX).id, MessageData(props={T.PR_BODY: "short"}))
    store.close()
    # As schema 4 left it: everything in the bag, and no message_streams table.
    props = {**big_message().props, T.PR_MESSAGE_CLASS: "IPM.Note"}
    with raw_sql(store_target) as db:
        db.execute("DROP TABLE message_streams")
        db.execute("ALTER TABLE messages DROP COLUMN started")  # schema 7
        db.execute("UPDATE messages SET props=? WHERE id=?", (encode_bag(props), mid))
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", ("4",))
    if backend == "postgres":
        assert migrate(store_target).before == 4
    store = open_store(store_target)
    try:
        assert read_version(backend, store_target) == LATEST
        opened = store.open_message(mid)
        assert opened[T.PR_BODY] == BIG_TEXT and opened[T.PR_HTML] == BIG_HTML
        assert store.open_message(small)[T.PR_BODY] == "short"
        bag, streams = stored(store_target, mid)
        assert bag < 2000 and sorted(tag for _, tag, _ in streams) == sorted([T.PR_BODY, T.PR_HTML])
    finally:
        store.close()
