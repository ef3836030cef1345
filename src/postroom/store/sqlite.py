"""The embedded message store: one SQLite file in WAL mode, durable at every commit.

Several processes may open the same file: claims are leases written in the database
(an atomic UPDATE … RETURNING), never in-memory locks, so a spooler that dies only
lets its lease run out. The operations themselves are sqlbase.SQLMessageStore's; this
module has SQLite's side of them: the file and its schema, transactions (BEGIN IMMEDIATE
excludes every other writer, so no row locks are needed), incremental blob I/O for
attachments, and notifications on Unix sockets beside the file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, ClassVar, cast

from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from ..mapi.entryid import MAPIUID
from .migrations import LATEST, upgrade_sqlite
from .notify import NoteKind, NotificationBus, notify_directory
from .queue_sql import QUEUE_INDEX_NAMES, QUEUE_INDEXES
from .slots import FileSlots
from .sqlbase import SQLMessageStore, create_default_folders, exactly, read_chunks
from .sqlite_errors import store_error
from .stats import StatementCount
from .writer_turns import WriterTurns

SCHEMA_VERSION = LATEST  # version 1 is SCHEMA below; later versions are in migrations.py

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS folders (
    id INTEGER PRIMARY KEY,
    parent_id INTEGER REFERENCES folders(id),
    name TEXT NOT NULL,
    role TEXT UNIQUE
);
CREATE UNIQUE INDEX IF NOT EXISTS folder_names ON folders(coalesce(parent_id, 0), name COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: entry IDs stay unique after a delete
    folder_id INTEGER REFERENCES folders(id),
    parent_attach INTEGER,
    queue_state TEXT,
    submit_time REAL,
    next_attempt REAL,
    lease_owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    wait_kind TEXT,
    prev_owner TEXT,
    hold_reason TEXT,
    props TEXT NOT NULL DEFAULT '{}'  -- the property bag (codec.encode_bag)
);
CREATE INDEX IF NOT EXISTS messages_folder ON messages(folder_id);
CREATE INDEX IF NOT EXISTS outgoing_queue ON messages(queue_state, submit_time, id) WHERE queue_state IS NOT NULL;
CREATE TABLE IF NOT EXISTS recipients (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    row_id INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    transport TEXT,
    outcome_time REAL,
    reported INTEGER NOT NULL DEFAULT 0,
    props TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (message_id, row_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attachments (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    num INTEGER NOT NULL,
    data BLOB,
    embedded_id INTEGER REFERENCES messages(id),
    props TEXT NOT NULL DEFAULT '{}',
    UNIQUE (message_id, num)
);
CREATE TABLE IF NOT EXISTS receive_folders (
    message_class TEXT PRIMARY KEY,
    folder_id INTEGER NOT NULL REFERENCES folders(id)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    transport TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_message ON events(message_id, id);
CREATE TABLE IF NOT EXISTS status_rows (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    row TEXT NOT NULL,
    updated REAL NOT NULL,
    owner TEXT NOT NULL
);
""" + "".join(f"{index};\n" for index in QUEUE_INDEXES)  # the claim's indexes (queue_sql.py)


class SQLiteStore(SQLMessageStore[sqlite3.Connection]):
    """A message store in one SQLite file."""

    _FOR_UPDATE: ClassVar[str] = ""  # BEGIN IMMEDIATE: a write transaction excludes every other writer
    _SKIP_LOCKED: ClassVar[str] = ""
    _INDEX_HINTS: ClassVar[bool] = True
    _NAME_MATCHES: ClassVar[str] = "f.name=? COLLATE NOCASE"
    _QUEUE_SHOWN: ClassVar[str] = (
        f"json_extract(m.props, '$.\"{T.PR_SUBJECT}\"'), json_extract(m.props, '$.\"{T.PR_DISPLAY_TO}\"')"
    )
    _integrity_error: ClassVar[type[Exception]] = sqlite3.IntegrityError

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            self._open()
        except (sqlite3.Error, OSError) as exc:
            mapped = store_error(exc, self.path)
            if mapped is None:
                raise
            raise mapped from exc

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists()
        self._lock = threading.RLock()
        self._batch_depth = 0
        self._savepoints = 0
        self._notes: list[tuple[NoteKind, dict[str, Any]]] = []
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._locked = _Locked(self._db, self._lock, self.path)
        if new_file:
            os.chmod(self.path, 0o600)
        opened = os.stat(self.path)
        self._identity = (opened.st_dev, opened.st_ino)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._turns = WriterTurns(self.path.with_name(self.path.name + "-writer"))
        self._enable_wal()
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._create_schema()
        self._uid = MAPIUID(self._meta("store_uid"))
        self.bus = NotificationBus(notify_directory(self.path))
        self.connection_slots = FileSlots(self.path.with_name(self.path.name + "-slots"))

    def _enable_wal(self) -> None:
        """Switch to WAL. SQLite answers "database is locked" at once, without its busy handler, when
        several processes do this on a new file together: wait and try again (bounded)."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    # --- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT in this process's writer turn; ROLLBACK after any error.
        SQLite's own errors leave as the MAPI code they mean (sqlite_errors.py)."""
        with self._turns.turn(), self._sqlite_errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                with self._counting(self._db):  # the history's running totals, once per transaction
                    yield
                self._db.execute("COMMIT")
                self.statements.commits += 1
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            mapped = store_error(exc, self.path)
            if mapped is None:
                raise
            raise mapped from exc

    def check_file(self) -> None:
        """MAPI_E_NOT_FOUND when the store file was deleted or replaced since it was opened: a
        daemon writing on into the old, unlinked file would lose everything it does."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"the message store {self.path} was deleted") from None
        if (now.st_dev, now.st_ino) != self._identity:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"the message store {self.path} was replaced by another file")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT): all or nothing.

        Inside batch() it is a savepoint instead: it still succeeds or fails as a whole, and the
        batch's single COMMIT makes everything durable with one fsync (group commit).
        """
        with self._lock:
            if self._batch_depth:
                self._savepoints += 1
                name = f"sp{self._savepoints}"
                self._db.execute(f"SAVEPOINT {name}")
                try:
                    with self._counting(self._db):
                        yield self._db
                except BaseException:
                    self._db.execute(f"ROLLBACK TO {name}")
                    self._db.execute(f"RELEASE {name}")
                    raise
                self._db.execute(f"RELEASE {name}")
                return
            with self._writing():
                yield self._db

    def count_statements(self) -> StatementCount:
        """SQLite runs statements in this process: a trace callback sees each one as it starts."""
        if not self.statements.counting:
            self._db.set_trace_callback(self._count_statement)
        return super().count_statements()

    def _count_statement(self, _sql: str) -> None:
        self.statements.statements += 1

    def _connection(self) -> _Locked:
        """The one connection, for reads outside a transaction (each statement sees committed data)."""
        return self._locked

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group several operations into one durable commit; notifications go out after it."""
        with self._lock:
            if self._batch_depth:
                self._batch_depth += 1
                try:
                    yield
                finally:
                    self._batch_depth -= 1
                return
            try:
                with self._writing():
                    self._batch_depth = 1
                    try:
                        yield
                    finally:
                        self._batch_depth = 0
            except BaseException:
                self._notes.clear()
                raise
            notes, self._notes = self._notes, []
        for kind, data in notes:
            self.bus.publish(kind, **data)

    def _held_notes(self) -> list[tuple[NoteKind, dict[str, Any]]] | None:
        return self._notes if self._batch_depth else None

    def _create_schema(self) -> None:
        """Create or migrate the schema; a store already at this version is only read, so opening
        it never waits for a writer (a reader must never queue behind a stalled transaction)."""
        if self._schema_is_current():
            self._add_queue_indexes()
            return
        with self._tx() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (1,))
                db.execute("INSERT INTO meta VALUES ('store_uid', ?)", (uuid.uuid4().bytes_le,))
                create_default_folders(db, self._insert_id)
            elif int(row[0]) > SCHEMA_VERSION:
                raise MAPIError(
                    HResult.MAPI_E_VERSION,
                    f"{self.path} was written by a newer postroom "
                    f"(store schema {row[0]}, this one knows {SCHEMA_VERSION})",
                )
            # An older store is migrated here, in this same transaction (all or nothing).
            upgrade_sqlite(db, 1 if row is None else int(row[0]), where=str(self.path))

    def _add_queue_indexes(self) -> None:
        """A store made at version 4 before the queue indexes were part of it gets them now (version 4
        was not released without them). Only read when they are there: opening never waits for a writer."""
        marks = ", ".join("?" for _ in QUEUE_INDEX_NAMES)
        (present,) = self._db.execute(
            f"SELECT count(*) FROM sqlite_master WHERE type='index' AND name IN ({marks})", QUEUE_INDEX_NAMES
        ).fetchone()
        if present == len(QUEUE_INDEX_NAMES):
            return
        with self._tx() as db:
            for statement in QUEUE_INDEXES:
                db.execute(statement)

    def _schema_is_current(self) -> bool:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:  # no meta table yet: a new file
            return False
        return row is not None and int(row[0]) == SCHEMA_VERSION

    def _meta(self, key: str) -> Any:
        rows = self._q("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._turns.close()

    # --- the dialect ---------------------------------------------------------------------------
    def _insert_id(self, db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
        rowid = db.execute(sql, params).lastrowid
        assert rowid is not None
        return rowid

    def _reserve_message_ids(self, db: sqlite3.Connection, count: int) -> list[int]:
        # Inside BEGIN IMMEDIATE no other writer runs: the next IDs AUTOINCREMENT would give are
        # ours. Inserting them explicitly moves sqlite_sequence on, so none is ever given twice.
        row = db.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name='messages'), 0), "
            "coalesce((SELECT max(id) FROM messages), 0))"
        ).fetchone()
        first = int(row[0]) + 1
        return list(range(first, first + count))

    def _text(self, value: str | None) -> str | None:
        return value  # SQLite keeps any text as it is

    def _shown(self, columns: Sequence[Any]) -> tuple[str | None, str | None]:
        subject, to = columns
        return subject, to

    def _write_attachment_data(self, db: sqlite3.Connection, mid: int, num: int, stream: IO[bytes], size: int) -> int:
        """The row with a zeroblob of `size` bytes, then the content streamed into it chunk by chunk."""
        aid = self._insert_id(
            db, "INSERT INTO attachments (message_id, num, data) VALUES (?, ?, zeroblob(?))", (mid, num, size)
        )
        with db.blobopen("attachments", "data", aid) as blob:
            for chunk in exactly(size, read_chunks(stream)):
                blob.write(chunk)
        return aid

    def _blob_opener(self, attachment_id: int, size: int) -> Callable[[], IO[bytes]]:
        def opener() -> IO[bytes]:
            with self._lock:
                reader = _BlobReader(self._db.blobopen("attachments", "data", attachment_id, readonly=True), self._lock)
                return cast(IO[bytes], reader)

        return opener


class _Locked:
    """The store's connection under its lock: a context manager as cheap as the lock (reads are many)."""

    __slots__ = ("_db", "_lock", "_path")

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, path: Path) -> None:
        self._db = db
        self._lock = lock
        self._path = path

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        return self._db

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._lock.release()
        if isinstance(exc, sqlite3.Error):
            mapped = store_error(exc, self._path)
            if mapped is not None:
                raise mapped from exc


class _BlobReader:
    """An attachment's content read straight from the database, chunk by chunk."""

    def __init__(self, blob: sqlite3.Blob, lock: threading.RLock) -> None:
        self._blob = blob
        self._lock = lock

    def read(self, n: int = -1) -> bytes:
        with self._lock:
            return self._blob.read(n)

    def seek(self, pos: int, whence: int = 0) -> int:
        with self._lock:
            self._blob.seek(pos, whence)
            return self._blob.tell()

    def tell(self) -> int:
        return self._blob.tell()

    def close(self) -> None:
        with self._lock:
            self._blob.close()

    def __enter__(self) -> _BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
