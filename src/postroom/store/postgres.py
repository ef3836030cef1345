"""The shared message store: one PostgreSQL database for every postroom process, on any machine.

The database is the only coordination point. Spoolers claim due messages with
`FOR UPDATE SKIP LOCKED` and a lease written in the row: a process that dies loses its
claims when the lease runs out and another one takes over. Submitting notifies listeners
with LISTEN/NOTIFY (delivered at commit, never for a rolled-back change); a notification
missed while a listener was reconnecting is covered by the spooler's slow safety scan.

The semantics, error codes and tables are those of the SQLite store (sqlite.py): property
bags are the same JSON text (codec.encode_bag), times the same epoch seconds, and IDs the
same never-reused identities, so `postroom store copy` moves a store both ways unchanged.
The connection is a psycopg 3 pool; every operation is one transaction, and batch() puts
several into one transaction, each in its own savepoint (group commit).

The password is never part of the profile: libpq finds it in PGPASSWORD, a pgpass file or
a service file, or the profile names an environment variable (`store_password_env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, ClassVar, cast

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from ..mapi.entryid import MAPIUID, make_entry_id
from ..mapi.flags import MAPI_SUBMITTED, AttachMethod, MessageFlags, SubmitFlags
from ..mapi.message import Attachment, MessageData, Props, Recipient
from . import is_postgres_url, redact_url
from .base import (
    SPECIAL_FOLDER_NAMES,
    Event,
    Folder,
    FolderRole,
    LeaseLost,
    MessageStore,
    MessageSummary,
    QueueEntry,
    QueueState,
    RecipientOutcome,
    RecipientState,
    RecipientStatus,
    WaitKind,
)
from .codec import decode_bag, encode_bag, from_epoch, to_epoch
from .migrations import LATEST, newer_schema, older_schema, postgres_version, upgrade_postgres
from .notify import Listener, Notification, NotificationBus
from .sqlite import (
    _SUMMARY_TAGS,
    CHUNK,
    FOLDER_ENTRY,
    MESSAGE_ENTRY,
    OFFLINE_EPOCH,
    USAGE_KEEP_SECONDS,
    _NoClose,
    _refresh_display_lists,
    _stream_size,
    now_fallback,
)

log = logging.getLogger("postroom.store")

Conn = psycopg.Connection[tuple[Any, ...]]

MAX_ID = (1 << 63) - 1
MAX_BYTEA = (1 << 30) - 1  # PostgreSQL's limit for one value
MAX_PAYLOAD = 7900  # NOTIFY payloads must stay below 8000 bytes
#: pg_advisory_xact_lock keys (class, object) for rows that are replaced wholesale.
LOCK_STATUS_ROWS = 1
LOCK_TRANSPORT = 2
_BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_BINARY_TRAILER = b"\xff\xff"


# --- URLs and passwords ------------------------------------------------------------------------------
def connection_kwargs(password_env: str | None) -> dict[str, Any]:
    """libpq connection arguments beyond the URL: the password from `password_env`, if named."""
    kwargs: dict[str, Any] = {"application_name": "postroom"}
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise MAPIError(
                HResult.MAPI_E_LOGON_FAILED,
                f"the profile says the store password is in ${password_env}, but it is not set",
            )
        kwargs["password"] = value
    return kwargs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _clean(text: str | None) -> str | None:
    """Free text (errors, reasons, history) as PostgreSQL can store it: no NUL, valid UTF-8."""
    if text is None:
        return None
    if "\0" in text:
        text = text.replace("\0", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _valid_id(value: int | None) -> int | None:
    return value if value is not None and 0 < value <= MAX_ID else None


# --- notifications on LISTEN/NOTIFY -------------------------------------------------------------------
class PgNotificationBus(NotificationBus):
    """The NotificationBus API on LISTEN/NOTIFY: one channel per store (database and schema)."""

    def __init__(self, store: PostgresStore, channel: str) -> None:
        self.directory = Path(os.devnull)  # the base class's socket directory: not used here
        self._store = store
        self.channel = channel

    def publish(self, kind: str, **data: Any) -> None:
        """Notify every listener; never raises (a notification is a hint, the store is the truth)."""
        payload = _payload(kind, data)
        try:
            with self._store._pool.connection() as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
        except Exception as exc:  # the store is the truth: a lost hint only delays work to the safety scan
            log.debug("could not publish %s: %s", kind, exc)

    def listen(self) -> PgListener:
        return PgListener(self)


def _payload(kind: str, data: Mapping[str, Any]) -> str:
    text = Notification(kind, dict(data)).encode().decode()
    if len(text.encode()) > MAX_PAYLOAD:
        text = Notification(kind, {}).encode().decode()
    return text


class PgListener(Listener):
    """A subscription on its own connection: LISTEN at once, delivered into an asyncio queue on attach().

    If the connection is lost it reconnects by itself, and puts a "queue" notification in the
    queue each time, so the consumer rescans for what it may have missed.
    """

    RETRY_SECONDS = 2.0

    def __init__(self, bus: PgNotificationBus) -> None:
        self._bus = bus
        self.path = Path(os.devnull)
        self._queue: asyncio.Queue[Notification] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self._fd: int | None = None  # the socket being watched (a broken connection no longer tells it)
        self._conn: Conn | None = self._connect()

    def _connect(self) -> Conn:
        conn = self._bus._store._connect(timeout=5)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._bus.channel)))
        return conn

    def attach(self) -> asyncio.Queue[Notification]:
        if self._queue is None:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            if self._conn is not None:
                self._watch(self._conn)
                self._loop.call_soon(self._on_readable)  # what arrived before attach()
        return self._queue

    def _on_readable(self) -> None:
        conn, queue = self._conn, self._queue
        if conn is None or queue is None or self._closed:
            return
        try:
            for n in conn.notifies(timeout=0):
                note = Notification.decode(n.payload.encode())
                if note is not None:
                    queue.put_nowait(note)
        except (psycopg.Error, OSError) as exc:
            log.warning("lost the notification connection to the store (%s); reconnecting", _first_line(exc))
            self._drop()
            queue.put_nowait(Notification("queue", {"reconnect": True}))
            self._schedule_reconnect()

    def _watch(self, conn: Conn) -> None:
        assert self._loop is not None
        self._fd = conn.fileno()
        self._loop.add_reader(self._fd, self._on_readable)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        fd, self._fd = self._fd, None
        if self._loop is not None and fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _schedule_reconnect(self) -> None:
        if self._loop is not None and not self._closed:
            self._retry = self._loop.call_later(self.RETRY_SECONDS, self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        if self._closed or self._loop is None:
            return
        try:
            self._conn = self._connect()
        except (psycopg.Error, OSError, MAPIError):
            self._schedule_reconnect()
            return
        self._watch(self._conn)
        if self._queue is not None:  # anything may have happened meanwhile: rescan
            self._queue.put_nowait(Notification("queue", {"reconnect": True}))

    def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._drop()

    def __enter__(self) -> PgListener:
        return self


# --- the store ---------------------------------------------------------------------------------------
class PostgresStore(MessageStore):
    """A message store in a PostgreSQL database (or one schema of it, from the URL's search_path)."""

    def __init__(
        self,
        url: str,
        *,
        password_env: str | None = None,
        migrate: bool = False,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        if not is_postgres_url(url):
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "a PostgreSQL store is named by a postgresql:// URL")
        self.url = url
        self.display_url = redact_url(url)
        self._kwargs: dict[str, Any] = {"autocommit": True, **connection_kwargs(password_env)}
        self._connect_timeout = connect_timeout
        self._local = threading.local()
        self._special: dict[FolderRole, Folder] = {}
        #: The schema version found before this open migrated it (None: created now).
        self.migrated_from: int | None = None
        with self._connect() as conn:
            try:
                self._setup(conn, migrate)
            except psycopg.Error as exc:
                raise MAPIError(
                    HResult.MAPI_E_CALL_FAILED,
                    f"cannot set up the message store {self.display_url}: {_first_line(exc)}",
                ) from exc
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            kwargs=self._kwargs,
            min_size=1,
            max_size=max(1, pool_size),
            open=False,
            check=ConnectionPool.check_connection,
            name="postroom-store",
            timeout=60.0,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise MAPIError(
                HResult.MAPI_E_NETWORK_ERROR, f"cannot connect to the message store {self.display_url}: {exc}"
            ) from exc
        self.bus: PgNotificationBus = PgNotificationBus(self, self._channel)

    def _connect(self, timeout: float | None = None) -> Conn:
        try:
            return psycopg.connect(
                self.url, connect_timeout=max(1, int(timeout or self._connect_timeout)), **self._kwargs
            )
        except psycopg.Error as exc:
            raise MAPIError(
                HResult.MAPI_E_NETWORK_ERROR,
                f"cannot connect to the message store {self.display_url}: {_first_line(exc)}",
            ) from exc

    def _setup(self, conn: Conn, migrate: bool) -> None:
        version = postgres_version(conn)
        if version is not None and version > LATEST:
            raise newer_schema(self.display_url, version)
        if version is None or migrate:
            self.migrated_from, _ = upgrade_postgres(conn, where=self.display_url, create=_create_defaults)
        elif version < LATEST:
            raise older_schema(self.display_url, version)
        else:
            self.migrated_from = version
        row = conn.execute("SELECT value FROM meta WHERE key='store_uid'").fetchone()
        if row is None:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"{self.display_url}: the store has no store_uid")
        self._uid = MAPIUID(bytes.fromhex(str(row[0])))
        schema = conn.execute("SELECT current_schema()").fetchone()
        name = str(schema[0]) if schema and schema[0] else "public"
        self._channel = "postroom" if name == "public" else f"postroom.{name}"[:63]

    @property
    def schema_version(self) -> int:
        return LATEST

    # --- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        """One transaction: all or nothing. Inside batch() (or another transaction) it is a savepoint."""
        conn: Conn | None = getattr(self._local, "conn", None)
        try:
            if conn is not None:
                with conn.transaction():
                    yield conn
                return
            with self._pool.connection() as conn:
                self._local.conn = conn
                try:
                    with conn.transaction():
                        yield conn
                finally:
                    self._local.conn = None
        except (psycopg.DataError, psycopg.OperationalError) as exc:
            raise self._mapi_error(exc) from exc

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group several operations into one transaction; notifications go out with its commit."""
        if getattr(self._local, "conn", None) is not None:
            yield  # already inside a batch or transaction on this thread: part of it
            return
        with self._pool.connection() as conn:
            self._local.conn = conn
            self._local.notes = []
            try:
                with conn.transaction():
                    yield
                    # NOTIFY is delivered at COMMIT, and never if the transaction is rolled back.
                    for kind, data in self._local.notes:
                        conn.execute("SELECT pg_notify(%s, %s)", (self.bus.channel, _payload(kind, data)))
            finally:
                self._local.conn = None
                self._local.notes = None

    def _publish(self, kind: str, **data: Any) -> None:
        """Notify other processes, but only of committed changes."""
        notes: list[tuple[str, dict[str, Any]]] | None = getattr(self._local, "notes", None)
        if notes is not None:
            notes.append((kind, data))
        else:
            self.bus.publish(kind, **data)

    def _q(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        conn: Conn | None = getattr(self._local, "conn", None)
        try:
            if conn is not None:
                return conn.execute(query.encode(), params).fetchall()
            with self._pool.connection() as pooled:
                return pooled.execute(query.encode(), params).fetchall()
        except (psycopg.DataError, psycopg.OperationalError) as exc:
            raise self._mapi_error(exc) from exc

    def _mapi_error(self, exc: psycopg.Error) -> MAPIError:
        """A database error as the MAPI error the callers handle (the store's other errors are MAPI ones)."""
        text = _first_line(exc)
        if isinstance(exc, psycopg.DataError):
            return MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"the store refused a value: {text}")
        if isinstance(exc, psycopg.errors.TransactionRollback):  # deadlock or serialization failure
            return MAPIError(HResult.MAPI_E_BUSY, f"the message store is busy, try again: {text}")
        return MAPIError(HResult.MAPI_E_NETWORK_ERROR, f"the message store {self.display_url} failed: {text}")

    def close(self) -> None:
        self._pool.close()

    @property
    def store_uid(self) -> bytes:
        return bytes(self._uid)

    # --- entry IDs -------------------------------------------------------------------------
    def _entry_id(self, kind: bytes, object_id: int) -> bytes:
        return make_entry_id(self._uid, kind + struct.pack("<Q", object_id))

    def _parse_entry_id(self, entry_id: bytes, kind: bytes) -> int | None:
        if len(entry_id) != 29 or entry_id[4:20] != self._uid or entry_id[20:21] != kind:
            return None
        return _valid_id(int(struct.unpack("<Q", entry_id[21:29])[0]))

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
        cached = self._special.get(role)
        if cached is None:
            rows = self._q("SELECT id, name, parent_id, role, NULL FROM folders WHERE role=%s", (role.value,))
            cached = self._special[role] = self._folder(rows[0])
        return cached

    def find_folder(self, name_or_id: str | int | bytes) -> Folder:
        rows: list[tuple[Any, ...]]
        if isinstance(name_or_id, bytes):
            fid = self._parse_entry_id(name_or_id, FOLDER_ENTRY)
            rows = self._q(self._FOLDER_SQL + " WHERE f.id=%s", (fid,)) if fid is not None else []
        elif isinstance(name_or_id, int) or name_or_id.isdigit():
            fid = _valid_id(int(name_or_id))
            rows = self._q(self._FOLDER_SQL + " WHERE f.id=%s", (fid,)) if fid is not None else []
        else:
            key = name_or_id.strip()
            rows = self._q(
                self._FOLDER_SQL + " WHERE f.role=%s OR " + _NOCASE.format("f.name") + "=" + _NOCASE.format("%s") + " "
                "ORDER BY f.id",
                (key.lower(), key),
            )
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
                row = db.execute(
                    "INSERT INTO folders (parent_id, name) VALUES (%s, %s) RETURNING id", (parent, clean)
                ).fetchone()
        except psycopg.IntegrityError as exc:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"a folder named {clean!r} exists already") from exc
        assert row is not None
        return self.find_folder(int(row[0]))

    # --- messages: writing -----------------------------------------------------------------
    _BAGS: ClassVar[dict[str, tuple[str, str]]] = {
        "props": ("messages", "id=%s"),
        "recipient_props": ("recipients", "message_id=%s AND row_id=%s"),
        "attachment_props": ("attachments", "id=%s"),
    }

    def _insert_props(self, db: Conn, table: str, key: tuple[Any, ...], props: Props) -> None:
        self._merge_props(db, table, key, props, ())

    def _merge_props(self, db: Conn, table: str, key: tuple[Any, ...], props: Props, delete: Iterable[int]) -> None:
        name, where = self._BAGS[table]
        row = db.execute(f"SELECT props FROM {name} WHERE {where} FOR UPDATE".encode(), key).fetchone()
        bag = decode_bag(row[0]) if row else {}
        bag.update({t: v for t, v in props.items() if v is not None})
        for t in delete:
            bag.pop(t, None)
        db.execute(f"UPDATE {name} SET props=%s WHERE {where}".encode(), (encode_bag(bag), *key))

    def _insert_message(
        self, db: Conn, folder_id: int | None, message: MessageData, submit_at: datetime | None = None
    ) -> int:
        props = dict(message.props)
        props.setdefault(T.PR_MESSAGE_CLASS, "IPM.Note")
        props.setdefault(T.PR_MESSAGE_FLAGS, int(MessageFlags.UNSENT | MessageFlags.UNMODIFIED))
        if message.attachments:
            props[T.PR_MESSAGE_FLAGS] = int(props[T.PR_MESSAGE_FLAGS]) | MessageFlags.HASATTACH
            props[T.PR_HASATTACH] = True
        for tag in (T.PR_ENTRYID, T.PR_SUBMIT_FLAGS, T.PR_INSTANCE_KEY, T.PR_ROWID):
            props.pop(tag, None)
        _refresh_display_lists(props, message.recipients)
        due: float | None = None
        if submit_at is not None:
            if not message.recipients:
                raise MAPIError(HResult.MAPI_E_NO_RECIPIENTS, "the message has no recipients")
            flags = int(props[T.PR_MESSAGE_FLAGS]) | MessageFlags.SUBMIT | MessageFlags.UNSENT
            flags &= ~MessageFlags.UNMODIFIED
            props[T.PR_MESSAGE_FLAGS] = flags
            props[T.PR_CLIENT_SUBMIT_TIME] = submit_at
            deferred = props.get(T.PR_DEFERRED_SEND_TIME)
            due = to_epoch(deferred) if isinstance(deferred, datetime) and deferred > submit_at else None
        row = db.execute(
            "INSERT INTO messages (folder_id, props, queue_state, submit_time, next_attempt, wait_kind) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (
                folder_id,
                encode_bag(props),
                "queued" if submit_at else None,
                to_epoch(submit_at),
                due,
                WaitKind.SCHEDULED.value if due else None,
            ),
        ).fetchone()
        assert row is not None
        mid = int(row[0])
        self._insert_recipients(db, mid, message.recipients, submitted=submit_at is not None)
        for att in message.attachments:
            self._insert_attachment(db, mid, att)
        if submit_at is not None:
            when = f", not before {props[T.PR_DEFERRED_SEND_TIME].isoformat()}" if due else ""
            self._event(db, mid, submit_at, "submitted", f"{len(message.recipients)} recipient(s){when}")
        return mid

    def _insert_recipients(self, db: Conn, mid: int, recipients: Sequence[Recipient], submitted: bool = False) -> None:
        rows = []
        for n, recip in enumerate(recipients):
            row_props = dict(recip.props)
            row_props.pop(T.PR_ROWID, None)
            state, reported = "pending", 0
            if submitted:
                done = bool(int(row_props.get(T.PR_RECIPIENT_TYPE, 1)) & MAPI_SUBMITTED)
                row_props[T.PR_RESPONSIBILITY] = done
                state, reported = ("delivered", 1) if done else ("pending", 0)
            rows.append((mid, n, encode_bag(row_props), state, reported))
        if rows:
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO recipients (message_id, row_id, props, state, reported) VALUES (%s, %s, %s, %s, %s)",
                    rows,
                )

    def _insert_attachment(self, db: Conn, mid: int, att: Attachment, num: int | None = None) -> int:
        if num is None:
            row = db.execute("SELECT coalesce(max(num) + 1, 0) FROM attachments WHERE message_id=%s", (mid,)).fetchone()
            assert row is not None
            num = int(row[0])
        props = dict(att.props)
        props[T.PR_ATTACH_NUM] = num
        if att.embedded is not None:
            inner = self._insert_message(db, None, att.embedded)
            props[T.PR_ATTACH_METHOD] = int(AttachMethod.EMBEDDED_MSG)
            row = db.execute(
                "INSERT INTO attachments (message_id, num, embedded_id) VALUES (%s, %s, %s) RETURNING id",
                (mid, num, inner),
            ).fetchone()
            assert row is not None
            aid = int(row[0])
            db.execute("UPDATE messages SET parent_attach=%s WHERE id=%s", (aid, inner))
        else:
            props.setdefault(T.PR_ATTACH_METHOD, int(AttachMethod.BY_VALUE))
            with att.open() as stream:
                size = _stream_size(stream, att.size)
                aid = self._write_attachment_data(db, mid, num, stream, size)
            props[T.PR_ATTACH_SIZE] = size
        db.execute("UPDATE attachments SET props=%s WHERE id=%s", (encode_bag(props), aid))
        return int(num)

    def _write_attachment_data(self, db: Conn, mid: int, num: int, stream: IO[bytes], size: int) -> int:
        """Store `size` bytes from `stream`; a large attachment is streamed (binary COPY), never held whole."""
        if size <= CHUNK:
            data = stream.read(size + 1)
            if len(data) != size:
                raise MAPIError(
                    HResult.MAPI_E_CORRUPT_DATA,
                    "attachment " + ("grew" if len(data) > size else "shrank") + " while it was being stored",
                )
            row = db.execute(
                "INSERT INTO attachments (message_id, num, data) VALUES (%s, %s, %s) RETURNING id", (mid, num, data)
            ).fetchone()
            assert row is not None
            return int(row[0])
        if size > MAX_BYTEA:
            raise MAPIError(
                HResult.MAPI_E_NO_SUPPORT, f"a PostgreSQL store keeps at most 1 GiB per attachment, not {size}"
            )
        row = db.execute("SELECT nextval(pg_get_serial_sequence('attachments', 'id'))").fetchone()
        assert row is not None
        aid = int(row[0])
        copy_attachment_in(db, aid, mid, num, size, _chunks(stream))
        return aid

    def create_message(self, folder_id: int, message: MessageData) -> int:
        with self._tx() as db:
            return self._insert_message(db, folder_id, message)

    def _check_modifiable(self, db: Conn, message_id: int) -> None:
        row = db.execute("SELECT queue_state FROM messages WHERE id=%s FOR UPDATE", (message_id,)).fetchone()
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
            db.execute("DELETE FROM recipients WHERE message_id=%s", (message_id,))
            self._insert_recipients(db, message_id, recipients)
            props = self._load_props(db, message_id)
            _refresh_display_lists(props, recipients)
            self._insert_props(
                db, "props", (message_id,), {t: props[t] for t in (T.PR_DISPLAY_TO, T.PR_DISPLAY_CC, T.PR_DISPLAY_BCC)}
            )

    def add_attachment(self, message_id: int, props: Props, content: IO[bytes] | bytes, size: int | None = None) -> int:
        att = Attachment(props=dict(props), data=content if isinstance(content, bytes) else None, size=size)
        if not isinstance(content, bytes):
            stream = content
            att.opener = lambda: cast(IO[bytes], _NoClose(stream))
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
    def _load_props(self, db: Conn, message_id: int) -> Props:
        row = db.execute("SELECT props FROM messages WHERE id=%s", (message_id,)).fetchone()
        return decode_bag(row[0]) if row else {}

    def _load_message(self, db: Conn, message_id: int) -> MessageData:
        row = db.execute(
            "SELECT queue_state, lease_owner, lease_until, props FROM messages WHERE id=%s", (message_id,)
        ).fetchone()
        if row is None:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {message_id}")
        props = decode_bag(row[3])
        props[T.PR_ENTRYID] = self.entry_id_of(message_id)
        props[T.PR_RECORD_KEY] = props[T.PR_ENTRYID]
        submit_flags = SubmitFlags.LOCKED if row[1] is not None else SubmitFlags.NONE
        if row[0] is not None or submit_flags:
            props[T.PR_SUBMIT_FLAGS] = int(submit_flags)
        recipients: dict[int, Recipient] = {
            rid: Recipient(props=decode_bag(bag), row_id=rid)
            for rid, bag in db.execute(
                "SELECT row_id, props FROM recipients WHERE message_id=%s ORDER BY row_id", (message_id,)
            ).fetchall()
        }
        for rec in recipients.values():
            rec.props[T.PR_ROWID] = rec.row_id
        attachments = []
        for aid, num, embedded_id, size, bag in db.execute(
            "SELECT id, num, embedded_id, octet_length(data), props FROM attachments WHERE message_id=%s ORDER BY num",
            (message_id,),
        ).fetchall():
            att = Attachment(props=decode_bag(bag), num=num, size=size)
            if embedded_id is not None:
                att.embedded = self._load_message(db, embedded_id)
            else:
                att.opener = self._blob_opener(int(aid), int(size or 0))
            attachments.append(att)
        return MessageData(props=props, recipients=list(recipients.values()), attachments=attachments)

    def _blob_opener(self, attachment_id: int, size: int) -> Callable[[], IO[bytes]]:
        def opener() -> IO[bytes]:
            return cast(IO[bytes], _PgBlobReader(self, attachment_id, size))

        return opener

    def open_message(self, message_id: int) -> MessageData:
        if _valid_id(message_id) is None:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {message_id}")
        with self._tx() as db:
            return self._load_message(db, message_id)

    def list_messages(self, folder_id: int, limit: int | None = None) -> list[MessageSummary]:
        query = "SELECT m.id, m.folder_id, m.props FROM messages m WHERE m.folder_id=%s ORDER BY m.id" + (
            " LIMIT %s" if limit is not None else ""
        )
        params: list[Any] = [folder_id] + ([limit] if limit is not None else [])
        out = []
        for mid, fid, bag in self._q(query, params):
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
        rows = self._q("SELECT folder_id FROM messages WHERE id=%s", (_valid_id(message_id),))
        if not rows:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {message_id}")
        return None if rows[0][0] is None else int(rows[0][0])

    def resolve_message(self, ref: str | int | bytes) -> int:
        mid: int | None
        if isinstance(ref, bytes):
            mid = self._parse_entry_id(ref, MESSAGE_ENTRY)
        elif isinstance(ref, int) or ref.strip().isdigit():
            mid = _valid_id(int(ref))
        else:
            try:
                mid = self._parse_entry_id(bytes.fromhex(ref.strip()), MESSAGE_ENTRY)
            except ValueError:
                mid = None
        if mid is None or not self._q("SELECT 1 FROM messages WHERE id=%s AND folder_id IS NOT NULL", (mid,)):
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {ref!r} in this store")
        return mid

    def _delete(self, db: Conn, message_id: int) -> None:
        embedded = [
            int(e)
            for (e,) in db.execute(
                "SELECT embedded_id FROM attachments WHERE message_id=%s AND embedded_id IS NOT NULL", (message_id,)
            ).fetchall()
        ]
        db.execute("DELETE FROM messages WHERE id=%s", (message_id,))  # its recipients and attachments go with it
        for inner in embedded:
            self._delete(db, inner)

    def delete_message(self, message_id: int) -> None:
        with self._tx() as db:
            row = db.execute(
                "SELECT lease_owner FROM messages WHERE id=%s FOR UPDATE", (_valid_id(message_id),)
            ).fetchone()
            if row is None:
                raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {message_id}")
            if row[0] is not None:
                raise MAPIError(HResult.MAPI_E_NO_ACCESS, f"message {message_id} is locked by the spooler")
            self._delete(db, message_id)

    def move_message(self, message_id: int, folder_id: int) -> None:
        with self._tx() as db:
            self._check_modifiable(db, message_id)
            db.execute("UPDATE messages SET folder_id=%s WHERE id=%s", (folder_id, message_id))

    # --- submission --------------------------------------------------------------------------
    def submit(self, message_id: int, now: datetime, stamp: Props | None = None) -> None:
        with self._tx() as db:
            self._submit_in(db, message_id, now, stamp)
        self._publish("submitted", message_id=message_id)

    def create_and_submit(self, folder_id: int, message: MessageData, now: datetime) -> int:
        with self._tx() as db:
            mid = self._insert_message(db, folder_id, message, submit_at=now)
        self._publish("submitted", message_id=mid)
        return mid

    def _submit_in(self, db: Conn, message_id: int, now: datetime, stamp: Props | None) -> None:
        self._check_modifiable(db, message_id)
        if stamp:
            self._insert_props(db, "props", (message_id,), stamp)
        rows = db.execute("SELECT row_id, props FROM recipients WHERE message_id=%s", (message_id,)).fetchall()
        if not rows:
            raise MAPIError(HResult.MAPI_E_NO_RECIPIENTS, f"message {message_id} has no recipients")
        props = self._load_props(db, message_id)
        flags = int(props.get(T.PR_MESSAGE_FLAGS, 0))
        flags = (flags | MessageFlags.SUBMIT | MessageFlags.UNSENT) & ~MessageFlags.UNMODIFIED
        props[T.PR_MESSAGE_FLAGS] = flags
        props[T.PR_CLIENT_SUBMIT_TIME] = now
        db.execute("UPDATE messages SET props=%s WHERE id=%s", (encode_bag(props), message_id))
        updates = []
        for rid, bag in rows:
            row_props = decode_bag(bag)
            submitted = bool(int(row_props.get(T.PR_RECIPIENT_TYPE, 1)) & MAPI_SUBMITTED)
            row_props[T.PR_RESPONSIBILITY] = submitted
            updates.append(
                ("delivered" if submitted else "pending", 1 if submitted else 0, encode_bag(row_props), message_id, rid)
            )
        with db.cursor() as cur:
            cur.executemany(
                "UPDATE recipients SET state=%s, transport=NULL, outcome_time=NULL, reported=%s, props=%s "
                "WHERE message_id=%s AND row_id=%s",
                updates,
            )
        deferred = props.get(T.PR_DEFERRED_SEND_TIME)
        due = to_epoch(deferred) if isinstance(deferred, datetime) and deferred > now else None
        db.execute(
            "UPDATE messages SET queue_state='queued', submit_time=%s, next_attempt=%s, attempts=0, last_error=NULL, "
            "wait_kind=%s, lease_owner=NULL, lease_until=NULL WHERE id=%s",
            (to_epoch(now), due, WaitKind.SCHEDULED.value if due else None, message_id),
        )
        self._event(
            db,
            message_id,
            now,
            "submitted",
            f"{len(rows)} recipient(s)" + (f", not before {deferred.isoformat()}" if due and deferred else ""),
        )

    def abort_submit(self, message_id: int, now: datetime) -> None:
        with self._tx() as db:
            row = db.execute(
                "SELECT queue_state, lease_owner FROM messages WHERE id=%s FOR UPDATE", (_valid_id(message_id),)
            ).fetchone()
            if row is None or row[0] is None:
                raise MAPIError(
                    HResult.MAPI_E_NOT_IN_QUEUE,
                    f"message {message_id} is not in the outgoing queue (already sent, or never submitted)",
                )
            if row[1] is not None:
                raise MAPIError(
                    HResult.MAPI_E_UNABLE_TO_ABORT,
                    f"message {message_id} is locked by spooler {row[1]} and cannot be aborted now",
                )
            props = self._load_props(db, message_id)
            flags = int(props.get(T.PR_MESSAGE_FLAGS, 0)) & ~MessageFlags.SUBMIT
            self._insert_props(db, "props", (message_id,), {T.PR_MESSAGE_FLAGS: flags})
            db.execute("UPDATE messages SET queue_state=NULL, next_attempt=NULL WHERE id=%s", (message_id,))
            self._event(db, message_id, now, "aborted", "submission aborted (AbortSubmit)")

    # --- the outgoing queue ------------------------------------------------------------------
    def queue(self, only: int | None = None) -> list[QueueEntry]:
        query = (
            "SELECT m.id, m.queue_state, m.submit_time, m.next_attempt, m.lease_owner, m.attempts, m.last_error, "
            "m.wait_kind, m.prev_owner, m.hold_reason, m.props, "
            "(SELECT count(*) FROM recipients r WHERE r.message_id=m.id AND r.state='pending'), "
            "(SELECT count(*) FROM recipients r WHERE r.message_id=m.id) "
            + (
                "FROM messages m WHERE m.id = %s AND m.queue_state IS NOT NULL"
                if only is not None
                else "FROM messages m WHERE m.queue_state IS NOT NULL ORDER BY m.submit_time, m.id"
            )
        )
        if only is not None and _valid_id(only) is None:
            return []
        out = []
        for (
            mid,
            state,
            submit,
            nxt,
            owner,
            attempts,
            error,
            kind,
            prev,
            hold,
            bag,
            pending,
            total,
        ) in self._q(query, (only,) if only is not None else ()):
            shown = _summary_fields(bag)
            out.append(
                QueueEntry(
                    id=int(mid),
                    entry_id=self.entry_id_of(mid),
                    subject=shown.get(T.PR_SUBJECT) or "",
                    display_to=shown.get(T.PR_DISPLAY_TO) or "",
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
                )
            )
        return out

    def queue_entry(self, message_id: int) -> QueueEntry | None:
        return next((q for q in self.queue(message_id) if q.id == message_id), None)

    def claim(self, owner: str, now: datetime, lease_seconds: float, limit: int = 1) -> list[int]:
        """Lock up to `limit` due messages: rows another transaction is claiming are skipped, not waited for."""
        t = to_epoch(now)
        assert t is not None
        with self._tx() as db:
            rows = db.execute(
                "UPDATE messages SET prev_owner=lease_owner, lease_owner=%s, lease_until=%s, attempts=attempts+1 "
                "WHERE id IN ("
                " SELECT id FROM messages WHERE queue_state='queued' AND coalesce(next_attempt, 0) <= %s"
                " AND (lease_owner IS NULL OR lease_until < %s) ORDER BY submit_time, id LIMIT %s"
                " FOR UPDATE SKIP LOCKED"
                ") RETURNING id, submit_time",
                (_clean(owner), t + lease_seconds, t, t, limit),
            ).fetchall()
        return [int(mid) for mid, _ in sorted(rows, key=lambda r: (r[1], r[0]))]

    def _check_owner(self, db: Conn, message_id: int, owner: str) -> None:
        """Ours, and locked until this transaction ends: nobody can take it over in between."""
        row = db.execute("SELECT lease_owner FROM messages WHERE id=%s FOR UPDATE", (message_id,)).fetchone()
        if row is None or row[0] != owner:
            raise LeaseLost(f"message {message_id} is no longer claimed by {owner}")

    def renew_lease(self, message_id: int, owner: str, now: datetime, lease_seconds: float) -> None:
        t = to_epoch(now)
        assert t is not None
        with self._tx() as db:
            self._check_owner(db, message_id, owner)
            db.execute("UPDATE messages SET lease_until=%s WHERE id=%s", (t + lease_seconds, message_id))

    def next_due(self) -> datetime | None:
        rows = self._q(
            "SELECT min(CASE WHEN lease_owner IS NOT NULL THEN lease_until ELSE coalesce(next_attempt, 0) END) "
            "FROM messages WHERE queue_state='queued' AND coalesce(wait_kind, '') != 'send_receive'"
        )
        return from_epoch(rows[0][0]) if rows and rows[0][0] is not None else None

    def recipient_states(self, message_id: int) -> list[RecipientStatus]:
        return [
            RecipientStatus(
                row_id=rid, state=RecipientState(state), transport=xp, outcome_time=from_epoch(t), reported=bool(rep)
            )
            for rid, state, xp, t, rep in self._q(
                "SELECT row_id, state, transport, outcome_time, reported FROM recipients "
                "WHERE message_id=%s ORDER BY row_id",
                (_valid_id(message_id),),
            )
        ]

    def record_outcomes(self, message_id: int, owner: str, outcomes: Sequence[RecipientOutcome], now: datetime) -> None:
        with self._tx() as db:
            self._check_owner(db, message_id, owner)
            self._record_in(db, message_id, outcomes, now)

    def _record_in(self, db: Conn, message_id: int, outcomes: Sequence[RecipientOutcome], now: datetime) -> None:
        for out in outcomes:
            cur = db.execute(
                "UPDATE recipients SET state=%s, transport=%s, outcome_time=%s, reported=%s "
                "WHERE message_id=%s AND row_id=%s AND state='pending'",
                (out.state.value, _clean(out.transport), to_epoch(now), 0 if out.report else 1, message_id, out.row_id),
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
                out.state.value,
                f"recipient {out.row_id}" + (f": {text}" if text else ""),
                out.transport,
            )

    def deliver_report(
        self, message_id: int, owner: str, report: MessageData, folder_id: int, row_ids: Sequence[int], now: datetime
    ) -> int:
        with self._tx() as db:
            self._check_owner(db, message_id, owner)
            rid = self._insert_message(db, folder_id, report)
            if row_ids:
                with db.cursor() as cur:
                    cur.executemany(
                        "UPDATE recipients SET reported=1 WHERE message_id=%s AND row_id=%s",
                        [(message_id, r) for r in row_ids],
                    )
            self._event(db, message_id, now, "report", f"{report.message_class} stored as message {rid}")
        self._publish("newmail", message_id=rid, folder_id=folder_id, message_class=report.message_class)
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
    ) -> None:
        due = to_epoch(next_attempt)
        if wait_kind is WaitKind.SEND_RECEIVE:
            due = OFFLINE_EPOCH
        with self._tx() as db:
            self._check_owner(db, message_id, owner)
            self._record_in(db, message_id, outcomes, now)
            db.execute(
                "UPDATE messages SET lease_owner=NULL, lease_until=NULL, next_attempt=%s, wait_kind=%s, "
                "last_error=coalesce(%s, last_error) WHERE id=%s",
                (due, wait_kind.value, _clean(error), message_id),
            )
            when = f" until {next_attempt.isoformat(timespec='seconds')}" if next_attempt else ""
            if wait_kind is WaitKind.SEND_RECEIVE:
                when = " (offline: waiting for Send/Receive)"
            self._event(db, message_id, now, "waiting", (error or "pending recipients") + when)

    def hold(self, message_id: int, now: datetime, reason: str, owner: str | None = None) -> None:
        with self._tx() as db:
            row = db.execute(
                "SELECT queue_state, lease_owner FROM messages WHERE id=%s FOR UPDATE", (_valid_id(message_id),)
            ).fetchone()
            if row is None or row[0] is None:
                raise MAPIError(HResult.MAPI_E_NOT_IN_QUEUE, f"message {message_id} is not in the outgoing queue")
            if row[0] == QueueState.HELD.value:
                raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"message {message_id} is already held")
            if row[1] is not None and row[1] != owner:
                raise MAPIError(
                    HResult.MAPI_E_UNABLE_TO_ABORT, f"message {message_id} is being delivered by {row[1]}; try again"
                )
            db.execute(
                "UPDATE messages SET queue_state='held', hold_reason=%s, lease_owner=NULL, lease_until=NULL "
                "WHERE id=%s",
                (_clean(reason), message_id),
            )
            self._event(db, message_id, now, "held", reason)

    def release_hold(self, message_id: int, now: datetime) -> None:
        with self._tx() as db:
            row = db.execute(
                "SELECT queue_state FROM messages WHERE id=%s FOR UPDATE", (_valid_id(message_id),)
            ).fetchone()
            if row is None or row[0] is None:
                raise MAPIError(HResult.MAPI_E_NOT_IN_QUEUE, f"message {message_id} is not in the outgoing queue")
            if row[0] != QueueState.HELD.value:
                raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"message {message_id} is not held")
            db.execute(
                "UPDATE messages SET queue_state='queued', hold_reason=NULL, next_attempt=NULL, wait_kind=NULL, "
                "prev_owner=NULL WHERE id=%s",
                (message_id,),
            )
            self._event(db, message_id, now, "released", "released from hold")
        self._publish("queue", message_id=message_id)

    def retry_now(self, message_id: int | None, now: datetime) -> int:
        with self._tx() as db:
            if message_id is not None:
                row = db.execute(
                    "SELECT queue_state, lease_owner FROM messages WHERE id=%s FOR UPDATE", (_valid_id(message_id),)
                ).fetchone()
                if row is None or row[0] is None:
                    raise MAPIError(HResult.MAPI_E_NOT_IN_QUEUE, f"message {message_id} is not in the outgoing queue")
                if row[0] == QueueState.HELD.value:
                    raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"message {message_id} is held: release it first")
                cur = db.execute(
                    "UPDATE messages SET next_attempt=NULL, wait_kind=NULL WHERE queue_state='queued' "
                    "AND lease_owner IS NULL AND id=%s",
                    (message_id,),
                )
                ids = db.execute(
                    "SELECT id FROM messages WHERE queue_state='queued' AND id=%s", (message_id,)
                ).fetchall()
            else:
                # "retry --all" never sends a scheduled (deferred-send) message early; "retry ID" forces it.
                cur = db.execute(
                    "UPDATE messages SET next_attempt=NULL, wait_kind=NULL WHERE queue_state='queued' "
                    "AND lease_owner IS NULL AND coalesce(wait_kind, '') != 'scheduled'"
                )
                ids = db.execute("SELECT id FROM messages WHERE queue_state='queued' ORDER BY id").fetchall()
            count = cur.rowcount
            if ids:
                t = to_epoch(now)
                with db.cursor() as c:
                    c.executemany(
                        "INSERT INTO events (message_id, time, kind, transport, detail) VALUES (%s, %s, %s, %s, %s)",
                        [(mid, t, "retry", None, "retry now (ignoring backoff)") for (mid,) in ids],
                    )
        self._publish("queue", retry=count)
        return count

    def wake(self, now: datetime, kinds: Sequence[WaitKind] = (WaitKind.SEND_RECEIVE,)) -> int:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE messages SET next_attempt=NULL, wait_kind=NULL WHERE queue_state='queued' "
                "AND lease_owner IS NULL AND wait_kind = ANY(%s)",
                ([k.value for k in kinds],),
            )
            woken = cur.rowcount
        if woken:
            self._publish("queue", woken=woken)
        return woken

    def deliver_message(self, folder_id: int, message: MessageData, now: datetime) -> int:
        with self._tx() as db:
            mid = self._insert_message(db, folder_id, message)
            self._event(db, mid, now, "received", f"delivered into folder {folder_id}")
        self._publish("newmail", message_id=mid, folder_id=folder_id, message_class=message.message_class)
        return mid

    def save_status_rows(self, owner: str, rows: Sequence[tuple[str, dict[str, Any]]], now: datetime) -> None:
        with self._tx() as db:
            # Replaced wholesale: writers take turns (each DELETE then sees the rows the last one wrote).
            db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_STATUS_ROWS, 0))
            db.execute("DELETE FROM status_rows")
            if rows:
                with db.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO status_rows (name, position, row, updated, owner) VALUES (%s, %s, %s, %s, %s)",
                        [
                            (_clean(name), n, json.dumps(row), to_epoch(now), _clean(owner))
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
            row = db.execute(
                "SELECT count(*) FROM recipients WHERE message_id=%s AND state='pending'", (message_id,)
            ).fetchone()
            pending = int(row[0]) if row else 0
            if pending:
                raise MAPIError(
                    HResult.MAPI_E_CALL_FAILED, f"message {message_id} still has {pending} pending recipient(s)"
                )
            props = self._load_props(db, message_id)
            flags = int(props.get(T.PR_MESSAGE_FLAGS, 0)) & ~(MessageFlags.SUBMIT | MessageFlags.UNSENT)
            self._insert_props(db, "props", (message_id,), {T.PR_MESSAGE_FLAGS: flags})
            db.execute(
                "UPDATE messages SET queue_state=NULL, lease_owner=NULL, lease_until=NULL, next_attempt=NULL "
                "WHERE id=%s",
                (message_id,),
            )
            sentmail = props.get(T.PR_SENTMAIL_ENTRYID)
            delete = bool(props.get(T.PR_DELETE_AFTER_SUBMIT))
            outcome = "left"
            if sentmail:
                fid = self._parse_entry_id(bytes(sentmail), FOLDER_ENTRY)
                if fid is not None and db.execute("SELECT 1 FROM folders WHERE id=%s", (fid,)).fetchone():
                    db.execute("UPDATE messages SET folder_id=%s WHERE id=%s", (fid, message_id))
                    outcome = "moved"
            self._event(
                db,
                message_id,
                now,
                "finished",
                {"left": "left in the Outbox", "moved": "moved to PR_SENTMAIL_ENTRYID"}[outcome]
                if not delete
                else "deleted (PR_DELETE_AFTER_SUBMIT)",
            )
            if delete:
                self._delete(db, message_id)
                outcome = "deleted"
            return outcome

    # --- history -----------------------------------------------------------------------------
    def _event(
        self, db: Conn, message_id: int, now: datetime, kind: str, detail: str, transport: str | None = None
    ) -> None:
        db.execute(
            "INSERT INTO events (message_id, time, kind, transport, detail) VALUES (%s, %s, %s, %s, %s)",
            (message_id, to_epoch(now), _clean(kind), _clean(transport), _clean(detail)),
        )

    def add_event(self, message_id: int, now: datetime, kind: str, detail: str, transport: str | None = None) -> None:
        with self._tx() as db:
            self._event(db, message_id, now, kind, detail, transport)

    def events(self, message_id: int) -> list[Event]:
        return [
            Event(time=from_epoch(t) or now_fallback(), kind=k, transport=xp, detail=d)
            for t, k, xp, d in self._q(
                "SELECT time, kind, transport, detail FROM events WHERE message_id=%s ORDER BY id",
                (_valid_id(message_id),),
            )
        ]

    # --- receive folders -----------------------------------------------------------------------
    def set_receive_folder(self, message_class: str, folder_id: int | None) -> None:
        from .receive import normalise_class

        cls = normalise_class(message_class)
        with self._tx() as db:
            if folder_id is None:
                if cls == "":
                    raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "the default receive folder cannot be removed")
                db.execute("DELETE FROM receive_folders WHERE message_class=%s", (cls,))
                return
            if (
                _valid_id(folder_id) is None
                or not db.execute("SELECT 1 FROM folders WHERE id=%s", (folder_id,)).fetchone()
            ):
                raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no folder {folder_id}")
            db.execute(
                "INSERT INTO receive_folders (message_class, folder_id) VALUES (%s, %s) "
                "ON CONFLICT (message_class) DO UPDATE SET folder_id=excluded.folder_id",
                (cls, folder_id),
            )

    def receive_folders(self) -> dict[str, int]:
        return {cls: int(fid) for cls, fid in self._q("SELECT message_class, folder_id FROM receive_folders")}

    # --- per-transport limits across processes (schema 2) ----------------------------------------
    def _lock_transport(self, db: Conn, transport: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_TRANSPORT, transport))

    def record_send(self, transport: str, now: datetime, owner: str | None = None) -> None:
        """Count one message handed to `transport` now (for throttles shared by every process)."""
        t = to_epoch(now)
        assert t is not None
        with self._tx() as db:
            db.execute(
                "INSERT INTO transport_usage (transport, time, owner) VALUES (%s, %s, %s)",
                (_clean(transport), t, _clean(owner)),
            )
            db.execute(
                "DELETE FROM transport_usage WHERE transport=%s AND time < %s",
                (_clean(transport), t - USAGE_KEEP_SECONDS),
            )

    def count_sends(self, transport: str, since: datetime) -> int:
        """Messages handed to `transport` after `since`, by any process."""
        rows = self._q(
            "SELECT count(*) FROM transport_usage WHERE transport=%s AND time > %s",
            (_clean(transport), to_epoch(since)),
        )
        return int(rows[0][0])

    def reserve_send(
        self, transport: str, now: datetime, limits: Sequence[tuple[int, float]], owner: str | None = None
    ) -> float:
        """Take a throttle slot atomically: 0.0 when the send is recorded, else seconds until a slot frees.

        `limits` are (at most N messages, per W seconds) pairs; 0 as N means no limit. Processes
        reserving for the same transport take turns (an advisory lock), so no limit is overrun.
        """
        t = to_epoch(now)
        assert t is not None
        name = _clean(transport)
        with self._tx() as db:
            self._lock_transport(db, transport)
            wait = 0.0
            for limit, window in limits:
                if limit <= 0:
                    continue
                row = db.execute(
                    "SELECT time FROM transport_usage WHERE transport=%s AND time > %s "
                    "ORDER BY time DESC LIMIT 1 OFFSET %s",
                    (name, t - window, limit - 1),
                ).fetchone()
                if row is not None:
                    wait = max(wait, float(row[0]) + window - t)
            if wait > 0:
                return wait
            db.execute(
                "INSERT INTO transport_usage (transport, time, owner) VALUES (%s, %s, %s)", (name, t, _clean(owner))
            )
            db.execute("DELETE FROM transport_usage WHERE transport=%s AND time < %s", (name, t - USAGE_KEEP_SECONDS))
            return 0.0

    def breaker_state(self, transport: str) -> dict[str, Any]:
        """The circuit breaker of `transport` as the spooler stored it ({} when never set)."""
        rows = self._q("SELECT state FROM breaker_state WHERE transport=%s", (_clean(transport),))
        return dict(json.loads(rows[0][0])) if rows else {}

    def set_breaker_state(self, transport: str, state: Mapping[str, Any], now: datetime) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO breaker_state (transport, state, updated) VALUES (%s, %s, %s) "
                "ON CONFLICT (transport) DO UPDATE SET state=excluded.state, updated=excluded.updated",
                (_clean(transport), json.dumps(dict(state)), to_epoch(now)),
            )

    def update_breaker_state(
        self, transport: str, change: Callable[[dict[str, Any]], Mapping[str, Any] | None], now: datetime
    ) -> dict[str, Any]:
        """Read, change and write the breaker state in one transaction (no other process in between).

        `change` gets the current state ({} when none) and returns the new one (None: unchanged).
        """
        name = _clean(transport)
        with self._tx() as db:
            self._lock_transport(db, transport)
            row = db.execute("SELECT state FROM breaker_state WHERE transport=%s", (name,)).fetchone()
            current = dict(json.loads(row[0])) if row else {}
            new = change(dict(current))
            if new is None:
                return current
            db.execute(
                "INSERT INTO breaker_state (transport, state, updated) VALUES (%s, %s, %s) "
                "ON CONFLICT (transport) DO UPDATE SET state=excluded.state, updated=excluded.updated",
                (name, json.dumps(dict(new)), to_epoch(now)),
            )
            return dict(new)


# SQLite's COLLATE NOCASE: ASCII letters fold, nothing else does.
_NOCASE = "translate({}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"


def _create_defaults(db: Conn) -> None:
    """A new store: its UID, the special folders and the default receive folders (as SQLite's)."""
    db.execute("INSERT INTO meta (key, value) VALUES ('store_uid', %s)", (uuid.uuid4().bytes_le.hex(),))

    def folder(parent: int | None, name: str, role: str) -> int:
        row = db.execute(
            "INSERT INTO folders (parent_id, name, role) VALUES (%s, %s, %s) RETURNING id", (parent, name, role)
        ).fetchone()
        assert row is not None
        return int(row[0])

    root = folder(None, "", "root")
    ipm = folder(root, "Top of Information Store", "ipm_subtree")
    ids = {role: folder(ipm, name, role.value) for role, name in SPECIAL_FOLDER_NAMES.items()}
    inbox = ids[FolderRole.INBOX]
    for cls in ("", "IPM", "REPORT"):
        db.execute("INSERT INTO receive_folders (message_class, folder_id) VALUES (%s, %s)", (cls, inbox))
    db.execute("INSERT INTO receive_folders (message_class, folder_id) VALUES ('IPC', %s)", (root,))


def _summary_fields(bag: str) -> dict[int, Any]:
    """Subject and To of a property bag, without decoding the whole bag."""
    try:
        raw = json.loads(bag)
    except ValueError:
        return {}
    return {tag: raw.get(str(tag)) for tag in (T.PR_SUBJECT, T.PR_DISPLAY_TO)}


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def copy_attachment_in(db: Conn, aid: int, mid: int, num: int, size: int, chunks: Iterable[bytes]) -> None:
    """Write one attachment row with binary COPY, streaming its `size` bytes of content chunk by chunk."""
    with (
        db.cursor() as cur,
        cur.copy("COPY attachments (id, message_id, num, data) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.write(
            _BINARY_SIGNATURE
            + struct.pack(">h", 4)
            + struct.pack(">iq", 8, aid)
            + struct.pack(">iq", 8, mid)
            + struct.pack(">ii", 4, num)
            + struct.pack(">i", size)
        )
        written = 0
        for chunk in chunks:
            if written + len(chunk) > size:
                raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "attachment grew while it was being stored")
            copy.write(chunk)
            written += len(chunk)
        if written != size:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "attachment shrank while it was being stored")
        copy.write(_BINARY_TRAILER)


class _PgBlobReader:
    """An attachment's content read from the database chunk by chunk (substring of an uncompressed bytea)."""

    def __init__(self, store: PostgresStore, attachment_id: int, size: int) -> None:
        self._store = store
        self._id = attachment_id
        self._size = size
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        remaining = self._size - self._pos
        if n is None or n < 0 or n > remaining:
            n = remaining
        if n <= 0:
            return b""
        rows = self._store._q(
            "SELECT substring(data FROM %s FOR %s) FROM attachments WHERE id=%s", (self._pos + 1, n, self._id)
        )
        if not rows or rows[0][0] is None:
            raise MAPIError(HResult.MAPI_E_OBJECT_DELETED, f"attachment {self._id} was deleted while it was read")
        data = bytes(rows[0][0])
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        return None

    def __enter__(self) -> _PgBlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
