"""The message store written once in SQL, for SQLite (sqlite.py) and PostgreSQL (postgres.py).

Both stores keep the same tables, the same property bags (codec.encode_bag), times as epoch
seconds and IDs that are never reused, so every operation is the same SQL with the same
meaning. SQLMessageStore holds that logic, written with `?` placeholders (PostgresStore
translates them). A store class adds only what really differs, its dialect:

* connections and transactions: `_tx()` (a write transaction, or a savepoint inside one),
  `_connection()` (for a single read), `_reading()` (for the reads of one open_message),
  batch(), and where notifications wait for a batch's commit (`_held_notes()`);
* `_insert_id()`: an INSERT that returns the new row's ID;
* attachment content: `_write_attachment_data()` and `_blob_opener()`;
* a few pieces of SQL: row locks (`_FOR_UPDATE`, `_SKIP_LOCKED`), the case-insensitive folder
  name match (`_NAME_MATCHES`), and the queue table's subject and To (`_QUEUE_SHOWN`, `_shown()`);
* `_text()`: free text as the database can store it; `_lock_status_rows()` and
  `_lock_transport()`: where writers must take turns beyond what a transaction does.
"""

from __future__ import annotations

import abc
import io
import json
import os
import random
import struct
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, ClassVar, Generic, Protocol, TypeVar, cast

from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from ..mapi.entryid import MAPIUID, make_entry_id
from ..mapi.flags import MAPI_P1, MAPI_SUBMITTED, AttachMethod, MessageFlags, RecipientType, SubmitFlags
from ..mapi.message import Attachment, MessageData, OriginalMime, Props, Recipient
from . import queue_sql
from .activity import LEFT_KINDS, OUTCOME_KINDS, PASS_BUCKETS, RETIRED_PASSES, RETRY_KINDS, PassTotals
from .base import (
    SPECIAL_FOLDER_NAMES,
    ActivityBucket,
    ClaimedMessage,
    DeliveryStats,
    Event,
    EventKind,
    Folder,
    FolderRole,
    LeaseLost,
    MessageStore,
    MessageSummary,
    QueueCounts,
    QueueEntry,
    QueuePage,
    QueueState,
    RecipientMove,
    RecipientOutcome,
    RecipientState,
    RecipientStatus,
    RecipientWait,
    RetryAll,
    SpoolerStats,
    WaitingRecipient,
    WaitKind,
)
from .codec import (
    TemplateBags,
    decode_bag,
    dump_raw,
    encode_bag,
    from_epoch,
    load_raw,
    raw_value,
    split_streams,
    stream_value,
    to_epoch,
    update_raw,
)
from .history_totals import (
    CHART_HORIZON_KEY,
    CHART_MINUTES_KEPT,
    LATENCY,
    LATENCY_BOUNDS,
    MINUTE,
    Tally,
    minutes_upsert,
    one_kind_upsert,
    one_minute_upsert,
    totals_upsert,
)
from .notify import NoteKind
from .queue_sql import due_params, due_sql, next_due_sql
from .receive import normalise_class
from .stats import StatementCount

OFFLINE_EPOCH = 1e15  # "not until a Send/Receive wakes it": far beyond any real time
CHUNK = 1 << 20
USAGE_KEEP_SECONDS = 2 * 86_400.0  # transport_usage rows older than this are pruned (throttles look back a day)
MAX_ID = (1 << 63) - 1  # IDs are signed 64-bit integers in both databases

MESSAGE_ENTRY = b"M"
FOLDER_ENTRY = b"F"

_EVENT_SQL = "INSERT INTO events (message_id, time, kind, transport, detail) VALUES (?, ?, ?, ?, ?)"
_BREAKER_UPSERT = (
    "INSERT INTO breaker_state (transport, state, updated) VALUES (?, ?, ?) "
    "ON CONFLICT (transport) DO UPDATE SET state=excluded.state, updated=excluded.updated"
)
_PASS_UPDATE = "UPDATE spooler_passes SET updated=?, passes=?, seconds=?, buckets=?, throttle_waits=? WHERE owner=?"
_PASS_INSERT = (
    "INSERT INTO spooler_passes (owner, updated, passes, seconds, buckets, throttle_waits, processes) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
#: A spooler process's row not written for this long is folded into RETIRED_PASSES: an hour is
#: many passes of a working daemon, and a process that was only idle loses nothing by it.
PASSES_RETIRE_SECONDS = 3600.0
#: How often (at most) one store object looks for rows to fold, in seconds of the spooler's clock.
PASSES_FOLD_EVERY = 600.0
_SUMMARY_TAGS = (
    T.PR_MESSAGE_CLASS,
    T.PR_SUBJECT,
    T.PR_MESSAGE_FLAGS,
    T.PR_CLIENT_SUBMIT_TIME,
    T.PR_MESSAGE_DELIVERY_TIME,
    T.PR_DISPLAY_TO,
    T.PR_SENDER_NAME,
    T.PR_SENT_REPRESENTING_NAME,
)


class Cursor(Protocol):
    """What the shared code reads from a statement's result."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the shared code uses of a connection: sqlite3's API, SQL with `?` placeholders."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]], /) -> object: ...


DB = TypeVar("DB", bound=Connection)


def valid_id(value: int | None) -> int | None:
    """An ID a row can have, else None (which matches no row: never an overflow in the driver)."""
    return value if value is not None and 0 < value <= MAX_ID else None


def encode_declined(declined: Mapping[str, str]) -> str | None:
    """A recipient's declines as stored: JSON, or NULL for none."""
    return json.dumps(dict(sorted(declined.items()))) if declined else None


def decode_declined(text: str | None) -> dict[str, str]:
    """The stored declines; anything unreadable counts as none (the transport is asked again)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def now_fallback() -> datetime:
    return datetime.now(UTC)


def create_default_folders(db: DB, insert_id: Callable[[DB, str, Sequence[Any]], int]) -> None:
    """A new store's folders: the root, the IPM subtree and the special folders, with the default
    receive folders of §8.4 (IPM, REPORT.* and the empty class to the Inbox; IPC to the root)."""

    def folder(parent: int | None, name: str, role: str) -> int:
        return insert_id(db, "INSERT INTO folders (parent_id, name, role) VALUES (?, ?, ?)", (parent, name, role))

    root = folder(None, "", FolderRole.ROOT.value)
    ipm = folder(root, "Top of Information Store", FolderRole.IPM_SUBTREE.value)
    ids = {role: folder(ipm, name, role.value) for role, name in SPECIAL_FOLDER_NAMES.items()}
    receive = [(cls, ids[FolderRole.INBOX]) for cls in ("", "IPM", "REPORT")] + [("IPC", root)]
    db.executemany("INSERT INTO receive_folders (message_class, folder_id) VALUES (?, ?)", receive)


class SQLMessageStore(MessageStore, Generic[DB]):
    """Every MessageStore operation over SQL; subclasses supply the dialect (see the module's doc)."""

    #: Appended to a SELECT of rows the transaction then changes ("" where a write transaction
    #: already excludes every other writer).
    _FOR_UPDATE: ClassVar[str]
    #: Appended to the SELECT that picks messages to claim: rows being claimed elsewhere are skipped.
    _SKIP_LOCKED: ClassVar[str]
    #: The queue's hot queries name their indexes (queue_sql.py): SQLite plans without statistics.
    _INDEX_HINTS: ClassVar[bool] = False
    #: `f.name` equals the parameter, ASCII letters compared case-insensitively (SQLite's NOCASE).
    _NAME_MATCHES: ClassVar[str]
    #: The queue table's columns for a message's subject and To; `_shown()` reads them.
    _QUEUE_SHOWN: ClassVar[str]
    #: What the driver raises when a row breaks a UNIQUE constraint.
    _integrity_error: ClassVar[type[Exception]]

    _uid: MAPIUID

    #: How many shards this store's history totals are spread over (history_totals.py).
    _TOTAL_SHARDS: ClassVar[int] = 1

    def __init__(self) -> None:
        self._special: dict[FolderRole, Folder] = {}
        self.statements = StatementCount()
        #: The counted events of the transaction open on this thread (`_counting`).
        self._tallies = threading.local()
        self._shard = random.randrange(self._TOTAL_SHARDS)
        #: The totals statements of a commit with events of one kind (_add_one_kind), made once.
        self._one_kind_sql: tuple[str, str] | None = None
        #: owner -> (the totals last written, what of them was folded into RETIRED_PASSES)
        self._passes_written: dict[str, tuple[PassTotals, PassTotals]] = {}
        self._next_fold = 0.0

    # --- the dialect ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _tx(self) -> AbstractContextManager[DB]:
        """One write transaction, all or nothing; inside batch() (or another transaction) a savepoint."""

    @abc.abstractmethod
    def _connection(self) -> AbstractContextManager[DB]:
        """A connection for one read (the current transaction's, if there is one)."""

    def _reading(self) -> AbstractContextManager[DB]:
        """A connection for the several reads of open_message (PostgreSQL: one transaction; SQLite
        reads statement by statement, taking no write lock)."""
        return self._connection()

    @abc.abstractmethod
    def _held_notes(self) -> list[tuple[NoteKind, dict[str, Any]]] | None:
        """The notifications waiting for the current batch to commit (None: not in a batch)."""

    @abc.abstractmethod
    def _insert_id(self, db: DB, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT of one row and return that row's ID."""

    @abc.abstractmethod
    def _write_attachment_data(self, db: DB, mid: int, num: int, stream: IO[bytes], size: int) -> int:
        """Insert an attachment row with `size` bytes of content from `stream`; its ID."""

    @abc.abstractmethod
    def _blob_opener(self, attachment_id: int, size: int) -> Callable[[], IO[bytes]]:
        """Opens an attachment's content for reading, streamed from the store."""

    @abc.abstractmethod
    def _shown(self, columns: Sequence[Any]) -> tuple[str | None, str | None]:
        """The subject and To of a message from its `_QUEUE_SHOWN` columns."""

    @abc.abstractmethod
    def _text(self, value: str | None) -> str | None:
        """Free text (errors, reasons, names, history) as the database can store it."""

    def _lock_status_rows(self, db: DB) -> None:
        """Take turns with other writers of the status rows (a write transaction may be enough)."""

    def _lock_transport(self, db: DB, transport: str) -> None:
        """Take turns with other writers of `transport`'s throttle and breaker (a write transaction may be enough)."""

    # --- plumbing ------------------------------------------------------------------------------
    def _publish(self, kind: NoteKind, **data: Any) -> None:
        """Notify other processes, but only of committed changes."""
        held = self._held_notes()
        if held is not None:
            held.append((kind, data))
        else:
            self.bus.publish(kind, **data)

    def _q(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._connection() as db:
            return db.execute(sql, params).fetchall()

    @property
    def store_uid(self) -> bytes:
        return bytes(self._uid)

    # --- entry IDs -------------------------------------------------------------------------
    def _entry_id(self, kind: bytes, object_id: int) -> bytes:
        return make_entry_id(self._uid, kind + struct.pack("<Q", object_id))

    def _parse_entry_id(self, entry_id: bytes, kind: bytes) -> int | None:
        if len(entry_id) != 29 or entry_id[4:20] != self._uid or entry_id[20:21] != kind:
            return None
        return valid_id(int(struct.unpack("<Q", entry_id[21:29])[0]))

    def entry_id_of(self, message_id: int) -> bytes:
        return self._entry_id(MESSAGE_ENTRY, message_id)

    # --- folders ---------------------------------------------------------------------------
    def _folder(self, row: Sequence[Any]) -> Folder:
        fid, name, parent, role, count = row
        return Folder(
            id=int(fid),
            name=name,
            parent_id=parent,
            role=FolderRole(role) if role else None,
            entry_id=self._entry_id(FOLDER_ENTRY, fid),
            count=count,
        )

    _FOLDER_SQL = (
        "SELECT f.id, f.name, f.parent_id, f.role, "
        "(SELECT count(*) FROM messages m WHERE m.folder_id=f.id) FROM folders f"
    )

    def folders(self) -> list[Folder]:
        return [
            self._folder(r)
            for r in self._q(
                self._FOLDER_SQL + " WHERE f.role IS NULL OR f.role NOT IN ('root', 'ipm_subtree') ORDER BY f.id"
            )
        ]

    def folder(self, role: FolderRole) -> Folder:
        """A special folder by role; cached, as its ID never changes (its count is not kept up to date)."""
        cached = self._special.get(role)
        if cached is None:
            rows = self._q(
                "SELECT f.id, f.name, f.parent_id, f.role, NULL FROM folders f WHERE f.role=?", (role.value,)
            )
            cached = self._special[role] = self._folder(rows[0])
        return cached

    def find_folder(self, name_or_id: str | int | bytes) -> Folder:
        if isinstance(name_or_id, str) and not name_or_id.isdecimal():  # not isdigit(): int("²") fails
            key = name_or_id.strip()
            rows = self._q(
                self._FOLDER_SQL + " WHERE f.role=? OR " + self._NAME_MATCHES + " ORDER BY f.id", (key.lower(), key)
            )
        else:
            fid = (
                self._parse_entry_id(name_or_id, FOLDER_ENTRY)
                if isinstance(name_or_id, bytes)
                else valid_id(int(name_or_id))
            )
            rows = self._q(self._FOLDER_SQL + " WHERE f.id=?", (fid,)) if fid is not None else []
        if not rows:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no folder {name_or_id!r} (see `postroom folders`)")
        return self._folder(rows[0])

    def create_folder(self, name: str, parent_id: int | None = None) -> Folder:
        clean = name.strip()
        if not clean or any(c in clean for c in "\r\n\0/"):
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"invalid folder name {name!r}")
        parent = parent_id if parent_id is not None else self.folder(FolderRole.IPM_SUBTREE).id
        try:
            with self._tx() as db:
                fid = self._insert_id(db, "INSERT INTO folders (parent_id, name) VALUES (?, ?)", (parent, clean))
        except self._integrity_error as exc:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"a folder named {clean!r} exists already") from exc
        return self.find_folder(fid)

    # --- messages: writing -----------------------------------------------------------------
    _BAGS: ClassVar[dict[str, tuple[str, str]]] = {
        "props": ("messages", "id=?"),
        "recipient_props": ("recipients", "message_id=? AND row_id=?"),
        "attachment_props": ("attachments", "id=?"),
    }

    def _insert_props(self, db: DB, table: str, key: tuple[Any, ...], props: Props) -> None:
        """Merge properties into a stored bag (a message's, a recipient's or an attachment's)."""
        self._merge_props(db, table, key, props, ())

    def _merge_props(self, db: DB, table: str, key: tuple[Any, ...], props: Props, delete: Iterable[int]) -> None:
        name, where = self._BAGS[table]
        delete = tuple(delete)
        kept: Mapping[int, Any] = props
        if table == "props":  # a message's: its large properties live apart (message_streams)
            changed = [t for t in (*props, *delete) if T.prop_type(t) in (T.PT_UNICODE, T.PT_STRING8, T.PT_BINARY)]
            if changed:
                db.executemany(
                    "DELETE FROM message_streams WHERE message_id=? AND tag=?", [(key[0], t) for t in changed]
                )
            kept, streams = split_streams(props)
            self._write_streams(db, key[0], streams)
            delete = (*delete, *streams)
        row = db.execute(f"SELECT props FROM {name} WHERE {where}{self._FOR_UPDATE}", key).fetchone()
        raw = load_raw(row[0] if row else None)
        update_raw(raw, kept, delete)
        db.execute(f"UPDATE {name} SET props=? WHERE {where}", (dump_raw(raw), *key))

    def _write_streams(self, db: DB, mid: int, streams: Mapping[int, bytes]) -> None:
        """A message's large properties, each in a row of its own (schema 5)."""
        if streams:
            db.executemany(
                "INSERT INTO message_streams (message_id, tag, data) VALUES (?, ?, ?)",
                [(mid, tag, data) for tag, data in streams.items()],
            )

    def _read_streams(self, db: DB, message_id: int, props: Props) -> None:
        for tag, data in db.execute(
            "SELECT tag, data FROM message_streams WHERE message_id=?", (message_id,)
        ).fetchall():
            props[int(tag)] = stream_value(int(tag), data)

    def _insert_message(
        self,
        db: DB,
        folder_id: int | None,
        message: MessageData,
        submit_at: datetime | None = None,
        encoded: _EncodedMessage | None = None,
    ) -> int:
        """Insert a whole message; with `submit_at` it goes in already submitted (one INSERT per table).
        `encoded` is the message's `_EncodedMessage`, when the caller made it before the transaction."""
        if encoded is None:
            encoded = _EncodedMessage.of(message, submit_at)
        due = encoded.due
        mid = self._insert_id(
            db,
            "INSERT INTO messages (folder_id, props, queue_state, submit_time, next_attempt, wait_kind) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                folder_id,
                encoded.bag,
                "queued" if submit_at else None,
                to_epoch(submit_at),
                due,
                WaitKind.SCHEDULED.value if due else None,
            ),
        )
        self._write_streams(db, mid, encoded.streams)
        self._insert_recipient_rows(db, mid, encoded.recipients)
        for att in message.attachments:
            self._insert_attachment(db, mid, att)
        if message.original is not None:
            self._insert_original(db, mid, message.original)
        if submit_at is not None:
            self._event(db, mid, submit_at, EventKind.SUBMITTED, encoded.detail)
        return mid

    def _insert_recipients(self, db: DB, mid: int, recipients: Sequence[Recipient], submitted: bool = False) -> None:
        self._insert_recipient_rows(db, mid, _recipient_rows(recipients, submitted, encode_bag))

    def _insert_recipient_rows(self, db: DB, mid: int, rows: Sequence[tuple[int, str, str, int]]) -> None:
        db.executemany(
            "INSERT INTO recipients (message_id, row_id, props, state, reported) VALUES (?, ?, ?, ?, ?)",
            [(mid, *row) for row in rows],
        )

    @abc.abstractmethod
    def _reserve_message_ids(self, db: DB, count: int) -> list[int]:
        """`count` new message IDs, in increasing order, that no other writer can take."""

    def create_and_submit_many(self, folder_id: int, messages: Sequence[MessageData], now: datetime) -> list[int]:
        """Save and submit new messages in one transaction, with one statement per table.

        Messages that differ only in subject and recipients (one message to many people) share
        their encoded bag (codec.TemplateBags). One with attachments or original MIME bytes goes
        the one-message way, inside the same transaction.
        """
        if not messages:
            return []
        if any(m.attachments or m.original is not None for m in messages):
            with self._tx() as db:
                ids = [self._insert_message(db, folder_id, m, submit_at=now) for m in messages]
        else:
            ids = self._insert_plain_batch(folder_id, messages, now)
        self._publish(NoteKind.SUBMITTED, message_id=ids[0], count=len(ids))
        return ids

    def _insert_plain_batch(self, folder_id: int, messages: Sequence[MessageData], now: datetime) -> list[int]:
        bags = TemplateBags(_OWN_TAGS)
        recipient_bags = _LastBag()
        submit_time = to_epoch(now)
        message_rows: list[tuple[Any, ...]] = []
        stream_rows: list[tuple[int, int, bytes]] = []
        recipient_rows: list[tuple[Any, ...]] = []
        event_rows: list[tuple[Any, ...]] = []
        prepared = []
        for message in messages:
            if not message.recipients:
                raise MAPIError(HResult.MAPI_E_NO_RECIPIENTS, "the message has no recipients")
            prepared.append(_message_props(message, now))
        with self._tx() as db:
            ids = self._reserve_message_ids(db, len(messages))
            for mid, message, (props, due) in zip(ids, messages, prepared, strict=True):
                bag, streams = split_streams(props)
                stream_rows.extend((mid, tag, data) for tag, data in streams.items())
                message_rows.append(
                    (
                        mid,
                        folder_id,
                        bags.encode(bag),
                        submit_time,
                        due,
                        WaitKind.SCHEDULED.value if due else None,
                    )
                )
                recipient_rows.extend((mid, *row) for row in _recipient_rows(message.recipients, True, recipient_bags))
                event_rows.append(
                    (mid, submit_time, EventKind.SUBMITTED.value, None, _submitted_detail(props, message, due))
                )
            db.executemany(
                "INSERT INTO messages (id, folder_id, props, queue_state, submit_time, next_attempt, wait_kind) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                message_rows,
            )
            db.executemany(
                "INSERT INTO recipients (message_id, row_id, props, state, reported) VALUES (?, ?, ?, ?, ?)",
                recipient_rows,
            )
            if stream_rows:
                db.executemany("INSERT INTO message_streams (message_id, tag, data) VALUES (?, ?, ?)", stream_rows)
            db.executemany(_EVENT_SQL, event_rows)
            self._count_history(db, event_rows)
        return ids

    def _insert_attachment(self, db: DB, mid: int, att: Attachment, num: int | None = None) -> int:
        if num is None:
            row = db.execute("SELECT coalesce(max(num) + 1, 0) FROM attachments WHERE message_id=?", (mid,)).fetchone()
            num = int(row[0])
        props = dict(att.props)
        props[T.PR_ATTACH_NUM] = num
        if att.embedded is not None:
            inner = self._insert_message(db, None, att.embedded)
            props[T.PR_ATTACH_METHOD] = int(AttachMethod.EMBEDDED_MSG)
            aid = self._insert_id(
                db, "INSERT INTO attachments (message_id, num, embedded_id) VALUES (?, ?, ?)", (mid, num, inner)
            )
            db.execute("UPDATE messages SET parent_attach=? WHERE id=?", (aid, inner))
        else:
            props.setdefault(T.PR_ATTACH_METHOD, int(AttachMethod.BY_VALUE))
            with att.open() as stream:
                size = stream_size(stream, att.size)
                aid = self._write_attachment_data(db, mid, num, stream, size)
            props[T.PR_ATTACH_SIZE] = size
        db.execute("UPDATE attachments SET props=? WHERE id=?", (encode_bag(props), aid))
        return num

    def _insert_original(self, db: DB, mid: int, original: OriginalMime) -> None:
        """The message's original MIME stream (schema 4), in a table of its own: loading the
        message reads only its size and fingerprint."""
        data = original.read_all()
        db.execute(
            "INSERT INTO mime_originals (message_id, fingerprint, size, data) VALUES (?, ?, ?, ?)",
            (mid, original.fingerprint, len(data), data),
        )

    def _original_opener(self, message_id: int) -> Callable[[], IO[bytes]]:
        def opener() -> IO[bytes]:
            rows = self._q("SELECT data FROM mime_originals WHERE message_id=?", (message_id,))
            if not rows:
                raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"message {message_id} has no original MIME stream")
            return io.BytesIO(bytes(rows[0][0]))

        return opener

    def create_message(self, folder_id: int, message: MessageData) -> int:
        encoded = _EncodedMessage.of(message, None)  # before the transaction (create_and_submit says why)
        with self._tx() as db:
            return self._insert_message(db, folder_id, message, encoded=encoded)

    def import_message(self, folder_id: int, message: MessageData, key: str) -> int | None:
        # The key lives in `meta` ('import:<key>' -> message ID), which both stores have since
        # schema 1: no migration. A key whose message was deleted since is taken again, so
        # deleting an imported message and importing it once more brings it back.
        #
        # The key is claimed before the message is saved: on PostgreSQL a second import of the
        # same key waits on the first one's uncommitted row (the unique key), then finds it. A
        # SELECT ... FOR UPDATE alone locks nothing while the key is new, and both would save.
        name = "import:" + key
        with self._tx() as db:
            claimed = db.execute(
                "INSERT INTO meta (key, value) VALUES (?, '') ON CONFLICT (key) DO NOTHING", (name,)
            ).rowcount
            if not claimed:
                row = db.execute(f"SELECT value FROM meta WHERE key=?{self._FOR_UPDATE}", (name,)).fetchone()
                if (
                    row is not None
                    and row[0]
                    and db.execute("SELECT 1 FROM messages WHERE id=?", (int(row[0]),)).fetchone()
                ):
                    return None
            mid = self._insert_message(db, folder_id, message)
            db.execute("UPDATE meta SET value=? WHERE key=?", (str(mid), name))
        return mid

    def _check_modifiable(self, db: DB, message_id: int) -> None:
        row = db.execute(f"SELECT queue_state FROM messages WHERE id=?{self._FOR_UPDATE}", (message_id,)).fetchone()
        if row is None:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {message_id}")
        if row[0] == QueueState.QUEUED.value or row[0] == QueueState.HELD.value:
            raise MAPIError(HResult.MAPI_E_SUBMITTED, f"message {message_id} was submitted and is read-only")

    def set_props(self, message_id: int, props: Props, delete: Iterable[int] = ()) -> None:
        with self._tx() as db:
            self._check_modifiable(db, message_id)
            self._merge_props(db, "props", (message_id,), props, delete)

    def set_recipients(self, message_id: int, recipients: Sequence[Recipient]) -> None:
        """Replace the recipient table of an unsubmitted message (ModifyRecipients)."""
        with self._tx() as db:
            self._check_modifiable(db, message_id)
            db.execute("DELETE FROM recipients WHERE message_id=?", (message_id,))
            self._insert_recipients(db, message_id, recipients)
            props = self._load_props(db, message_id)
            refresh_display_lists(props, recipients)
            self._insert_props(
                db, "props", (message_id,), {t: props[t] for t in (T.PR_DISPLAY_TO, T.PR_DISPLAY_CC, T.PR_DISPLAY_BCC)}
            )

    def add_attachment(self, message_id: int, props: Props, content: IO[bytes] | bytes, size: int | None = None) -> int:
        att = Attachment(props=dict(props), data=content if isinstance(content, bytes) else None, size=size)
        if not isinstance(content, bytes):
            stream = content
            att.opener = lambda: cast(IO[bytes], NoClose(stream))
        with self._tx() as db:
            self._check_modifiable(db, message_id)
            num = self._insert_attachment(db, message_id, att)
            flags = self._load_props(db, message_id).get(T.PR_MESSAGE_FLAGS, 0)
            self._insert_props(
                db,
                "props",
                (message_id,),
                {T.PR_MESSAGE_FLAGS: int(flags) | MessageFlags.HASATTACH, T.PR_HASATTACH: True},
            )
            return num

    # --- messages: reading -----------------------------------------------------------------
    def _load_props(self, db: DB, message_id: int) -> Props:
        row = db.execute("SELECT props FROM messages WHERE id=?", (message_id,)).fetchone()
        return decode_bag(row[0]) if row else {}

    def _load_message(self, db: DB, message_id: int) -> MessageData:
        row = db.execute(
            "SELECT queue_state, lease_owner, lease_until, props FROM messages WHERE id=?", (message_id,)
        ).fetchone()
        if row is None:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {message_id}")
        recipients = db.execute(
            "SELECT row_id, props FROM recipients WHERE message_id=? ORDER BY row_id", (message_id,)
        ).fetchall()
        attachments = db.execute(
            "SELECT id, num, embedded_id, length(data), props FROM attachments WHERE message_id=? ORDER BY num",
            (message_id,),
        ).fetchall()
        original = db.execute(
            "SELECT fingerprint, size FROM mime_originals WHERE message_id=?", (message_id,)
        ).fetchone()
        streams = db.execute("SELECT tag, data FROM message_streams WHERE message_id=?", (message_id,)).fetchall()
        return self._message_of(db, message_id, row[0], row[1], row[3], recipients, attachments, original, streams)

    def _message_of(
        self,
        db: DB,
        message_id: int,
        queue_state: str | None,
        lease_owner: str | None,
        bag: str,
        recipient_rows: Sequence[Sequence[Any]],
        attachment_rows: Sequence[Sequence[Any]],
        original: Sequence[Any] | None,
        streams: Sequence[Sequence[Any]] = (),
    ) -> MessageData:
        """A message from its rows: (row_id, props) per recipient, (id, num, embedded_id, size,
        props) per attachment, (fingerprint, size) of its original MIME, (tag, data) per property kept
        outside the bag (message_streams). Read one message at a time
        (_load_message) or a batch at once (load_claimed)."""
        props = decode_bag(bag)
        for tag, data in streams:
            props[int(tag)] = stream_value(int(tag), data)
        props[T.PR_ENTRYID] = self.entry_id_of(message_id)
        props[T.PR_RECORD_KEY] = props[T.PR_ENTRYID]
        submit_flags = SubmitFlags.LOCKED if lease_owner is not None else SubmitFlags.NONE
        if queue_state is not None or submit_flags:
            props[T.PR_SUBMIT_FLAGS] = int(submit_flags)
        recipients: dict[int, Recipient] = {
            int(rid): Recipient(props=decode_bag(rbag), row_id=int(rid)) for rid, rbag in recipient_rows
        }
        for rec in recipients.values():
            rec.props[T.PR_ROWID] = rec.row_id
        attachments = []
        for aid, num, embedded_id, size, abag in attachment_rows:
            att = Attachment(props=decode_bag(abag), num=num, size=size)
            if embedded_id is not None:
                att.embedded = self._load_message(db, embedded_id)
            else:
                att.opener = self._blob_opener(int(aid), int(size or 0))
            attachments.append(att)
        return MessageData(
            props=props,
            recipients=list(recipients.values()),
            attachments=attachments,
            original=None
            if original is None
            else OriginalMime(str(original[0]), int(original[1]), opener=self._original_opener(message_id)),
        )

    def open_message(self, message_id: int) -> MessageData:
        if valid_id(message_id) is None:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {message_id}")
        with self._reading() as db:
            return self._load_message(db, message_id)

    def list_messages(self, folder_id: int, limit: int | None = None) -> list[MessageSummary]:
        sql = "SELECT m.id, m.folder_id, m.props FROM messages m WHERE m.folder_id=? ORDER BY m.id" + (
            " LIMIT ?" if limit is not None else ""
        )
        params: list[Any] = [folder_id] + ([limit] if limit is not None else [])
        out = []
        for mid, fid, bag in self._q(sql, params):
            props = decode_bag(bag)
            cls, subject, flags, submit, delivery, to, sender, rep = (props.get(t) for t in _SUMMARY_TAGS)
            out.append(
                MessageSummary(
                    id=int(mid),
                    folder_id=fid,
                    entry_id=self.entry_id_of(mid),
                    message_class=cls or "IPM.Note",
                    subject=subject or "",
                    flags=flags or 0,
                    submit_time=submit,
                    delivery_time=delivery,
                    display_to=to or "",
                    sender=rep or sender or "",
                )
            )
        return out

    def message_folder(self, message_id: int) -> int | None:
        rows = self._q("SELECT folder_id FROM messages WHERE id=?", (valid_id(message_id),))
        if not rows:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {message_id}")
        return None if rows[0][0] is None else int(rows[0][0])

    def resolve_message(self, ref: str | int | bytes) -> int:
        mid: int | None
        if isinstance(ref, bytes):
            mid = self._parse_entry_id(ref, MESSAGE_ENTRY)
        elif isinstance(ref, int) or ref.strip().isdecimal():  # not isdigit(): int("²") fails
            mid = valid_id(int(ref))
        else:
            try:
                mid = self._parse_entry_id(bytes.fromhex(ref.strip()), MESSAGE_ENTRY)
            except ValueError:
                mid = None
        if mid is None or not self._q("SELECT 1 FROM messages WHERE id=? AND folder_id IS NOT NULL", (mid,)):
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {ref!r} in this store")
        return mid

    def _delete(self, db: DB, message_id: int) -> None:
        # The outer message first (its recipient and attachment rows go with it), then the embedded
        # messages those attachments pointed at: the other order breaks the attachments' foreign key.
        embedded = [
            int(e)
            for (e,) in db.execute(
                "SELECT embedded_id FROM attachments WHERE message_id=? AND embedded_id IS NOT NULL", (message_id,)
            ).fetchall()
        ]
        db.execute("DELETE FROM messages WHERE id=?", (message_id,))
        for inner in embedded:
            self._delete(db, inner)

    def delete_message(self, message_id: int) -> None:
        with self._tx() as db:
            row = db.execute(
                f"SELECT lease_owner FROM messages WHERE id=?{self._FOR_UPDATE}", (valid_id(message_id),)
            ).fetchone()
            if row is None:
                raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {message_id}")
            if row[0] is not None:
                raise MAPIError(HResult.MAPI_E_NO_ACCESS, f"message {message_id} is locked by the spooler")
            self._delete(db, message_id)

    def move_message(self, message_id: int, folder_id: int) -> None:
        with self._tx() as db:
            self._check_modifiable(db, message_id)
            db.execute("UPDATE messages SET folder_id=? WHERE id=?", (folder_id, message_id))

    # --- submission --------------------------------------------------------------------------
    def submit(self, message_id: int, now: datetime, stamp: Props | None = None) -> None:
        with self._tx() as db:
            self._submit_in(db, message_id, now, stamp)
        self._publish(NoteKind.SUBMITTED, message_id=message_id)

    def create_and_submit(self, folder_id: int, message: MessageData, now: datetime) -> int:
        """Save and submit a new message in one transaction (one durable commit). Its rows are
        encoded first: the write transaction, which other writers wait for, holds only the statements."""
        encoded = _EncodedMessage.of(message, now)
        with self._tx() as db:
            mid = self._insert_message(db, folder_id, message, submit_at=now, encoded=encoded)
        self._publish(NoteKind.SUBMITTED, message_id=mid)
        return mid

    def _submit_in(self, db: DB, message_id: int, now: datetime, stamp: Props | None) -> None:
        self._check_modifiable(db, message_id)
        if stamp:
            self._insert_props(db, "props", (message_id,), stamp)
        rows = db.execute("SELECT row_id, props FROM recipients WHERE message_id=?", (message_id,)).fetchall()
        if not rows:
            raise MAPIError(HResult.MAPI_E_NO_RECIPIENTS, f"message {message_id} has no recipients")
        props = self._load_props(db, message_id)
        flags = int(props.get(T.PR_MESSAGE_FLAGS, 0))
        flags = (flags | MessageFlags.SUBMIT | MessageFlags.UNSENT) & ~MessageFlags.UNMODIFIED
        props[T.PR_MESSAGE_FLAGS] = flags
        props[T.PR_CLIENT_SUBMIT_TIME] = now
        db.execute("UPDATE messages SET props=? WHERE id=?", (encode_bag(props), message_id))
        # PR_RESPONSIBILITY FALSE everywhere, except rows already delivered (MAPI_SUBMITTED, §6.5).
        updates = []
        for rid, bag in rows:
            row_props = decode_bag(bag)
            submitted = bool(int(row_props.get(T.PR_RECIPIENT_TYPE, 1)) & MAPI_SUBMITTED)
            row_props[T.PR_RESPONSIBILITY] = submitted
            updates.append(
                ("delivered" if submitted else "pending", 1 if submitted else 0, encode_bag(row_props), message_id, rid)
            )
        db.executemany(
            "UPDATE recipients SET state=?, transport=NULL, outcome_time=NULL, reported=?, props=? "
            "WHERE message_id=? AND row_id=?",
            updates,
        )
        deferred = props.get(T.PR_DEFERRED_SEND_TIME)
        due = to_epoch(deferred) if isinstance(deferred, datetime) and deferred > now else None
        db.execute(
            "UPDATE messages SET queue_state='queued', submit_time=?, next_attempt=?, attempts=0, last_error=NULL, "
            "wait_kind=?, lease_owner=NULL, lease_until=NULL, first_try=NULL, failures=0 WHERE id=?",
            (to_epoch(now), due, WaitKind.SCHEDULED.value if due else None, message_id),
        )
        self._event(
            db,
            message_id,
            now,
            EventKind.SUBMITTED,
            f"{len(rows)} recipient(s)" + (f", not before {deferred.isoformat()}" if due and deferred else ""),
        )

    def _queued(self, db: DB, message_id: int, columns: str = "queue_state, lease_owner", why: str = "") -> Any:
        """A queued message's `columns` (queue_state first), locked for this transaction; else MAPI_E_NOT_IN_QUEUE."""
        row = db.execute(
            f"SELECT {columns} FROM messages WHERE id=?{self._FOR_UPDATE}", (valid_id(message_id),)
        ).fetchone()
        if row is None or row[0] is None:
            raise MAPIError(HResult.MAPI_E_NOT_IN_QUEUE, f"message {message_id} is not in the outgoing queue{why}")
        return row

    def _locked_now(self, db: DB, message_id: int, owner: str | None, now: datetime) -> bool:
        """Whether a live claim holds the message. A claim whose lease ran out is being taken back:
        an operator's command may take it over at once (its holder stopped, or lost its turn)."""
        if owner is None:
            return False
        row = db.execute("SELECT lease_until FROM messages WHERE id=?", (message_id,)).fetchone()
        return row is None or row[0] is None or float(row[0]) >= (to_epoch(now) or 0.0)

    def abort_submit(self, message_id: int, now: datetime) -> None:
        with self._tx() as db:
            _, owner = self._queued(db, message_id, why=" (already sent, or never submitted)")
            if self._locked_now(db, message_id, owner, now):
                raise MAPIError(
                    HResult.MAPI_E_UNABLE_TO_ABORT,
                    f"message {message_id} is locked by spooler {owner} and cannot be aborted now",
                )
            props = self._load_props(db, message_id)
            flags = int(props.get(T.PR_MESSAGE_FLAGS, 0)) & ~MessageFlags.SUBMIT
            self._insert_props(db, "props", (message_id,), {T.PR_MESSAGE_FLAGS: flags})
            db.execute(
                "UPDATE messages SET queue_state=NULL, next_attempt=NULL, lease_owner=NULL, lease_until=NULL "
                "WHERE id=?",
                (message_id,),
            )
            taken = f"; taken back from spooler {owner}, whose lease had run out" if owner else ""
            self._event(db, message_id, now, EventKind.ABORTED, f"submission aborted (AbortSubmit){taken}")
        self._publish(NoteKind.QUEUE, message_id=message_id, aborted=True)  # for a live status page, as hold()

    def give_back(self, message_id: int, owner: str, now: datetime, reason: str, outcome_unknown: bool) -> None:
        """An interrupted spooler returns a claimed message, due at once. With `outcome_unknown` (a
        transport call was cut short) the next claim treats it as taken over from a crashed spooler,
        so the profile's crash_policy decides whether it is sent again."""
        with self._tx() as db:
            self._check_owner(db, message_id, owner)
            db.execute(
                "UPDATE messages SET lease_owner=NULL, lease_until=NULL, next_attempt=NULL, wait_kind=NULL, "
                "prev_owner=?, started=? WHERE id=?",  # started=2: see queue_sql.CLAIM_SET
                (self._text(owner) if outcome_unknown else None, 2 if outcome_unknown else 0, message_id),
            )
            self._event(db, message_id, now, EventKind.GIVEN_BACK, reason)
        self._publish(NoteKind.QUEUE, message_id=message_id)

    # --- the outgoing queue ------------------------------------------------------------------
    def queue(self, only: int | None = None) -> list[QueueEntry]:
        if only is not None and valid_id(only) is None:
            return []
        if only is not None:
            return self._queue_rows("m.id = ?", (only,), "")
        return self._queue_rows("TRUE", (), " ORDER BY m.submit_time, m.id")

    def _queue_rows(self, where: str, params: Sequence[Any], tail: str) -> list[QueueEntry]:
        """The queue entries of the queued messages `where` picks (ordered and limited by `tail`)."""
        sql = (
            "SELECT m.id, m.queue_state, m.submit_time, m.next_attempt, m.lease_owner, m.attempts, m.last_error, "
            "m.wait_kind, m.prev_owner, m.hold_reason, m.lease_until, m.first_try, m.failures, "
            + self._QUEUE_SHOWN
            + ", (SELECT count(*) FROM recipients r WHERE r.message_id=m.id AND r.state='pending'), "
            "(SELECT count(*) FROM recipients r WHERE r.message_id=m.id) "
            f"FROM messages m WHERE m.queue_state IS NOT NULL AND {where}{tail}"
        )
        rows = self._q(sql, params)
        ids = [int(r[0]) for r in rows]
        transports: dict[int, list[str]] = {}
        if ids:
            # A page names its messages; the whole queue is read in one join (too many to name).
            marks = ", ".join("?" for _ in ids)
            picked = f"r.message_id IN ({marks})" if len(ids) <= 1000 else "m.queue_state IS NOT NULL"
            for mid, name in self._q(
                "SELECT r.message_id, r.waiting_for FROM recipients r JOIN messages m ON m.id = r.message_id "
                f"WHERE {picked} AND r.state = 'pending' AND r.waiting_for IS NOT NULL "
                "ORDER BY r.message_id, r.row_id",
                ids if len(ids) <= 1000 else (),
            ):
                names = transports.setdefault(int(mid), [])
                if name not in names:
                    names.append(name)
        out = []
        for row in rows:
            mid, state, submit, nxt, owner, attempts, error, kind, prev, hold, until, first, failures = row[:13]
            *shown, pending, total = row[13:]
            subject, to = self._shown(shown)
            out.append(
                QueueEntry(
                    id=int(mid),
                    entry_id=self.entry_id_of(mid),
                    subject=subject or "",
                    display_to=to or "",
                    submit_time=from_epoch(submit),
                    state=QueueState(state),
                    locked=owner is not None,
                    lease_owner=owner,
                    attempts=attempts,
                    next_attempt=None if kind == WaitKind.SEND_RECEIVE.value else from_epoch(nxt),
                    last_error=error,
                    waiting_for=WaitKind(kind) if kind else None,
                    previous_owner=prev,
                    hold_reason=hold,
                    pending=int(pending),
                    recipients=int(total),
                    waiting_transports=tuple(transports.get(int(mid), ())),
                    lease_until=from_epoch(until) if owner is not None else None,
                    first_try=from_epoch(first),
                    failures=int(failures or 0),
                )
            )
        return out

    def queue_page(
        self,
        after: int | None,
        limit: int,
        state: QueueState | None = None,
        transport: str | None = None,
        text: str | None = None,
    ) -> QueuePage:
        """Up to `limit` queued messages after message `after` in queue order (submit time, ID).

        Keyset paging: each page starts where the last one ended through the queue_by_submit index
        (schema 5), so the 1,000th page costs what the first does. A `text` filter (subject, To,
        last reply) is applied to the rows read, batch by batch, until the page is full."""
        where, params = ["TRUE"], []
        if after is not None:
            cursor = self._q("SELECT submit_time FROM messages WHERE id = ?", (valid_id(after) or 0,))
            if cursor:
                where.append("(m.submit_time > ? OR (m.submit_time = ? AND m.id > ?))")
                params += [cursor[0][0], cursor[0][0], after]
        if state is not None:
            where.append("m.queue_state = ?")
            params.append(QueueState(state).value)
        if transport:
            where.append(
                "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = 'pending' "
                "AND lower(r.waiting_for) = ?)"
            )
            params.append(transport.lower())
        needle = (text or "").casefold()
        if needle.isascii() and needle.isprintable() and not any(c in needle for c in '"\\'):
            # The subject and To are in the message's property bag, stored as JSON text that keeps
            # such a needle as it is: a LIKE over the bag narrows the rows in the database, and
            # the check below keeps only those whose subject, To or last reply holds it.
            like = "%" + needle.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
            where.append("(lower(m.props) LIKE ? ESCAPE '!' OR lower(coalesce(m.last_error, '')) LIKE ? ESCAPE '!')")
            params += [like, like]
        found: list[QueueEntry] = []
        batch = limit + 1 if not needle else max(200, limit * 4)
        while True:
            rows = self._queue_rows(" AND ".join(where), params, f" ORDER BY m.submit_time, m.id LIMIT {int(batch)}")
            for entry in rows:
                haystack = f"{entry.subject}\n{entry.display_to}\n{entry.last_error or ''}".casefold()
                if needle and needle not in haystack:
                    continue
                found.append(entry)
                if len(found) > limit:
                    return QueuePage(found[:limit], found[limit - 1].id)
            if len(rows) < batch:
                return QueuePage(found, None)
            last = rows[-1]
            t = to_epoch(last.submit_time)
            keyset = "(m.submit_time > ? OR (m.submit_time = ? AND m.id > ?))"
            if where[1:2] == [keyset]:  # the cursor is always the first condition after TRUE
                where, params = [where[0], *where[2:]], params[3:]
            where = [where[0], keyset, *where[1:]]
            params = [t, t, last.id, *params]

    def queue_counts(self) -> QueueCounts:
        """Queued messages by state, by the transport their pending recipients wait for, and both."""
        both: dict[tuple[str, str], int] = {}
        for state, name, count in self._q(
            "SELECT m.queue_state, coalesce(lower(r.waiting_for), ''), count(DISTINCT m.id) FROM messages m "
            "LEFT JOIN recipients r ON r.message_id = m.id AND r.state = 'pending' "
            "WHERE m.queue_state IS NOT NULL GROUP BY m.queue_state, coalesce(lower(r.waiting_for), '')"
        ):
            both[(str(state), str(name))] = int(count)
        by_state: dict[str, int] = {}
        for state, count in self._q(
            "SELECT queue_state, count(*) FROM messages WHERE queue_state IS NOT NULL GROUP BY queue_state"
        ):
            by_state[str(state)] = int(count)
        by_transport: dict[str, int] = {}
        for (_, name), count in both.items():
            if name:
                by_transport[name] = by_transport.get(name, 0) + count
        oldest = self._q("SELECT min(submit_time) FROM messages WHERE queue_state IS NOT NULL")
        return QueueCounts(by_state, by_transport, both, from_epoch(oldest[0][0]) if oldest else None)

    def activity(self, since: datetime, until: datetime, step_seconds: int) -> list[ActivityBucket]:
        """Outcomes recorded by every process in each `step_seconds` from `since`, and the queue's
        depth at the end of each step (submitted minus left the queue).

        When `since`, `until` and the step are whole minutes (the status page asks so), the answer
        is read from the per-minute totals: as many rows as minutes from `since` on, however long
        the history. Other times are answered from the history itself, which costs as much as its
        length."""
        start, end = to_epoch(since), to_epoch(until)
        assert start is not None and end is not None
        step = max(1, int(step_seconds))
        if start % MINUTE or end % MINUTE or step % MINUTE:
            return self._activity_from_history(since, start, end, step)
        count = max(1, int((end - start + step - 1) // step))
        delivered, failed, change = [0] * count, [0] * count, [0] * count
        with self._connection() as db:
            horizon = self._chart_horizon(db)
        if int(start) // MINUTE < horizon:  # the minute rows it needs were deleted (_prune_chart_minutes)
            return self._activity_from_history(since, start, end, step)
        with self._reading() as db:
            # The depth before `since`: every submission minus every exit, less those from `since` on.
            depth = 0
            for counter, n in db.execute(
                f"SELECT counter, sum(n) FROM history_totals WHERE counter IN ('submitted', {_LEFT}) "
                "AND slot = 0 GROUP BY counter"
            ).fetchall():
                depth += int(n) if counter == "submitted" else -int(n)
            for minute, d, f, s, gone in db.execute(
                "SELECT minute, sum(delivered), sum(failed), sum(submitted), sum(left_queue) FROM history_minutes "
                "WHERE minute >= ? GROUP BY minute",
                (int(start) // MINUTE,),
            ).fetchall():
                depth -= int(s) - int(gone)
                t = int(minute) * MINUTE
                if t < end:
                    i = min(count - 1, int((t - start) // step))
                    delivered[i] += int(d)
                    failed[i] += int(f)
                    change[i] += int(s) - int(gone)
        return _buckets(since, start, step, depth, delivered, failed, change)

    def _activity_from_history(self, since: datetime, start: float, end: float, step: int) -> list[ActivityBucket]:
        """activity() for times that are not whole minutes: a scan of the history by time."""
        outcomes = ", ".join(f"'{k}'" for k in OUTCOME_KINDS)
        before = self._q(
            f"SELECT sum(CASE WHEN kind = 'submitted' THEN 1 WHEN kind IN ({_LEFT}) THEN -1 ELSE 0 END) "
            f"FROM events WHERE time < ? AND kind IN ('submitted', {_LEFT})",
            (start,),
        )
        depth = int(before[0][0] or 0) if before else 0
        count = max(1, int((end - start + step - 1) // step))
        delivered, failed, change = [0] * count, [0] * count, [0] * count
        for t, kind in self._q(
            "SELECT time, kind FROM events WHERE time >= ? AND time < ? "
            f"AND kind IN ('submitted', {_LEFT}, {outcomes})",
            (start, end),
        ):
            i = min(count - 1, int((float(t) - start) // step))
            if kind == "delivered":
                delivered[i] += 1
            elif kind in OUTCOME_KINDS:
                failed[i] += 1
            elif kind == "submitted":
                change[i] += 1
            else:
                change[i] -= 1
        return _buckets(since, start, step, depth, delivered, failed, change)

    def delivery_stats(self, latency_bounds: Sequence[float] = ()) -> DeliveryStats:
        """Totals of the whole history, read from its running totals (history_totals.py): outcomes and
        retries by transport, inbound, and a histogram of the latencies from submission to outcome
        over `latency_bounds` (seconds). Bounds that are all among the kept ones (LATENCY_BOUNDS, what
        /metrics shows) cost a read of a few rows; others are measured from the history itself."""
        by_outcome: dict[tuple[str, str], int] = {}
        by_retry: dict[str, int] = {}
        operator = inbound = 0
        #: transport -> [events in each kept latency bucket, then above them], and their seconds
        slots: dict[str, list[int]] = {}
        seconds: dict[str, float] = {}
        above = len(LATENCY_BOUNDS)
        for counter, name, slot, n, total in self._q(
            "SELECT counter, transport, slot, sum(n), sum(total) FROM history_totals GROUP BY counter, transport, slot"
        ):
            kind, name, n = str(counter), str(name), int(n)
            if kind in OUTCOME_KINDS:
                by_outcome[(name, kind)] = n
            elif kind in RETRY_KINDS:
                by_retry[name] = by_retry.get(name, 0) + n
            elif kind == "retry":
                operator += n
            elif kind == "received":
                inbound += n
            elif kind == LATENCY and 0 <= int(slot) <= above:
                slots.setdefault(name, [0] * (above + 1))[int(slot)] += n
                seconds[name] = seconds.get(name, 0.0) + float(total or 0.0)
        bounds = tuple(float(b) for b in latency_bounds)
        kept = {b: i for i, b in enumerate(LATENCY_BOUNDS)}
        if any(b not in kept for b in bounds):
            buckets, counts, sums = self._latency_from_history(bounds)
        else:
            buckets, counts, sums = {}, {}, {}
            for name, per_slot in slots.items():
                below = [sum(per_slot[: kept[b] + 1]) for b in bounds]
                buckets[name], counts[name], sums[name] = below, sum(per_slot), max(0.0, seconds[name])
        return DeliveryStats(by_outcome, by_retry, operator, inbound, bounds, buckets, counts, sums)

    def _latency_from_history(
        self, bounds: Sequence[float]
    ) -> tuple[dict[str, list[int]], dict[str, int], dict[str, float]]:
        """The latency histogram over bounds the totals do not keep, measured from the whole history."""
        outcomes = ", ".join(f"'{k}'" for k in OUTCOME_KINDS)
        under = "".join(f", sum(CASE WHEN lat <= {b!r} THEN 1 ELSE 0 END)" for b in bounds)
        buckets: dict[str, list[int]] = {}
        counts: dict[str, int] = {}
        sums: dict[str, float] = {}
        for name, count, total, *below in self._q(
            f"SELECT name, count(*), sum(lat){under} FROM "
            "(SELECT coalesce(lower(e.transport), '') AS name, e.time - s.first AS lat FROM events e JOIN "
            "(SELECT message_id, min(time) AS first FROM events WHERE kind = 'submitted' GROUP BY message_id) s "
            f"ON s.message_id = e.message_id WHERE e.kind IN ({outcomes})) t GROUP BY name"
        ):
            buckets[str(name)] = [int(n or 0) for n in below]
            counts[str(name)] = int(count)
            sums[str(name)] = max(0.0, float(total or 0.0))
        return buckets, counts, sums

    def record_pass(self, owner: str, now: datetime, totals: PassTotals) -> None:
        """Write this spooler process's running totals into its own row: one statement a pass, so
        processes never wait for each other here. What of them an earlier fold moved into the
        retired row (_fold_retired_passes) is left out, so nothing is counted twice; the row is
        written again only when it is gone (the first pass, or after a fold)."""
        written, folded = self._passes_written.get(owner, (PassTotals(), PassTotals()))
        t = to_epoch(now)
        with self._tx() as db:
            row = _pass_row(_minus(totals, folded))
            if db.execute(_PASS_UPDATE, (t, *row, self._text(owner))).rowcount != 1:
                if owner in self._passes_written:  # our row was folded: what it held is in the retired row
                    folded = written
                    row = _pass_row(_minus(totals, folded))
                db.execute(_PASS_INSERT, (self._text(owner), t, *row, 1))
        self._passes_written[owner] = (_copy(totals), folded)
        if t is not None and t >= self._next_fold:
            self._next_fold = t + PASSES_FOLD_EVERY
            self._fold_retired_passes(now)
            self._prune_chart_minutes(now)

    def _prune_chart_minutes(self, now: datetime) -> int:
        """Delete the chart's minute rows older than CHART_MINUTES_KEPT and move the horizon that
        activity() checks past them; how many were deleted. Only reads when there is nothing to do."""
        oldest = int(((to_epoch(now) or 0.0) - CHART_MINUTES_KEPT) // MINUTE)
        if not self._q("SELECT 1 FROM history_minutes WHERE minute < ? LIMIT 1", (oldest,)):
            return 0
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (CHART_HORIZON_KEY, str(max(oldest, self._chart_horizon(db)))),
            )
            return int(db.execute("DELETE FROM history_minutes WHERE minute < ?", (oldest,)).rowcount)

    def _chart_horizon(self, db: DB) -> int:
        """The oldest minute the chart's rows still cover (0: none was ever deleted)."""
        row = db.execute("SELECT value FROM meta WHERE key=?", (CHART_HORIZON_KEY,)).fetchone()
        return int(row[0]) if row and row[0] else 0

    def _fold_retired_passes(self, now: datetime) -> int:
        """Fold the rows of spooler processes that wrote nothing for PASSES_RETIRE_SECONDS into one
                retired row, so the table does not grow with every restart and the counters they added stay;
                how many were folded. A process that was only idle starts a new row with what it adds next
                (record_pass). Rows are locked in owner order, the retired row last: two folds never deadlock,
        and the second finds the rows the first folded gone."""
        cutoff = (to_epoch(now) or 0.0) - PASSES_RETIRE_SECONDS
        stale = "SELECT owner FROM spooler_passes WHERE updated < ? AND owner <> ?"
        if not self._q(stale + " LIMIT 1", (cutoff, RETIRED_PASSES)):
            return 0  # the usual answer, without a write transaction
        with self._tx() as db:
            rows = db.execute(
                "SELECT owner, passes, seconds, buckets, throttle_waits, processes FROM spooler_passes "
                f"WHERE updated < ? AND owner <> ? ORDER BY owner{self._FOR_UPDATE}",
                (cutoff, RETIRED_PASSES),
            ).fetchall()
            if not rows:
                return 0
            kept = db.execute(
                "SELECT owner, passes, seconds, buckets, throttle_waits, processes FROM spooler_passes "
                f"WHERE owner = ?{self._FOR_UPDATE}",
                (RETIRED_PASSES,),
            ).fetchall()
            retired, processes = PassTotals(), 0
            for _, passes, seconds, buckets, waits, count in [*kept, *rows]:
                _add(retired, int(passes), float(seconds), json.loads(buckets), json.loads(waits))
                processes += int(count)
            # Updated in place (schema 6 made it): a fold waiting for this one's lock then reads what it wrote.
            if kept:
                db.execute(
                    "UPDATE spooler_passes SET updated=?, passes=?, seconds=?, buckets=?, throttle_waits=?, "
                    "processes=? WHERE owner=?",
                    (to_epoch(now), *_pass_row(retired), processes, RETIRED_PASSES),
                )
            else:
                db.execute(_PASS_INSERT, (RETIRED_PASSES, to_epoch(now), *_pass_row(retired), processes))
            owners = [str(r[0]) for r in rows]
            db.execute(f"DELETE FROM spooler_passes WHERE owner IN ({', '.join('?' for _ in owners)})", owners)
        return len(rows)

    def spooler_stats(self, transports: Sequence[str]) -> SpoolerStats:
        """Sum every process's row and the retired row; a row whose histogram has other bounds (another
        version) adds to the counts and the sum but not to the buckets."""
        stats = SpoolerStats(pass_bounds=PASS_BUCKETS, pass_buckets=[0] * len(PASS_BUCKETS))
        for passes, seconds, buckets, waits, processes in self._q(
            "SELECT passes, seconds, buckets, throttle_waits, processes FROM spooler_passes"
        ):
            stats.processes += int(processes)
            stats.passes += int(passes)
            stats.pass_seconds += float(seconds)
            below = [int(n) for n in json.loads(buckets)]
            if len(below) == len(PASS_BUCKETS):
                stats.pass_buckets = [a + b for a, b in zip(stats.pass_buckets, below, strict=True)]
            for name, n in dict(json.loads(waits)).items():
                stats.throttle_waits[str(name)] = stats.throttle_waits.get(str(name), 0) + int(n)
        stats.slots_in_use = {name.lower(): self.connection_slots.in_use(name) for name in transports}
        return stats

    def queue_entry(self, message_id: int) -> QueueEntry | None:
        return next((q for q in self.queue(message_id) if q.id == message_id), None)

    def claim(self, owner: str, now: datetime, lease_seconds: float, limit: int = 1) -> list[int]:
        """Lock up to `limit` due messages; rows another transaction is claiming are skipped, not waited for."""
        t = to_epoch(now)
        assert t is not None
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE messages SET {queue_sql.CLAIM_SET} "
                "WHERE id IN ("
                + due_sql(self._SKIP_LOCKED, hints=self._INDEX_HINTS, retries=self._retry_index(db, t, limit))
                + ") RETURNING id, submit_time",
                (self._text(owner), t + lease_seconds, *due_params(t, limit)),
            ).fetchall()
        return [int(mid) for mid, _ in sorted(rows, key=lambda r: (r[1], r[0]))]

    def due_messages(self, now: datetime, limit: int, exclude: Iterable[int] = ()) -> list[int]:
        """Up to `limit` messages a spooler may claim now, oldest first (read only: nothing is locked)."""
        t = to_epoch(now)
        skip = [valid_id(m) for m in exclude]
        marks = ", ".join("?" for _ in skip)
        assert t is not None
        rows = self._q(
            due_sql(
                "",
                f" AND id NOT IN ({marks})" if skip else "",
                hints=self._INDEX_HINTS,
                retries=self._retry_index(None, t, limit),
            ),
            due_params(t, limit, skip),
        )
        return [int(mid) for (mid,) in rows]

    def _retry_index(self, db: DB | None, t: float, limit: int) -> str:
        """Where SQLite reads the retries due now (queue_sql.RETRY_SORT_MAX); PostgreSQL's planner
        chooses by itself. `db`: the transaction to read in (None: a read of its own)."""
        if not self._INDEX_HINTS:
            return "queue_due_retry"
        params = queue_sql.retry_probe_params(t, limit)
        rows = db.execute(queue_sql.RETRY_PROBE_SQL, params).fetchall() if db is not None else None
        (count,) = (rows or self._q(queue_sql.RETRY_PROBE_SQL, params))[0]
        return queue_sql.retry_index(int(count), limit)

    def pending_recipients(self, message_ids: Sequence[int]) -> dict[int, list[tuple[Recipient, str | None]]]:
        """The pending recipients of these messages, each with the transport it waits for (if any)."""
        out: dict[int, list[tuple[Recipient, str | None]]] = {}
        ids = [i for i in (valid_id(m) for m in message_ids) if i is not None]
        if not ids:
            return out
        marks = ", ".join("?" for _ in ids)
        for mid, rid, bag, waiting in self._q(
            f"SELECT message_id, row_id, props, waiting_for FROM recipients WHERE message_id IN ({marks}) "
            "AND state='pending' ORDER BY message_id, row_id",
            ids,
        ):
            out.setdefault(int(mid), []).append((Recipient(props=decode_bag(bag), row_id=int(rid)), waiting))
        return out

    def claim_message(self, owner: str, message_id: int, now: datetime, lease_seconds: float) -> bool:
        """Claim one chosen message if it is still due and free (another spooler may have taken it)."""
        t = to_epoch(now)
        assert t is not None
        with self._tx() as db:
            row = db.execute(
                f"UPDATE messages SET {queue_sql.CLAIM_SET} "
                "WHERE id IN ("
                " SELECT id FROM messages WHERE id=? AND queue_state='queued' AND coalesce(next_attempt, 0) <= ?"
                " AND (lease_owner IS NULL OR lease_until < ?)" + self._SKIP_LOCKED + ") RETURNING id",
                (self._text(owner), t + lease_seconds, valid_id(message_id), t, t),
            ).fetchone()
        return row is not None

    # --- batches (issue 17): a tick's messages in a few statements, not a few per message -------
    def _values(self, types: Sequence[str], rows: Sequence[Sequence[Any]], name: str = "v") -> tuple[str, list[Any]]:
        """Rows as a table `name` (`v`) with columns column1, column2, … of these SQL types, and its
        parameters. Here a VALUES list whose first row's casts type the columns; PostgreSQL passes one
        array per column instead (unnest), so the statement's text does not depend on the row count."""
        first = "(" + ", ".join(f"CAST(? AS {t})" for t in types) + ")"
        rest = "(" + ", ".join("?" for _ in types) + ")"
        values = "(VALUES " + ", ".join([first] + [rest] * (len(rows) - 1)) + f") AS {name}"
        return values, [x for r in rows for x in r]

    def _id_list(self, ids: Sequence[int]) -> tuple[str, list[Any]]:
        """`IN (…)` over these IDs, and its parameters (PostgreSQL: `= ANY` of one array)."""
        return "IN (" + ", ".join("?" for _ in ids) + ")", list(ids)

    def claim_messages(self, owner: str, message_ids: Sequence[int], now: datetime, lease_seconds: float) -> list[int]:
        """One statement claims every chosen message that is still due and free (a lease each).

        On SQLite the chosen rows are read by their IDs (NOT INDEXED leaves the rowid): without it
        the planner walks the queue's queue_state index, every queued message, which made a claim
        cost 20 ms with 100,000 messages waiting for a retry (figure 8, "waiting")."""
        ids = [i for i in (valid_id(m) for m in message_ids) if i is not None]
        t = to_epoch(now)
        assert t is not None
        if not ids:
            return []
        inside, params = self._id_list(ids)
        by_id = " NOT INDEXED" if self._INDEX_HINTS else ""
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE messages SET {queue_sql.CLAIM_SET} "
                f"WHERE id IN (SELECT id FROM messages{by_id} WHERE id {inside} AND queue_state='queued'"
                " AND coalesce(next_attempt, 0) <= ? AND (lease_owner IS NULL OR lease_until < ?)"
                + self._SKIP_LOCKED
                + ") RETURNING id",
                (self._text(owner), t + lease_seconds, *params, t, t),
            ).fetchall()
        claimed = {int(mid) for (mid,) in rows}
        return [m for m in ids if m in claimed]

    def load_claimed(self, message_ids: Sequence[int]) -> dict[int, ClaimedMessage]:
        """Four reads for the whole batch: the messages, their recipients, attachments and original
        MIME. The claims keep other spoolers off these rows, so one snapshot is not needed."""
        ids = [i for i in (valid_id(m) for m in message_ids) if i is not None]
        if not ids:
            return {}
        inside, params = self._id_list(ids)
        recipients: dict[int, list[Any]] = {}
        attachments: dict[int, list[Any]] = {}
        streams: dict[int, list[Any]] = {}
        with self._connection() as db:
            messages = db.execute(
                "SELECT id, queue_state, lease_owner, props, prev_owner, first_try, failures FROM messages "
                f"WHERE id {inside}",
                params,
            ).fetchall()
            for row in db.execute(
                "SELECT message_id, row_id, props, state, transport, outcome_time, reported, waiting_for, detail, "
                f"declined FROM recipients WHERE message_id {inside} ORDER BY message_id, row_id",
                params,
            ).fetchall():
                recipients.setdefault(int(row[0]), []).append(row[1:])
            for row in db.execute(
                "SELECT message_id, id, num, embedded_id, length(data), props FROM attachments "
                f"WHERE message_id {inside} ORDER BY message_id, num",
                params,
            ).fetchall():
                attachments.setdefault(int(row[0]), []).append(row[1:])
            originals = {
                int(mid): (fp, size)
                for mid, fp, size in db.execute(
                    f"SELECT message_id, fingerprint, size FROM mime_originals WHERE message_id {inside}", params
                ).fetchall()
            }
            for mid, tag, data in db.execute(
                f"SELECT message_id, tag, data FROM message_streams WHERE message_id {inside}", params
            ).fetchall():
                streams.setdefault(int(mid), []).append((tag, data))
            out: dict[int, ClaimedMessage] = {}
            for mid, queue_state, lease_owner, bag, prev, first, failures in messages:
                rows = recipients.get(int(mid), [])
                message = self._message_of(
                    db,
                    int(mid),
                    queue_state,
                    lease_owner,
                    bag,
                    [(r[0], r[1]) for r in rows],
                    attachments.get(int(mid), []),
                    originals.get(int(mid)),
                    streams.get(int(mid), ()),
                )
                states = [self._recipient_status(r[0], *r[2:]) for r in rows]
                out[int(mid)] = ClaimedMessage(message, states, prev, from_epoch(first), int(failures or 0))
        return out

    def unclaim(self, owner: str, message_ids: Sequence[int]) -> None:
        """The lease goes back to what the claim found: free, or (taken over from a stopped spooler)
        run out, so the next claim still sees whose outcome is unknown."""
        ids = [i for i in (valid_id(m) for m in message_ids) if i is not None]
        if not ids:
            return
        inside, params = self._id_list(ids)
        with self._tx() as db:
            db.execute(
                "UPDATE messages SET lease_owner=prev_owner, lease_until=CASE WHEN prev_owner IS NULL THEN NULL "
                f"ELSE 0 END, attempts=attempts-1 WHERE id {inside} AND lease_owner=?",
                (*params, self._text(owner)),
            )
        for mid in ids:
            self._publish(NoteKind.QUEUE, message_id=mid)

    def _check_owner(self, db: DB, message_id: int, owner: str) -> None:
        """Ours, and nobody can take it over before this transaction ends."""
        row = db.execute(f"SELECT lease_owner FROM messages WHERE id=?{self._FOR_UPDATE}", (message_id,)).fetchone()
        if row is None or row[0] != owner:
            raise LeaseLost(f"message {message_id} is no longer claimed by {owner}")

    def renew_lease(self, message_id: int, owner: str, now: datetime, lease_seconds: float) -> None:
        t = to_epoch(now)
        assert t is not None
        with self._tx() as db:
            self._check_owner(db, message_id, owner)
            db.execute("UPDATE messages SET lease_until=? WHERE id=?", (t + lease_seconds, message_id))

    def renew_leases(self, owner: str, message_ids: Sequence[int], now: datetime, lease_seconds: float) -> set[int]:
        """One statement for every lease a spooler holds (spooler/leases.py), however many."""
        ids = [i for i in (valid_id(m) for m in message_ids) if i is not None]
        t = to_epoch(now)
        assert t is not None
        if not ids:
            return set()
        inside, params = self._id_list(ids)
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE messages SET lease_until=? WHERE id {inside} AND lease_owner=? RETURNING id",
                (t + lease_seconds, *params, self._text(owner)),
            ).fetchall()
        return {int(mid) for (mid,) in rows}

    def mark_started(self, owner: str, message_ids: Sequence[int]) -> set[int]:
        """One statement marks every message of a batch that starts together (queue_sql.CLAIM_SET)."""
        ids = [i for i in (valid_id(m) for m in message_ids) if i is not None]
        if not ids:
            return set()
        inside, params = self._id_list(ids)
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE messages SET started=1 WHERE id {inside} AND lease_owner=? RETURNING id",
                (*params, self._text(owner)),
            ).fetchall()
        return {int(mid) for (mid,) in rows}

    def count_waiting(self, kind: WaitKind) -> int:
        rows = self._q("SELECT count(*) FROM messages WHERE queue_state IS NOT NULL AND wait_kind=?", (kind.value,))
        return int(rows[0][0])

    def next_due(self) -> datetime | None:
        rows = self._q(next_due_sql(hints=self._INDEX_HINTS), (OFFLINE_EPOCH,))
        return from_epoch(rows[0][0]) if rows and rows[0][0] is not None else None

    def recipient_states(self, message_id: int) -> list[RecipientStatus]:
        return [
            self._recipient_status(*row)
            for row in self._q(
                "SELECT row_id, state, transport, outcome_time, reported, waiting_for, detail, declined "
                "FROM recipients WHERE message_id=? ORDER BY row_id",
                (valid_id(message_id),),
            )
        ]

    @staticmethod
    def _recipient_status(
        rid: int,
        state: str,
        xp: str | None,
        t: float | None,
        rep: int,
        waiting: str | None,
        detail: str | None,
        declined: str | None,
    ) -> RecipientStatus:
        return RecipientStatus(
            row_id=int(rid),
            state=RecipientState(state),
            transport=xp,
            outcome_time=from_epoch(t),
            reported=bool(rep),
            waiting_for=waiting,
            detail=detail,
            declined=decode_declined(declined),
        )

    def record_outcomes(self, message_id: int, owner: str, outcomes: Sequence[RecipientOutcome], now: datetime) -> None:
        with self._tx() as db:
            self._check_owner(db, message_id, owner)
            self._record_in(db, message_id, outcomes, now)

    def _record_in(self, db: DB, message_id: int, outcomes: Sequence[RecipientOutcome], now: datetime) -> None:
        for out in outcomes:
            cur = db.execute(
                "UPDATE recipients SET state=?, transport=?, outcome_time=?, reported=?, waiting_for=NULL, "
                "detail=NULL, declined=NULL WHERE message_id=? AND row_id=? AND state='pending'",
                (
                    out.state.value,
                    self._text(out.transport),
                    to_epoch(now),
                    0 if out.report else 1,
                    message_id,
                    out.row_id,
                ),
            )
            if cur.rowcount != 1:
                continue  # already final: an outcome is never overwritten (exactly one per recipient)
            props = dict(out.props)
            props[T.PR_RESPONSIBILITY] = True
            self._insert_props(db, "recipient_props", (message_id, out.row_id), props)
            text = props.get(T.PR_REPORT_TEXT)
            self._event(
                db,
                message_id,
                now,
                EventKind(out.state.value),
                f"recipient {out.row_id}" + (f": {text}" if text else ""),
                out.transport,
            )

    def deliver_report(
        self, message_id: int, owner: str, report: MessageData, folder_id: int, row_ids: Sequence[int], now: datetime
    ) -> int:
        with self._tx() as db:
            self._check_owner(db, message_id, owner)
            rid = self._insert_message(db, folder_id, report)
            db.executemany(
                "UPDATE recipients SET reported=1 WHERE message_id=? AND row_id=?", [(message_id, r) for r in row_ids]
            )
            self._event(db, message_id, now, EventKind.REPORT, f"{report.message_class} stored as message {rid}")
        self._publish(NoteKind.NEWMAIL, message_id=rid, folder_id=folder_id, message_class=report.message_class)
        return rid

    def release(
        self,
        message_id: int,
        owner: str,
        now: datetime,
        next_attempt: datetime | None,
        error: str | None,
        wait_kind: WaitKind = WaitKind.RETRY,
        outcomes: Sequence[RecipientOutcome] = (),
        waits: Sequence[RecipientWait] = (),
        *,
        tried_at: datetime | None = None,
        failed: bool = False,
    ) -> None:
        due = to_epoch(next_attempt)
        if wait_kind is WaitKind.SEND_RECEIVE:
            due = OFFLINE_EPOCH
        with self._tx() as db:
            self._check_owner(db, message_id, owner)
            self._record_in(db, message_id, outcomes, now)
            if waits:
                db.executemany(
                    "UPDATE recipients SET waiting_for=?, detail=?, declined=? "
                    "WHERE message_id=? AND row_id=? AND state='pending'",
                    [
                        (
                            self._text(w.transport),
                            self._text(w.detail),
                            encode_declined(w.declined),
                            message_id,
                            w.row_id,
                        )
                        for w in waits
                    ],
                )
            db.execute(
                "UPDATE messages SET lease_owner=NULL, lease_until=NULL, next_attempt=?, wait_kind=?, "
                "last_error=coalesce(?, last_error), first_try=coalesce(first_try, ?), failures=failures+? "
                "WHERE id=?",
                (due, wait_kind.value, self._text(error), to_epoch(tried_at), 1 if failed else 0, message_id),
            )
            if wait_kind is WaitKind.SEND_RECEIVE:
                detail = error or "offline: waiting for Send/Receive"
            else:
                until = f" until {next_attempt.isoformat(timespec='seconds')}" if next_attempt else ""
                detail = (error or "pending recipients") + until
            self._event(db, message_id, now, EventKind.WAITING, detail)

    def hold(self, message_id: int, now: datetime, reason: str, owner: str | None = None) -> None:
        with self._tx() as db:
            state, holder = self._queued(db, message_id)
            if state == QueueState.HELD.value:
                raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"message {message_id} is already held")
            if holder != owner and self._locked_now(db, message_id, holder, now):
                raise MAPIError(
                    HResult.MAPI_E_UNABLE_TO_ABORT, f"message {message_id} is being delivered by {holder}; try again"
                )
            db.execute(
                "UPDATE messages SET queue_state='held', hold_reason=?, lease_owner=NULL, lease_until=NULL WHERE id=?",
                (self._text(reason), message_id),
            )
            self._event(db, message_id, now, EventKind.HELD, reason)
        # Nothing becomes due, but a status page shows the queue live (store notifications are hints).
        self._publish(NoteKind.QUEUE, message_id=message_id, held=True)

    def release_hold(self, message_id: int, now: datetime) -> None:
        with self._tx() as db:
            (state,) = self._queued(db, message_id, "queue_state")
            if state != QueueState.HELD.value:
                raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"message {message_id} is not held")
            db.execute(
                "UPDATE messages SET queue_state='queued', hold_reason=NULL, next_attempt=NULL, wait_kind=NULL, "
                "prev_owner=NULL WHERE id=?",
                (message_id,),
            )
            self._event(db, message_id, now, EventKind.RELEASED, "released from hold")
        self._publish(NoteKind.QUEUE, message_id=message_id)

    def confirm_delivered(self, message_id: int, now: datetime, detail: str) -> str:
        """An operator's word that a held message was delivered (say, after a crash left its outcome
        unknown and the server's log shows it): its pending recipients become delivered and the
        message is finished as if the transport had said so. Returns what finish() returns."""
        owner = f"operator:{uuid.uuid4().hex[:8]}"
        with self.batch(), self._tx() as db:  # one transaction, finish() included
            (state,) = self._queued(db, message_id, "queue_state")
            if state != QueueState.HELD.value:
                raise MAPIError(
                    HResult.MAPI_E_INVALID_PARAMETER,
                    f"message {message_id} is not held: only a held message can be marked delivered",
                )
            db.execute(
                "UPDATE messages SET queue_state='queued', hold_reason=NULL, lease_owner=? WHERE id=?",
                (owner, message_id),
            )
            pending = db.execute(
                "SELECT row_id FROM recipients WHERE message_id=? AND state='pending' ORDER BY row_id", (message_id,)
            ).fetchall()
            outcomes = [
                RecipientOutcome(
                    int(row), RecipientState.DELIVERED, "", {T.PR_DELIVER_TIME: now, T.PR_REPORT_TEXT: detail}, False
                )
                for (row,) in pending
            ]
            self._event(db, message_id, now, EventKind.CONFIRMED_DELIVERED, f"{len(outcomes)} recipient(s): {detail}")
            return self.finish(message_id, owner, now, outcomes)

    def retry_now(self, message_id: int | None, now: datetime) -> int:
        if message_id is None:
            return len(self.retry_all(now).retried)
        with self._tx() as db:
            state, _ = self._queued(db, message_id)
            if state == QueueState.HELD.value:
                raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"message {message_id} is held: release it first")
            cur = db.execute(
                "UPDATE messages SET next_attempt=NULL, wait_kind=NULL WHERE queue_state='queued' "
                "AND (lease_owner IS NULL OR lease_until < ?) AND id=?",
                (to_epoch(now), message_id),
            )
            count = cur.rowcount
            if count:
                row = (message_id, to_epoch(now), "retry", None, "retry now (ignoring backoff)")
                db.execute(_EVENT_SQL, row)
                self._count_history(db, [row])
        self._publish(NoteKind.QUEUE, retry=count)
        return count

    def retry_all(self, now: datetime) -> RetryAll:
        t = to_epoch(now)
        unclaimed = "queue_state='queued' AND (lease_owner IS NULL OR lease_until < ?)"
        waits = "(next_attempt IS NOT NULL OR wait_kind IS NOT NULL)"
        not_yet = "(wait_kind = 'scheduled' AND next_attempt > ?)"
        with self._tx() as db:
            scheduled = [
                mid
                for (mid,) in db.execute(
                    f"SELECT id FROM messages WHERE {unclaimed} AND {not_yet} ORDER BY id", (t, t)
                ).fetchall()
            ]
            retried = [
                mid
                for (mid,) in db.execute(
                    f"SELECT id FROM messages WHERE {unclaimed} AND {waits} AND NOT {not_yet} ORDER BY id", (t, t)
                ).fetchall()
            ]
            db.executemany("UPDATE messages SET next_attempt=NULL, wait_kind=NULL WHERE id=?", [(m,) for m in retried])
            rows = [(mid, t, "retry", None, "retry now (ignoring backoff)") for mid in retried]
            db.executemany(_EVENT_SQL, rows)
            self._count_history(db, rows)
        self._publish(NoteKind.QUEUE, retry=len(retried))
        return RetryAll(retried, scheduled)

    def wake(self, now: datetime, kinds: Sequence[WaitKind] = (WaitKind.SEND_RECEIVE,)) -> int:
        if not kinds:
            return 0
        marks = ", ".join("?" for _ in kinds)
        waiting = self._q(
            f"SELECT 1 FROM messages WHERE queue_state='queued' AND wait_kind IN ({marks}) LIMIT 1",
            [k.value for k in kinds],
        )
        if not waiting:  # nothing to wake: no write transaction (a reader never waits for a writer)
            return 0
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE messages SET next_attempt=NULL, wait_kind=NULL WHERE queue_state='queued' "
                f"AND (lease_owner IS NULL OR lease_until < ?) AND wait_kind IN ({marks})",
                [to_epoch(now), *(k.value for k in kinds)],
            )
            woken = cur.rowcount
        if woken:
            self._publish(NoteKind.QUEUE, woken=woken)
        return woken

    def wake_for(
        self, transports: Sequence[str], now: datetime, known: Sequence[str] | None = None, *, retries: bool = True
    ) -> int:
        if not transports:
            return 0
        kinds = "coalesce(wait_kind, '') != 'scheduled'" if retries else "wait_kind = 'send_receive'"
        params = [t.lower() for t in transports]
        waits = f"r.waiting_for IS NULL OR lower(r.waiting_for) IN ({', '.join('?' for _ in transports)})"
        if known:
            params += [k.lower() for k in known]
            waits += f" OR lower(r.waiting_for) NOT IN ({', '.join('?' for _ in known)})"
        with self._tx() as db:
            cur = db.execute(
                "UPDATE messages SET next_attempt=NULL, wait_kind=NULL WHERE queue_state='queued' "
                f"AND (lease_owner IS NULL OR lease_until < ?) AND {kinds} AND EXISTS ("
                " SELECT 1 FROM recipients r WHERE r.message_id=messages.id AND r.state='pending'"
                f" AND ({waits}))",
                [to_epoch(now), *params],
            )
            woken = cur.rowcount
        if woken:
            self._publish(NoteKind.QUEUE, woken=woken)
        return woken

    def waiting_recipients(self) -> list[WaitingRecipient]:
        return [
            WaitingRecipient(
                message_id=int(mid),
                recipient=Recipient(props=decode_bag(bag), row_id=int(rid)),
                waiting_for=None if waiting is None else str(waiting),
                declined=decode_declined(declined),
                wait_kind=WaitKind(kind) if kind else None,
                held=state == QueueState.HELD.value,
            )
            for mid, rid, bag, waiting, declined, kind, state in self._q(
                "SELECT r.message_id, r.row_id, r.props, r.waiting_for, r.declined, m.wait_kind, m.queue_state "
                "FROM recipients r JOIN messages m ON m.id = r.message_id "
                # With a detail but no transport: a change of routing left it to no transport (its
                # NDR is due at the next pass); a later change may give it one again.
                "WHERE m.queue_state IS NOT NULL AND r.state = 'pending' "
                "AND (r.waiting_for IS NOT NULL OR r.detail IS NOT NULL) "
                "ORDER BY r.message_id, r.row_id"
            )
        ]

    def routing(self) -> str | None:
        rows = self._q("SELECT value FROM meta WHERE key='routing'")
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def reroute(self, moves: Sequence[RecipientMove], wake: Sequence[int], routing: str, now: datetime) -> int:
        t = to_epoch(now)
        moved: dict[int, list[str]] = {}
        with self._tx() as db:
            for m in moves:
                still = "waiting_for IS NULL" if m.was is None else "waiting_for=?"
                cur = db.execute(
                    "UPDATE recipients SET waiting_for=?, detail=? "
                    f"WHERE message_id=? AND row_id=? AND state='pending' AND {still}",
                    (
                        None if m.transport is None else self._text(m.transport),
                        self._text(m.detail),
                        m.message_id,
                        m.row_id,
                        *(() if m.was is None else (m.was,)),
                    ),
                )
                if cur.rowcount == 1:
                    moved.setdefault(m.message_id, []).append(
                        f"recipient {m.row_id}: {m.was or 'no transport'} -> {m.transport or 'no transport'}"
                    )
            woken = [m for m in wake if valid_id(m) is not None]
            for start in range(0, len(woken), 500):
                chunk = woken[start : start + 500]
                db.execute(
                    "UPDATE messages SET next_attempt=NULL, wait_kind=NULL WHERE queue_state='queued' "
                    f"AND (lease_owner IS NULL OR lease_until < ?) AND id IN ({', '.join('?' for _ in chunk)})",
                    [t, *chunk],
                )
            db.executemany(
                _EVENT_SQL,
                [
                    (mid, t, EventKind.REROUTED.value, None, "the routing changed; " + "; ".join(lines))
                    for mid, lines in moved.items()
                ],
            )
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('routing', ?) "
                "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (routing,),
            )
        if woken:
            self._publish(NoteKind.QUEUE, woken=len(woken))
        return sum(len(lines) for lines in moved.values())

    def wake_paused(self, transport: str, now: datetime, limit: int | None = None) -> int:
        parked = (
            "SELECT m.id FROM messages m WHERE m.queue_state='queued' AND m.wait_kind='paused' "
            "AND (m.lease_owner IS NULL OR m.lease_until < ?) AND EXISTS ("
            " SELECT 1 FROM recipients r WHERE r.message_id=m.id AND r.state='pending'"
            " AND lower(r.waiting_for) = ?) ORDER BY m.submit_time, m.id"
        )
        params: list[Any] = [to_epoch(now), transport.lower()]
        if not self._q(parked + " LIMIT 1", params):
            return 0  # nothing parked: no write transaction
        if limit is not None:
            parked += " LIMIT ?"
            params.append(limit)
        with self._tx() as db:
            woken = db.execute(
                f"UPDATE messages SET next_attempt=NULL, wait_kind=NULL WHERE id IN ({parked})", params
            ).rowcount
        if woken:
            self._publish(NoteKind.QUEUE, woken=woken)
        return woken

    def deliver_message(self, folder_id: int, message: MessageData, now: datetime) -> int:
        encoded = _EncodedMessage.of(message, None)  # before the transaction (create_and_submit says why)
        with self._tx() as db:
            mid = self._insert_message(db, folder_id, message, encoded=encoded)
            self._event(db, mid, now, EventKind.RECEIVED, f"delivered into folder {folder_id}")
        self._publish(NoteKind.NEWMAIL, message_id=mid, folder_id=folder_id, message_class=message.message_class)
        return mid

    def save_status_rows(self, owner: str, rows: Sequence[tuple[str, dict[str, Any]]], now: datetime) -> None:
        with self._tx() as db:
            self._lock_status_rows(db)  # replaced wholesale: each DELETE must see the rows the last writer wrote
            db.execute("DELETE FROM status_rows")
            db.executemany(
                "INSERT INTO status_rows (name, position, row, updated, owner) VALUES (?, ?, ?, ?, ?)",
                [
                    (self._text(name), n, json.dumps(row), to_epoch(now), self._text(owner))
                    for n, (name, row) in enumerate(rows)
                ],
            )

    def status_rows(self) -> list[tuple[str, dict[str, Any], datetime, str]]:
        return [
            (name, json.loads(row), from_epoch(updated) or now_fallback(), owner)
            for name, row, updated, owner in self._q(
                "SELECT name, row, updated, owner FROM status_rows ORDER BY position"
            )
        ]

    def finish(self, message_id: int, owner: str, now: datetime, outcomes: Sequence[RecipientOutcome] = ()) -> str:
        with self._tx() as db:
            self._check_owner(db, message_id, owner)
            self._record_in(db, message_id, outcomes, now)
            pending = int(
                db.execute(
                    "SELECT count(*) FROM recipients WHERE message_id=? AND state='pending'", (message_id,)
                ).fetchone()[0]
            )
            if pending:
                raise MAPIError(
                    HResult.MAPI_E_CALL_FAILED, f"message {message_id} still has {pending} pending recipient(s)"
                )
            raw = load_raw(db.execute("SELECT props FROM messages WHERE id=?", (message_id,)).fetchone()[0])
            flags = int(raw_value(raw, T.PR_MESSAGE_FLAGS) or 0) & ~(MessageFlags.SUBMIT | MessageFlags.UNSENT)
            update_raw(raw, {T.PR_MESSAGE_FLAGS: flags})
            db.execute(
                "UPDATE messages SET props=?, queue_state=NULL, lease_owner=NULL, lease_until=NULL, "
                "next_attempt=NULL WHERE id=?",
                (dump_raw(raw), message_id),
            )
            sentmail = raw_value(raw, T.PR_SENTMAIL_ENTRYID)
            delete = bool(raw_value(raw, T.PR_DELETE_AFTER_SUBMIT))
            outcome = "left"
            if sentmail:
                fid = self._parse_entry_id(bytes(sentmail), FOLDER_ENTRY)
                if fid is not None and db.execute("SELECT 1 FROM folders WHERE id=?", (fid,)).fetchone():
                    db.execute("UPDATE messages SET folder_id=? WHERE id=?", (fid, message_id))
                    outcome = "moved"
            self._event(
                db,
                message_id,
                now,
                EventKind.FINISHED,
                {"left": "left in the Outbox", "moved": "moved to PR_SENTMAIL_ENTRYID"}[outcome]
                if not delete
                else "deleted (PR_DELETE_AFTER_SUBMIT)",
            )
            if delete:
                self._delete(db, message_id)
                outcome = "deleted"
            return outcome

    def finish_many(
        self, owner: str, items: Sequence[tuple[int, Sequence[RecipientOutcome]]], now: datetime
    ) -> list[str | Exception]:
        """finish() for a tick's messages in one transaction of a fixed number of statements: one
        read of the messages (locked) and one of their pending recipients, then one UPDATE of the
        recipients, one INSERT of the events and one UPDATE of the messages, whatever their number.
        A message that finish() would refuse (not ours, recipients still pending) is left out
        whole and gets the error instead; a PR_DELETE_AFTER_SUBMIT one is deleted row by row."""
        t = to_epoch(now)
        ids = [i for i in (valid_id(mid) for mid, _ in items) if i is not None]
        answers: dict[int, str | Exception] = {}
        if not ids:
            return [LeaseLost(f"message {mid} is no longer claimed by {owner}") for mid, _ in items]
        inside, params = self._id_list(ids)
        with self._tx() as db:
            bags = {
                int(mid): bag
                for mid, holder, bag in db.execute(
                    f"SELECT id, lease_owner, props FROM messages WHERE id {inside}{self._FOR_UPDATE}", params
                ).fetchall()
                if holder == owner
            }
            pending: dict[int, dict[int, str]] = {}
            for mid, rid, bag in db.execute(
                f"SELECT message_id, row_id, props FROM recipients WHERE message_id {inside} AND state='pending'"
                + self._FOR_UPDATE,
                params,
            ).fetchall():
                pending.setdefault(int(mid), {})[int(rid)] = bag
            recipient_rows: list[tuple[Any, ...]] = []
            events: list[tuple[Any, ...]] = []
            finished: list[tuple[int, Any, bool, int | None]] = []  # id, raw bag, delete, Sent Items folder
            for mid, outcomes in items:
                if mid not in bags:
                    answers[mid] = LeaseLost(f"message {mid} is no longer claimed by {owner}")
                    continue
                left = dict(pending.get(mid, {}))
                decided: list[tuple[RecipientOutcome, str]] = []
                for out in outcomes:  # the first outcome of a recipient counts, as in _record_in
                    if out.row_id in left:
                        decided.append((out, left.pop(out.row_id)))
                if left:
                    answers[mid] = MAPIError(
                        HResult.MAPI_E_CALL_FAILED, f"message {mid} still has {len(left)} pending recipient(s)"
                    )
                    continue
                for out, bag in decided:
                    props = dict(out.props)
                    props[T.PR_RESPONSIBILITY] = True
                    raw_r = load_raw(bag)
                    update_raw(raw_r, props)
                    recipient_rows.append(
                        (
                            mid,
                            out.row_id,
                            out.state.value,
                            self._text(out.transport),
                            t,
                            0 if out.report else 1,
                            dump_raw(raw_r),
                        )
                    )
                    text = props.get(T.PR_REPORT_TEXT)
                    detail = f"recipient {out.row_id}" + (f": {text}" if text else "")
                    events.append(
                        (mid, t, self._text(EventKind(out.state.value)), self._text(out.transport), self._text(detail))
                    )
                raw = load_raw(bags[mid])
                flags = int(raw_value(raw, T.PR_MESSAGE_FLAGS) or 0) & ~(MessageFlags.SUBMIT | MessageFlags.UNSENT)
                update_raw(raw, {T.PR_MESSAGE_FLAGS: flags})
                sentmail = raw_value(raw, T.PR_SENTMAIL_ENTRYID)
                fid = self._parse_entry_id(bytes(sentmail), FOLDER_ENTRY) if sentmail else None
                finished.append((mid, raw, bool(raw_value(raw, T.PR_DELETE_AFTER_SUBMIT)), valid_id(fid)))
            wanted = sorted({fid for *_, fid in finished if fid is not None})
            folders: set[int] = set()
            if wanted:
                where, fparams = self._id_list(wanted)
                folders = {
                    int(f) for (f,) in db.execute(f"SELECT id FROM folders WHERE id {where}", fparams).fetchall()
                }
            message_rows = []
            for mid, raw, delete, fid in finished:
                moved = fid if fid in folders else None
                outcome = "deleted" if delete else ("moved" if moved is not None else "left")
                answers[mid] = outcome
                message_rows.append((mid, dump_raw(raw), moved))
                words = {"left": "left in the Outbox", "moved": "moved to PR_SENTMAIL_ENTRYID"}
                detail = "deleted (PR_DELETE_AFTER_SUBMIT)" if delete else words[outcome]
                events.append((mid, t, self._text(EventKind.FINISHED), None, self._text(detail)))
            if recipient_rows:
                table, values = self._values(
                    ("BIGINT", "INTEGER", "TEXT", "TEXT", "DOUBLE PRECISION", "INTEGER", "TEXT"), recipient_rows
                )
                db.execute(
                    "UPDATE recipients SET state=v.column3, transport=v.column4, outcome_time=v.column5, "
                    "reported=v.column6, props=v.column7, waiting_for=NULL, detail=NULL, declined=NULL "
                    f"FROM {table} WHERE recipients.message_id=v.column1 AND recipients.row_id=v.column2 "
                    "AND recipients.state='pending'",
                    values,
                )
            if message_rows:
                table, values = self._values(("BIGINT", "TEXT", "BIGINT"), message_rows)
                db.execute(
                    "UPDATE messages SET props=v.column2, queue_state=NULL, lease_owner=NULL, lease_until=NULL, "
                    f"next_attempt=NULL, folder_id=coalesce(v.column3, folder_id) FROM {table} "
                    "WHERE messages.id=v.column1",
                    values,
                )
            if events:
                table, values = self._values(("BIGINT", "DOUBLE PRECISION", "TEXT", "TEXT", "TEXT"), events)
                db.execute(
                    "INSERT INTO events (message_id, time, kind, transport, detail) "
                    f"SELECT v.column1, v.column2, v.column3, v.column4, v.column5 FROM {table}",
                    values,
                )
                self._count_history(db, events)
            for mid, _, delete, _ in finished:
                if delete:
                    self._delete(db, mid)
        return [answers.get(mid) or LeaseLost(f"message {mid} is no longer claimed by {owner}") for mid, _ in items]

    # --- history -----------------------------------------------------------------------------
    def _event(
        self, db: DB, message_id: int, now: datetime, kind: EventKind, detail: str, transport: str | None = None
    ) -> None:
        row = (message_id, to_epoch(now), self._text(kind), self._text(transport), self._text(detail))
        db.execute(_EVENT_SQL, row)
        self._count_history(db, [row])

    def _counted(self, db: DB) -> Iterator[DB]:
        """Collect the counted events a transaction writes and add them to the running totals at its
        end, in one or two statements whatever their number (history_totals.py). Each store wraps its
        transactions in it (`_counting`, or `yield from` in a transaction's own generator); a nested
        one (a savepoint) that fails takes its events out again, as its rollback takes them out of
        the history."""
        rows: list[Sequence[Any]] | None = getattr(self._tallies, "rows", None)
        if rows is not None:
            mark = len(rows)
            try:
                yield db
            except BaseException:
                del rows[mark:]
                raise
            return
        self._tallies.rows = rows = []
        try:
            yield db
            self._add_to_totals(db, rows)
        finally:
            self._tallies.rows = None

    _counting = contextmanager(_counted)

    def _count_history(self, db: DB, rows: Sequence[Sequence[Any]]) -> None:
        """Events just written, (message id, time, kind, transport, …): counted at the end of the
        transaction (or now, outside of one)."""
        tally: list[Sequence[Any]] | None = getattr(self._tallies, "rows", None)
        if tally is None:
            self._add_to_totals(db, rows)
        else:
            tally.extend(rows)

    def _add_to_totals(self, db: DB, rows: Sequence[Sequence[Any]]) -> None:
        tally = Tally(rows)
        if not tally.kinds:
            return
        if len(tally.kinds) == 1 and not tally.outcomes and len(tally.minutes) <= 1:
            self._add_one_kind(db, tally)
            return
        kinds = sorted(((k, xp, n) for (k, xp), n in tally.kinds.items()), key=lambda r: (r[0], r[1] or ""))
        kind_table, params = self._values(("TEXT", "TEXT", "BIGINT"), kinds, "k")
        outcome_table = None
        if tally.outcomes:
            outcome_table, more = self._values(("BIGINT", "DOUBLE PRECISION", "TEXT"), tally.outcomes, "o")
            params += more
        db.execute(totals_upsert(kind_table, outcome_table, self._shard), params)
        if tally.minutes:
            minutes = [(m, *counts) for m, counts in sorted(tally.minutes.items())]
            table, params = self._values(("BIGINT",) * 5, minutes, "m")
            db.execute(minutes_upsert(table, self._shard), params)

    def _add_one_kind(self, db: DB, tally: Tally) -> None:
        """_add_to_totals of the usual one-message commit: a row of each table, statements made once."""
        [((kind, transport), n)] = tally.kinds.items()
        sql = self._one_kind_sql
        if sql is None:
            sql = self._one_kind_sql = (one_kind_upsert(self._shard), one_minute_upsert(self._shard))
        db.execute(sql[0], (kind, transport, n))
        for minute, counts in tally.minutes.items():
            db.execute(sql[1], (minute, *counts))

    def add_event(
        self, message_id: int, now: datetime, kind: EventKind, detail: str, transport: str | None = None
    ) -> None:
        with self._tx() as db:
            self._event(db, message_id, now, kind, detail, transport)

    def events(self, message_id: int) -> list[Event]:
        return [
            Event(time=from_epoch(t) or now_fallback(), kind=EventKind.read(k), transport=xp, detail=d)
            for t, k, xp, d in self._q(
                "SELECT time, kind, transport, detail FROM events WHERE message_id=? ORDER BY id",
                (valid_id(message_id),),
            )
        ]

    # --- receive folders -----------------------------------------------------------------------
    def set_receive_folder(self, message_class: str, folder_id: int | None) -> None:
        cls = normalise_class(message_class)
        with self._tx() as db:
            if folder_id is None:
                if cls == "":
                    raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "the default receive folder cannot be removed")
                db.execute("DELETE FROM receive_folders WHERE message_class=?", (cls,))
                return
            if (
                valid_id(folder_id) is None
                or not db.execute("SELECT 1 FROM folders WHERE id=?", (folder_id,)).fetchone()
            ):
                raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no folder {folder_id}")
            db.execute(
                "INSERT INTO receive_folders (message_class, folder_id) VALUES (?, ?) "
                "ON CONFLICT (message_class) DO UPDATE SET folder_id=excluded.folder_id",
                (cls, folder_id),
            )

    def receive_folders(self) -> dict[str, int]:
        return {cls: int(fid) for cls, fid in self._q("SELECT message_class, folder_id FROM receive_folders")}

    # --- per-transport limits across processes (schema 2) ----------------------------------------
    def _count_send(self, db: DB, transport: str | None, t: float, owner: str | None) -> None:
        db.execute("INSERT INTO transport_usage (transport, time, owner) VALUES (?, ?, ?)", (transport, t, owner))
        db.execute("DELETE FROM transport_usage WHERE transport=? AND time < ?", (transport, t - USAGE_KEEP_SECONDS))

    def record_send(self, transport: str, now: datetime, owner: str | None = None) -> None:
        """Count one message handed to `transport` now (for throttles shared by every process)."""
        t = to_epoch(now)
        assert t is not None
        with self._tx() as db:
            self._count_send(db, self._text(transport), t, self._text(owner))

    def count_sends(self, transport: str, since: datetime) -> int:
        """Messages handed to `transport` after `since`, by any process."""
        rows = self._q(
            "SELECT count(*) FROM transport_usage WHERE transport=? AND time > ?",
            (self._text(transport), to_epoch(since)),
        )
        return int(rows[0][0])

    def reserve_send(
        self, transport: str, now: datetime, limits: Sequence[tuple[int, float]], owner: str | None = None
    ) -> float:
        """Take a throttle slot atomically: 0.0 when the send is recorded, else seconds until a slot frees.

        `limits` are (at most N messages, per W seconds) pairs; 0 as N means no limit. Processes
        reserving for the same transport take turns, so no limit is overrun.
        """
        t = to_epoch(now)
        assert t is not None
        name = self._text(transport)
        with self._tx() as db:
            self._lock_transport(db, transport)
            wait = 0.0
            for limit, window in limits:
                if limit <= 0:
                    continue
                row = db.execute(
                    "SELECT time FROM transport_usage WHERE transport=? AND time > ? "
                    "ORDER BY time DESC LIMIT 1 OFFSET ?",
                    (name, t - window, limit - 1),
                ).fetchone()
                if row is not None:
                    wait = max(wait, float(row[0]) + window - t)
            if wait > 0:
                return wait
            self._count_send(db, name, t, self._text(owner))
            return 0.0

    def breaker_state(self, transport: str) -> dict[str, Any]:
        """The circuit breaker of `transport` as the spooler stored it ({} when never set)."""
        rows = self._q("SELECT state FROM breaker_state WHERE transport=?", (self._text(transport),))
        return dict(json.loads(rows[0][0])) if rows else {}

    def set_breaker_state(self, transport: str, state: Mapping[str, Any], now: datetime) -> None:
        with self._tx() as db:
            db.execute(_BREAKER_UPSERT, (self._text(transport), json.dumps(dict(state)), to_epoch(now)))

    def update_breaker_state(
        self, transport: str, change: Callable[[dict[str, Any]], Mapping[str, Any] | None], now: datetime
    ) -> dict[str, Any]:
        """Read, change and write the breaker state in one transaction (no other process in between).

        `change` gets the current state ({} when none) and returns the new one (None: unchanged).
        """
        name = self._text(transport)
        with self._tx() as db:
            self._lock_transport(db, transport)
            row = db.execute("SELECT state FROM breaker_state WHERE transport=?", (name,)).fetchone()
            current = dict(json.loads(row[0])) if row else {}
            new = change(dict(current))
            if new is None:
                return current
            db.execute(_BREAKER_UPSERT, (name, json.dumps(dict(new)), to_epoch(now)))
            return dict(new)


#: What differs between the messages of a batch to many people: their bags share the rest.
_OWN_TAGS = (
    T.PR_SUBJECT,
    T.PR_CONVERSATION_TOPIC,
    T.PR_INTERNET_MESSAGE_ID,
    T.PR_CREATION_TIME,
    T.PR_LAST_MODIFICATION_TIME,
    T.PR_DISPLAY_TO,
    T.PR_DISPLAY_CC,
    T.PR_DISPLAY_BCC,
)


# As plain ints: enum arithmetic costs microseconds a message in a batch.
_NEW_FLAGS = int(MessageFlags.UNSENT | MessageFlags.UNMODIFIED)
_SUBMITTED_FLAGS = int(MessageFlags.SUBMIT | MessageFlags.UNSENT)
_UNMODIFIED = int(MessageFlags.UNMODIFIED)


_LEFT = ", ".join(f"'{k}'" for k in LEFT_KINDS)


def _buckets(
    since: datetime, start: float, step: int, depth: int, delivered: list[int], failed: list[int], change: list[int]
) -> list[ActivityBucket]:
    """The chart's steps from their counts and the queue's depth before the first."""
    out = []
    for i in range(len(delivered)):
        depth = max(0, depth + change[i])
        out.append(ActivityBucket(from_epoch(start + i * step) or since, delivered[i], failed[i], depth))
    return out


def _pass_row(totals: PassTotals) -> tuple[Any, ...]:
    """spooler_passes' passes, seconds, buckets and throttle_waits columns for these totals."""
    waits = json.dumps(totals.throttle_waits, sort_keys=True)
    return (totals.passes, totals.seconds, json.dumps(totals.buckets), waits)


def _add(into: PassTotals, passes: int, seconds: float, buckets: Sequence[int], waits: Mapping[str, int]) -> None:
    into.passes += passes
    into.seconds += seconds
    if len(buckets) == len(into.buckets):  # another version's histogram adds to the counts only
        into.buckets = [a + int(b) for a, b in zip(into.buckets, buckets, strict=True)]
    for name, n in waits.items():
        into.throttle_waits[str(name)] = into.throttle_waits.get(str(name), 0) + int(n)


def _minus(totals: PassTotals, less: PassTotals) -> PassTotals:
    out = PassTotals(totals.passes - less.passes, max(0.0, totals.seconds - less.seconds))
    out.buckets = [a - b for a, b in zip(totals.buckets, less.buckets, strict=True)]
    names = set(totals.throttle_waits) | set(less.throttle_waits)
    out.throttle_waits = {
        n: totals.throttle_waits.get(n, 0) - less.throttle_waits.get(n, 0)
        for n in sorted(names)
        if totals.throttle_waits.get(n, 0) != less.throttle_waits.get(n, 0)
    }
    return out


def _copy(totals: PassTotals) -> PassTotals:
    return _minus(totals, PassTotals())


def _message_props(message: MessageData, submit_at: datetime | None) -> tuple[Props, float | None]:
    """A new message's bag as stored, and when it is due (None: at once, or not submitted)."""
    props = dict(message.props)
    props.setdefault(T.PR_MESSAGE_CLASS, "IPM.Note")
    props.setdefault(T.PR_MESSAGE_FLAGS, _NEW_FLAGS)
    if message.attachments:
        props[T.PR_MESSAGE_FLAGS] = int(props[T.PR_MESSAGE_FLAGS]) | MessageFlags.HASATTACH
        props[T.PR_HASATTACH] = True
    for tag in (T.PR_ENTRYID, T.PR_SUBMIT_FLAGS, T.PR_INSTANCE_KEY, T.PR_ROWID):
        props.pop(tag, None)
    refresh_display_lists(props, message.recipients)
    due: float | None = None
    if submit_at is not None:
        if not message.recipients:
            raise MAPIError(HResult.MAPI_E_NO_RECIPIENTS, "the message has no recipients")
        props[T.PR_MESSAGE_FLAGS] = (int(props[T.PR_MESSAGE_FLAGS]) | _SUBMITTED_FLAGS) & ~_UNMODIFIED
        props[T.PR_CLIENT_SUBMIT_TIME] = submit_at
        deferred = props.get(T.PR_DEFERRED_SEND_TIME)
        due = to_epoch(deferred) if isinstance(deferred, datetime) and deferred > submit_at else None
    return props, due


@dataclass(frozen=True)
class _EncodedMessage:
    """A new message's rows as stored, all but its ID: what `_insert_message` writes."""

    bag: str
    streams: dict[int, bytes]
    #: (row_id, bag, state, reported) of each recipient
    recipients: list[tuple[int, str, str, int]]
    #: when it is due (None: at once, or not submitted)
    due: float | None
    #: the detail of its "submitted" event ("" when it is not submitted)
    detail: str

    @classmethod
    def of(cls, message: MessageData, submit_at: datetime | None) -> _EncodedMessage:
        props, due = _message_props(message, submit_at)
        bag, streams = split_streams(props)
        submitted = submit_at is not None
        return cls(
            bag=encode_bag(bag),
            streams=streams,
            recipients=_recipient_rows(message.recipients, submitted, encode_bag),
            due=due,
            detail=_submitted_detail(props, message, due) if submitted else "",
        )


def _submitted_detail(props: Props, message: MessageData, due: float | None) -> str:
    when = f", not before {props[T.PR_DEFERRED_SEND_TIME].isoformat()}" if due else ""
    return f"{len(message.recipients)} recipient(s){when}"


def _recipient_rows(
    recipients: Sequence[Recipient], submitted: bool, encode: Callable[[Props], str]
) -> list[tuple[int, str, str, int]]:
    """(row_id, bag, state, reported) of each recipient of a new message."""
    rows = []
    for n, recip in enumerate(recipients):
        row_props = dict(recip.props)
        row_props.pop(T.PR_ROWID, None)
        state, reported = "pending", 0
        if submitted:
            # PR_RESPONSIBILITY FALSE, except rows already delivered earlier (MAPI_SUBMITTED, §6.5).
            done = bool(int(row_props.get(T.PR_RECIPIENT_TYPE, 1)) & MAPI_SUBMITTED)
            row_props[T.PR_RESPONSIBILITY] = done
            state, reported = ("delivered", 1) if done else ("pending", 0)
        rows.append((n, encode(row_props), state, reported))
    return rows


class _LastBag:
    """encode_bag that remembers its last bag: a batch to one address encodes its row once."""

    def __init__(self) -> None:
        self._props: Props | None = None
        self._text = ""

    def __call__(self, props: Props) -> str:
        if props != self._props:
            self._props, self._text = props, encode_bag(props)
        return self._text


_TO, _CC, _BCC = int(RecipientType.TO), int(RecipientType.CC), int(RecipientType.BCC)


def refresh_display_lists(props: Props, recipients: Sequence[Recipient]) -> None:
    """PR_DISPLAY_TO/CC/BCC are computed from the recipient table, as a store does."""
    if len(recipients) == 1 and recipients[0].recipient_type == _TO:  # a batch to many people, one each
        props[T.PR_DISPLAY_TO] = recipients[0].display_name
        props[T.PR_DISPLAY_CC] = props[T.PR_DISPLAY_BCC] = ""
        return
    lists: dict[RecipientType, list[str]] = {RecipientType.TO: [], RecipientType.CC: [], RecipientType.BCC: []}
    for r in recipients:
        if r.recipient_type & MAPI_P1:
            continue
        if r.kind in lists:
            lists[r.kind].append(r.display_name)
    props[T.PR_DISPLAY_TO] = "; ".join(lists[RecipientType.TO])
    props[T.PR_DISPLAY_CC] = "; ".join(lists[RecipientType.CC])
    props[T.PR_DISPLAY_BCC] = "; ".join(lists[RecipientType.BCC])


def read_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def exactly(size: int, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks of an attachment of `size` bytes; MAPI_E_CORRUPT_DATA if it grows or shrinks meanwhile."""
    written = 0
    for chunk in chunks:
        if written + len(chunk) > size:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "attachment grew while it was being stored")
        yield chunk
        written += len(chunk)
    if written != size:
        raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "attachment shrank while it was being stored")


def stream_size(stream: IO[bytes], hint: int | None) -> int:
    if hint is not None:
        return hint
    try:
        return os.fstat(stream.fileno()).st_size - stream.tell()
    except (OSError, AttributeError, ValueError):
        pos = stream.tell()
        stream.seek(0, os.SEEK_END)
        end = stream.tell()
        stream.seek(pos)
        return end - pos


class NoClose:
    """Lends a caller's stream to the store without closing it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._s = stream

    def read(self, n: int = -1) -> bytes:
        return self._s.read(n)

    def fileno(self) -> int:
        return self._s.fileno()

    def tell(self) -> int:
        return self._s.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._s.seek(pos, whence)

    def __enter__(self) -> NoClose:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
