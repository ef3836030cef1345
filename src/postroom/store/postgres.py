"""The shared message store: one PostgreSQL database for every postroom process, on any machine.

The database is the only coordination point. Spoolers claim due messages with
`FOR UPDATE SKIP LOCKED` and a lease written in the row: a process that dies loses its
claims when the lease runs out and another one takes over. Submitting notifies listeners
with LISTEN/NOTIFY (delivered at commit, never for a rolled-back change); a notification
missed while a listener was reconnecting is covered by the spooler's slow safety scan.

The semantics, error codes and tables are those of the SQLite store (sqlite.py): property
bags are the same JSON text (codec.encode_bag), times the same epoch seconds, and IDs the
same never-reused identities, so `postroom store copy` moves a store both ways unchanged.
The operations themselves are sqlbase.SQLMessageStore's, written once for both stores with `?`
placeholders (PgConnection turns them into psycopg's `%s`); this module has PostgreSQL's side
of them: the pool and its transactions, row locks, binary COPY for attachments, LISTEN/NOTIFY.
The connection is a psycopg 3 pool; every operation is one transaction, and batch() puts
several into one transaction, each in its own savepoint (group commit).

The password is never part of the profile: libpq finds it in PGPASSWORD, a pgpass file or
a service file, or the profile names an environment variable (`store_password_env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import struct
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, ClassVar, cast

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from ..mapi.entryid import MAPIUID
from .migrations import LATEST, newer_schema, older_schema, postgres_version, upgrade_postgres
from .notify import Listener, NoteKind, Notification, NotificationBus
from .slots import AdvisorySlots
from .sqlbase import CHUNK, SQLMessageStore, create_default_folders, exactly, read_chunks
from .stats import StatementCount
from .urls import is_postgres_url, redact_secrets, redact_url

log = logging.getLogger("postroom.store")

Conn = psycopg.Connection[tuple[Any, ...]]

MAX_BYTEA = (1 << 30) - 1  # PostgreSQL's limit for one value
MAX_PAYLOAD = 7900  # NOTIFY payloads must stay below 8000 bytes
# While the server is known to be unreachable, an operation waits this long for a pooled
# connection instead of the full connect timeout: a spooler daemon retrying through an outage
# then blocks its event loop, and a stop, for about a second per try rather than ten.
OUTAGE_WAIT_SECONDS = 1.0
#: pg_advisory_xact_lock keys (class, object) for rows that are replaced wholesale.
LOCK_STATUS_ROWS = 1
LOCK_TRANSPORT = 2
_BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_BINARY_TRAILER = b"\xff\xff"
# SQLite's COLLATE NOCASE: ASCII letters fold, nothing else does.
_NOCASE = "translate({}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"


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


# --- notifications on LISTEN/NOTIFY -------------------------------------------------------------------
class PgNotificationBus(NotificationBus):
    """The NotificationBus API on LISTEN/NOTIFY: one channel per store (database and schema)."""

    def __init__(self, store: PostgresStore, channel: str) -> None:
        self.directory = Path(os.devnull)  # the base class's socket directory: not used here
        self._store = store
        self.channel = channel

    def publish(self, kind: NoteKind, **data: Any) -> None:
        """Notify every listener; never raises (a notification is a hint, the store is the truth)."""
        payload = _payload(kind, data)
        try:
            with self._store._pooled() as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
        except Exception as exc:  # the store is the truth: a lost hint only delays work to the safety scan
            log.debug("could not publish %s: %s", kind, exc)

    def listen(self) -> PgListener:
        return PgListener(self)


def _payload(kind: NoteKind, data: Mapping[str, Any]) -> str:
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
            queue.put_nowait(Notification(NoteKind.QUEUE, {"reconnect": True}))
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
            self._queue.put_nowait(Notification(NoteKind.QUEUE, {"reconnect": True}))

    def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._drop()

    def __enter__(self) -> PgListener:
        return self


# --- the store ---------------------------------------------------------------------------------------
class PostgresStore(SQLMessageStore["PgConnection"]):
    """A message store in a PostgreSQL database (or one schema of it, from the URL's search_path)."""

    _FOR_UPDATE: ClassVar[str] = " FOR UPDATE"
    #: Spooler processes on one store add to the history totals in their own rows (history_totals.py).
    _TOTAL_SHARDS: ClassVar[int] = 8
    _SKIP_LOCKED: ClassVar[str] = " FOR UPDATE SKIP LOCKED"
    _NAME_MATCHES: ClassVar[str] = _NOCASE.format("f.name") + "=" + _NOCASE.format("?")
    _QUEUE_SHOWN: ClassVar[str] = "m.props"  # read in Python (_shown): the bag is text, not json
    _integrity_error: ClassVar[type[Exception]] = psycopg.IntegrityError

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
        self._unreachable = False  # the last operation lost the server: wait OUTAGE_WAIT_SECONDS only
        super().__init__()
        self._local = threading.local()
        #: The schema version found before this open migrated it (None: created now).
        self.migrated_from: int | None = None
        with self._connect() as conn:
            try:
                self._setup(conn, migrate)
            except psycopg.Error as exc:
                raise MAPIError(
                    HResult.MAPI_E_CALL_FAILED,
                    f"cannot set up the message store {self.display_url}: {self._error_text(exc)}",
                ) from exc
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            kwargs=self._kwargs,
            min_size=1,
            max_size=max(1, pool_size),
            open=False,
            check=self._check_connection,
            name="postroom-store",
            # How long an operation waits for a connection while the server is unreachable before it
            # fails with MAPI_E_NETWORK_ERROR: the spooler daemon then says so and backs off, instead
            # of its event loop hanging silently in the pool for a minute at a time.
            timeout=connect_timeout,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise MAPIError(
                HResult.MAPI_E_NETWORK_ERROR,
                f"cannot connect to the message store {self.display_url}: {self._error_text(exc)}",
            ) from exc
        self.bus: PgNotificationBus = PgNotificationBus(self, self._channel)
        self.connection_slots = AdvisorySlots(lambda: self._connect(timeout=5), self._channel, self._mapi_error)

    def _connect(self, timeout: float | None = None) -> Conn:
        try:
            return psycopg.connect(
                self.url, connect_timeout=max(1, int(timeout or self._connect_timeout)), **self._kwargs
            )
        except psycopg.Error as exc:
            raise MAPIError(
                HResult.MAPI_E_NETWORK_ERROR,
                f"cannot connect to the message store {self.display_url}: {self._error_text(exc)}",
            ) from exc

    def _setup(self, conn: Conn, migrate: bool) -> None:
        version = postgres_version(conn)
        if version is not None and version > LATEST:
            raise newer_schema(self.display_url, version)
        if version is None or migrate:
            self.migrated_from, _ = upgrade_postgres(conn, where=self.display_url, create=self._create_defaults)
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

    def _create_defaults(self, conn: Conn) -> None:
        """A new store: its UID, the special folders and the default receive folders (as SQLite's)."""
        conn.execute("INSERT INTO meta (key, value) VALUES ('store_uid', %s)", (uuid.uuid4().bytes_le.hex(),))
        create_default_folders(PgConnection(conn), self._insert_id)

    # --- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _pooled(self) -> Iterator[Conn]:
        """A connection from the pool. Whether the server answered is noted here, where every
        operation passes, so that during a known outage the wait for a connection is short."""
        timeout = min(OUTAGE_WAIT_SECONDS, self._connect_timeout) if self._unreachable else self._connect_timeout
        try:
            with self._pool.connection(timeout=timeout) as conn:
                self._unreachable = False
                yield conn
        except psycopg.OperationalError as exc:
            # A pool timeout, no SQLSTATE, or class 08 (connection exception): the server is gone.
            if isinstance(exc, PoolTimeout) or (exc.sqlstate or "08").startswith("08"):
                self._unreachable = True
            raise

    @contextmanager
    def _errors_as_mapi(self) -> Iterator[None]:
        """A bad value or a lost connection as the MAPI error callers handle (IntegrityError passes)."""
        try:
            yield
        except (psycopg.DataError, psycopg.OperationalError) as exc:
            raise self._mapi_error(exc) from exc

    def _check_connection(self, conn: Conn) -> None:
        """The pool's check of a connection it hands out: a round trip, so it is counted."""
        self.statements.statements += 1
        ConnectionPool.check_connection(conn)

    @contextmanager
    def _tx(self) -> Iterator[PgConnection]:
        """One transaction: all or nothing. Inside batch() (or another transaction) it is a savepoint."""
        current: PgConnection | None = getattr(self._local, "conn", None)
        counts = self.statements
        with self._errors_as_mapi():
            if current is not None:
                counts.statements += 2  # SAVEPOINT, RELEASE
                with current.raw.transaction(), self._counting(current):
                    yield current
                return
            with self._pooled() as conn:
                self._local.conn = db = PgConnection(conn, counts)
                try:
                    counts.statements += 2  # BEGIN, COMMIT
                    with conn.transaction(), self._counting(db):  # the history's totals, once per transaction
                        yield db
                    counts.commits += 1
                finally:
                    self._local.conn = None

    @contextmanager
    def _connection(self) -> Iterator[PgConnection]:
        """The current transaction's connection on this thread, else one from the pool (autocommit)."""
        current: PgConnection | None = getattr(self._local, "conn", None)
        with self._errors_as_mapi():
            if current is not None:
                yield current
                return
            with self._pooled() as conn:
                yield PgConnection(conn, self.statements)

    def _reading(self) -> contextlib.AbstractContextManager[PgConnection]:
        return self._tx()  # one snapshot for all of a message's rows

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group several operations into one transaction; notifications go out with its commit."""
        if getattr(self._local, "conn", None) is not None:
            yield  # already inside a batch or transaction on this thread: part of it
            return
        # A lost connection at BEGIN or COMMIT is MAPI_E_NETWORK_ERROR too, as in every other operation.
        with self._errors_as_mapi(), self._pooled() as conn:
            self._local.conn = db = PgConnection(conn, self.statements)
            self._local.notes = []
            try:
                self.statements.statements += 2  # BEGIN, COMMIT
                with conn.transaction():
                    with self._counting(db):
                        yield
                    # NOTIFY is delivered at COMMIT, and never if the transaction is rolled back.
                    for kind, data in self._local.notes:
                        self.statements.statements += 1
                        conn.execute("SELECT pg_notify(%s, %s)", (self.bus.channel, _payload(kind, data)))
                self.statements.commits += 1
            finally:
                self._local.conn = None
                self._local.notes = None

    def _held_notes(self) -> list[tuple[NoteKind, dict[str, Any]]] | None:
        notes: list[tuple[NoteKind, dict[str, Any]]] | None = getattr(self._local, "notes", None)
        return notes

    def _error_text(self, exc: BaseException) -> str:
        """The first line of a driver error, without any secret of the URL (libpq may quote it)."""
        return redact_secrets(_first_line(exc), self.url)

    def _mapi_error(self, exc: psycopg.Error) -> MAPIError:
        """A database error as the MAPI error the callers handle (the store's other errors are MAPI ones)."""
        text = self._error_text(exc)
        if isinstance(exc, psycopg.DataError):
            return MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"the store refused a value: {text}")
        if isinstance(exc, psycopg.errors.TransactionRollback):  # deadlock or serialization failure
            return MAPIError(HResult.MAPI_E_BUSY, f"the message store is busy, try again: {text}")
        return MAPIError(HResult.MAPI_E_NETWORK_ERROR, f"the message store {self.display_url} failed: {text}")

    def close(self) -> None:
        self.connection_slots.close()
        self._pool.close()

    # --- the dialect ---------------------------------------------------------------------------
    def _insert_id(self, db: PgConnection, sql: str, params: Sequence[Any]) -> int:
        row = db.execute(sql + " RETURNING id", params).fetchone()
        assert row is not None
        return int(row[0])

    def _reserve_message_ids(self, db: PgConnection, count: int) -> list[int]:
        rows = db.execute(
            "SELECT nextval(pg_get_serial_sequence('messages', 'id')) FROM generate_series(1, ?)", (count,)
        ).fetchall()
        return sorted(int(r[0]) for r in rows)

    def _text(self, value: str | None) -> str | None:
        return _clean(value)

    def _shown(self, columns: Sequence[Any]) -> tuple[str | None, str | None]:
        shown = _summary_fields(columns[0])
        return shown.get(T.PR_SUBJECT), shown.get(T.PR_DISPLAY_TO)

    def _lock_status_rows(self, db: PgConnection) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?, ?)", (LOCK_STATUS_ROWS, 0))

    def _lock_transport(self, db: PgConnection, transport: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (LOCK_TRANSPORT, transport))

    def _values(self, types: Sequence[str], rows: Sequence[Sequence[Any]], name: str = "v") -> tuple[str, list[Any]]:
        """One array per column, unnested: the same statement text (prepared once per connection
        by psycopg) for any number of rows, and a handful of parameters instead of thousands."""
        columns = ", ".join(f"column{i + 1}" for i in range(len(types)))
        arrays = ", ".join(f"CAST(? AS {t}[])" for t in types)
        return f"unnest({arrays}) AS {name}({columns})", [list(column) for column in zip(*rows, strict=True)]

    def _id_list(self, ids: Sequence[int]) -> tuple[str, list[Any]]:
        return "= ANY(CAST(? AS BIGINT[]))", [list(ids)]

    def _write_attachment_data(self, db: PgConnection, mid: int, num: int, stream: IO[bytes], size: int) -> int:
        """Store `size` bytes from `stream`; a large attachment is streamed (binary COPY), never held whole."""
        if size <= CHUNK:
            data = stream.read(size + 1)
            if len(data) != size:
                raise MAPIError(
                    HResult.MAPI_E_CORRUPT_DATA,
                    "attachment " + ("grew" if len(data) > size else "shrank") + " while it was being stored",
                )
            return self._insert_id(
                db, "INSERT INTO attachments (message_id, num, data) VALUES (?, ?, ?)", (mid, num, data)
            )
        if size > MAX_BYTEA:
            raise MAPIError(
                HResult.MAPI_E_NO_SUPPORT, f"a PostgreSQL store keeps at most 1 GiB per attachment, not {size}"
            )
        row = db.execute("SELECT nextval(pg_get_serial_sequence('attachments', 'id'))").fetchone()
        assert row is not None
        aid = int(row[0])
        copy_attachment_in(db.raw, aid, mid, num, size, read_chunks(stream))
        return aid

    def _blob_opener(self, attachment_id: int, size: int) -> Callable[[], IO[bytes]]:
        def opener() -> IO[bytes]:
            return cast(IO[bytes], _PgBlobReader(self, attachment_id, size))

        return opener


class PgConnection:
    """A pooled psycopg connection as the shared store code uses it (sqlbase.Connection): SQL
    with `?` placeholders, and executemany() on the connection itself, as sqlite3 has them."""

    __slots__ = ("counts", "raw")

    def __init__(self, raw: Conn, counts: StatementCount | None = None) -> None:
        self.raw = raw
        self.counts = counts or StatementCount()

    def execute(self, query: str, params: Sequence[Any] = ()) -> psycopg.Cursor[tuple[Any, ...]]:
        self.counts.statements += 1
        return self.raw.execute(_pg_sql(query), params)

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        self.counts.statements += len(rows)
        if rows:
            with self.raw.cursor() as cur:
                cur.executemany(_pg_sql(query), rows)


@functools.lru_cache(maxsize=1024)
def _pg_sql(query: str) -> bytes:
    """The store's SQL in psycopg's placeholder style: `?` becomes `%s`, a literal `%` doubles."""
    return query.replace("%", "%%").replace("?", "%s").encode()


def _summary_fields(bag: str) -> dict[int, Any]:
    """Subject and To of a property bag, without decoding the whole bag."""
    try:
        raw = json.loads(bag)
    except ValueError:
        return {}
    return {tag: raw.get(str(tag)) for tag in (T.PR_SUBJECT, T.PR_DISPLAY_TO)}


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
        for chunk in exactly(size, chunks):
            copy.write(chunk)
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
            "SELECT substring(data FROM ? FOR ?) FROM attachments WHERE id=?", (self._pos + 1, n, self._id)
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
