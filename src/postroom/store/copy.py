"""`postroom store copy`: move a whole store between SQLite and PostgreSQL (either way), losing nothing.

Every table is copied row by row with its IDs, and the target takes the source's store UID,
so every entry ID (messages, folders, PR_SENTMAIL_ENTRYID, PR_REPORT_ENTRYID …) stays valid.
Property bags are copied as stored (the same JSON text in both stores), attachments are
streamed in chunks, and the queue keeps its state (leases, attempts, waits, holds). The
highest IDs ever handed out are carried over too, so an ID is never reused after the move.

The source is read in one snapshot; the target is written in one transaction, so a copy
that fails leaves the target as it was. The target must be empty (a new store) unless
`replace` is given. Stop the spoolers on the source first: what they do after the snapshot
is not copied.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..mapi.codes import HResult, MAPIError
from . import open_store
from .history_totals import POSTGRES_MINUTE, SQLITE_MINUTE, rebuild_statements
from .sqlbase import CHUNK
from .urls import StoreLocation, redact_url

if TYPE_CHECKING:
    import psycopg

BATCH = 1000

#: The tables in the order they are written, with their columns (attachment data is streamed apart).
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("folders", ("id", "parent_id", "name", "role")),
    (
        "messages",
        (
            "id",
            "folder_id",
            "parent_attach",
            "queue_state",
            "submit_time",
            "next_attempt",
            "lease_owner",
            "lease_until",
            "attempts",
            "last_error",
            "wait_kind",
            "prev_owner",
            "hold_reason",
            "props",
            "first_try",
            "failures",
            "started",
        ),
    ),
    (
        "recipients",
        (
            "message_id",
            "row_id",
            "state",
            "transport",
            "outcome_time",
            "reported",
            "props",
            "waiting_for",
            "detail",
            "declined",
        ),
    ),
    ("attachments", ("id", "message_id", "num", "embedded_id", "props")),
    ("receive_folders", ("message_class", "folder_id")),
    ("events", ("id", "message_id", "time", "kind", "transport", "detail")),
    ("status_rows", ("name", "position", "row", "updated", "owner")),
    ("transport_usage", ("id", "transport", "time", "owner")),
    ("breaker_state", ("transport", "state", "updated")),
    ("mime_originals", ("message_id", "fingerprint", "size", "data")),
    ("message_streams", ("message_id", "tag", "data")),
)
ORDER = {
    "recipients": "message_id, row_id",
    "receive_folders": "message_class",
    "status_rows": "position",
    "mime_originals": "message_id",
    "message_streams": "message_id, tag",
}
ORDER_DEFAULT = "id"
ORDER_BY_KEY = {"breaker_state": "transport"}
#: Tables whose IDs come from a counter that must not go back (never-reused IDs).
COUNTED = ("folders", "messages", "attachments", "events", "transport_usage")


@dataclass
class CopyReport:
    source: str
    target: str
    rows: dict[str, int] = field(default_factory=dict)
    attachment_bytes: int = 0
    store_uid: str = ""


# --- one side of a copy -------------------------------------------------------------------------
class _Side:
    label: str

    def rows(self, table: str, columns: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        raise NotImplementedError

    def attachment_size(self, attachment_id: int) -> int | None:
        raise NotImplementedError

    def attachment_chunks(self, attachment_id: int, size: int) -> Iterator[bytes]:
        raise NotImplementedError

    def store_uid(self) -> bytes:
        raise NotImplementedError

    def counter(self, table: str) -> int:
        """The highest ID ever handed out in `table` (0: none)."""
        raise NotImplementedError

    # Writing
    def content_rows(self) -> int:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def set_store_uid(self, uid: bytes) -> None:
        raise NotImplementedError

    def rebuild_history_totals(self) -> None:
        """Build the history's running totals (history_totals.py) from the history just copied."""
        raise NotImplementedError

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> int:
        raise NotImplementedError

    def insert_attachment(self, row: tuple[Any, ...], size: int | None, chunks: Iterable[bytes]) -> None:
        raise NotImplementedError

    def set_counter(self, table: str, value: int) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _batch(table: str) -> int:
    """Rows read or written at once: an original MIME stream may be tens of megabytes."""
    return 1 if table == "mime_originals" else BATCH


def _order(table: str) -> str:
    return ORDER.get(table) or ORDER_BY_KEY.get(table) or ORDER_DEFAULT


class _SQLiteSide(_Side):
    def __init__(self, path: str, *, write: bool) -> None:
        self.label = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=30000")
        # A write transaction for the target; a read snapshot for the source.
        self.db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        if not write:
            self.db.execute("SELECT count(*) FROM meta").fetchone()  # takes the snapshot now

    def rows(self, table: str, columns: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        cur = self.db.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {_order(table)}")
        while batch := cur.fetchmany(_batch(table)):
            yield from batch

    def attachment_size(self, attachment_id: int) -> int | None:
        row = self.db.execute("SELECT length(data) FROM attachments WHERE id=?", (attachment_id,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def attachment_chunks(self, attachment_id: int, size: int) -> Iterator[bytes]:
        with self.db.blobopen("attachments", "data", attachment_id, readonly=True) as blob:
            while chunk := blob.read(CHUNK):
                yield chunk

    def store_uid(self) -> bytes:
        row = self.db.execute("SELECT value FROM meta WHERE key='store_uid'").fetchone()
        return bytes(row[0])

    def counter(self, table: str) -> int:
        top = self.db.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
        seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (table,)).fetchone()
        return max(int(top), int(seq[0]) if seq else 0)

    def content_rows(self) -> int:
        counts = [
            self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("messages", "events", "transport_usage")
        ]
        folders = self.db.execute("SELECT count(*) FROM folders WHERE role IS NULL").fetchone()[0]
        return int(sum(counts) + folders)

    def clear(self) -> None:
        self.db.execute("UPDATE messages SET folder_id=NULL")
        for table, _ in reversed(TABLES):
            if table == "folders":
                self.db.execute("UPDATE folders SET parent_id=NULL")
            self.db.execute(f"DELETE FROM {table}")

    def set_store_uid(self, uid: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('store_uid', ?)", (uid,))

    def rebuild_history_totals(self) -> None:
        for statement in rebuild_statements(SQLITE_MINUTE):
            self.db.execute(statement)

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> int:
        marks = ", ".join("?" for _ in columns)
        n = 0
        it = iter(rows)
        while True:
            batch = [r for _, r in zip(range(_batch(table)), it, strict=False)]
            if not batch:
                return n
            self.db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", batch)
            n += len(batch)

    def insert_attachment(self, row: tuple[Any, ...], size: int | None, chunks: Iterable[bytes]) -> None:
        aid, mid, num, embedded, props = row
        if size is None:
            self.db.execute(
                "INSERT INTO attachments (id, message_id, num, embedded_id, props) VALUES (?, ?, ?, ?, ?)",
                (aid, mid, num, embedded, props),
            )
            return
        self.db.execute(
            "INSERT INTO attachments (id, message_id, num, embedded_id, props, data) "
            "VALUES (?, ?, ?, ?, ?, zeroblob(?))",
            (aid, mid, num, embedded, props, size),
        )
        written = 0
        with self.db.blobopen("attachments", "data", aid) as blob:
            for chunk in chunks:
                blob.write(chunk)
                written += len(chunk)
        if written != size:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"attachment {aid}: {written} bytes copied, not {size}")

    def set_counter(self, table: str, value: int) -> None:
        if table != "messages":  # only messages use AUTOINCREMENT (never reused) in SQLite
            return
        if self.db.execute("UPDATE sqlite_sequence SET seq=max(seq, ?) WHERE name=?", (value, table)).rowcount == 0:
            self.db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value))

    def commit(self) -> None:
        bad = self.db.execute("PRAGMA foreign_key_check").fetchall()
        if bad:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"the copy would break references: {bad[:3]}")
        self.db.execute("COMMIT")

    def close(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self.db.close()


class _PgSide(_Side):
    def __init__(self, url: str, password_env: str | None, *, write: bool) -> None:
        import psycopg

        from .postgres import connection_kwargs

        self.label = redact_url(url)
        try:
            self.conn: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(
                url, connect_timeout=10, **connection_kwargs(password_env)
            )
        except psycopg.Error as exc:
            raise MAPIError(HResult.MAPI_E_NETWORK_ERROR, f"cannot connect to {self.label}: {exc}") from exc
        self.conn.isolation_level = (
            psycopg.IsolationLevel.READ_COMMITTED if write else psycopg.IsolationLevel.REPEATABLE_READ
        )
        if not write:
            self.conn.read_only = True
        self._cursors = 0

    def rows(self, table: str, columns: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        self._cursors += 1
        with self.conn.cursor(name=f"postroom_copy_{self._cursors}") as cur:
            cur.itersize = _batch(table)
            cur.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {_order(table)}".encode())
            yield from cur

    def attachment_size(self, attachment_id: int) -> int | None:
        row = self.conn.execute("SELECT octet_length(data) FROM attachments WHERE id=%s", (attachment_id,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def attachment_chunks(self, attachment_id: int, size: int) -> Iterator[bytes]:
        for start in range(0, size, CHUNK):
            row = self.conn.execute(
                "SELECT substring(data FROM %s FOR %s) FROM attachments WHERE id=%s", (start + 1, CHUNK, attachment_id)
            ).fetchone()
            assert row is not None
            yield bytes(row[0])

    def store_uid(self) -> bytes:
        row = self.conn.execute("SELECT value FROM meta WHERE key='store_uid'").fetchone()
        assert row is not None
        return bytes.fromhex(str(row[0]))

    def counter(self, table: str) -> int:
        row = self.conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}".encode()).fetchone()
        top = int(row[0]) if row else 0
        seq = self.conn.execute(
            f"SELECT last_value, is_called FROM {self._sequence(table)}".encode()  # a name from the catalog
        ).fetchone()
        used = int(seq[0]) if seq and seq[1] else 0
        return max(top, used)

    def _sequence(self, table: str) -> str:
        row = self.conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()
        assert row is not None and row[0]
        return str(row[0])

    def content_rows(self) -> int:
        row = self.conn.execute(
            "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM events) "
            "+ (SELECT count(*) FROM transport_usage) + (SELECT count(*) FROM folders WHERE role IS NULL)"
        ).fetchone()
        return int(row[0]) if row else 0

    def clear(self) -> None:
        self.conn.execute(
            "TRUNCATE folders, messages, recipients, attachments, receive_folders, events, status_rows, "
            "transport_usage, breaker_state, mime_originals, message_streams"
        )

    def set_store_uid(self, uid: bytes) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('store_uid', %s) "
            "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            (uid.hex(),),
        )

    def rebuild_history_totals(self) -> None:
        for statement in rebuild_statements(POSTGRES_MINUTE):
            self.conn.execute(statement.encode())

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> int:
        from psycopg import sql

        n = 0
        query = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        )
        with self.conn.cursor() as cur, cur.copy(query) as copy:
            for row in rows:
                copy.write_row(tuple(_pg_text(v) for v in row))
                n += 1
        return n

    def insert_attachment(self, row: tuple[Any, ...], size: int | None, chunks: Iterable[bytes]) -> None:
        from .postgres import copy_attachment_in

        aid, mid, num, embedded, props = row
        if size is None:
            self.conn.execute(
                "INSERT INTO attachments (id, message_id, num, embedded_id, props) VALUES (%s, %s, %s, %s, %s)",
                (aid, mid, num, embedded, props),
            )
            return
        copy_attachment_in(self.conn, aid, mid, num, size, chunks)
        self.conn.execute("UPDATE attachments SET props=%s, embedded_id=%s WHERE id=%s", (props, embedded, aid))

    def set_counter(self, table: str, value: int) -> None:
        if value > 0:
            self.conn.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", (table, value))

    def commit(self) -> None:
        self.conn.commit()

    def close(self) -> None:
        self.conn.rollback()
        self.conn.close()


def _pg_text(value: Any) -> Any:
    """SQLite may hold a NUL in free text; PostgreSQL's text cannot."""
    if isinstance(value, str) and "\0" in value:
        return value.replace("\0", "\ufffd")
    return value


# --- the copy -----------------------------------------------------------------------------------------
def _open(location: StoreLocation, *, write: bool) -> _Side:
    if location.postgres:
        return _PgSide(location.target, location.password_env, write=write)
    return _SQLiteSide(location.target, write=write)


def _prepare(location: StoreLocation) -> None:
    """Open the store once the normal way: it gets its schema (and migrations) before the raw copy."""
    open_store(location.target, password_env=location.password_env).close()


def copy_store(
    source: StoreLocation,
    target: StoreLocation,
    *,
    replace: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> CopyReport:
    """Copy every row of `source` into `target` (created when missing), in one target transaction."""
    if source.target == target.target or (
        not source.postgres
        and not target.postgres
        and Path(source.target).exists()
        and Path(target.target).exists()
        and Path(source.target).resolve() == Path(target.target).resolve()
    ):
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "the source and the target are the same store")
    if not source.postgres and not Path(source.target).is_file():
        raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no store at {source.target}")
    _prepare(source)
    _prepare(target)
    report = CopyReport(source.label, target.label)
    src = _open(source, write=False)
    try:
        dst = _open(target, write=True)
        try:
            if dst.content_rows() and not replace:
                raise MAPIError(
                    HResult.MAPI_E_INVALID_PARAMETER,
                    f"the target store {target.label} is not empty (it has messages, folders or history); "
                    "copy into a new store, or pass --replace to overwrite it",
                )
            dst.clear()
            uid = src.store_uid()
            dst.set_store_uid(uid)
            report.store_uid = uid.hex()
            for table, columns in TABLES:
                if table == "attachments":
                    n = 0
                    for row in src.rows(table, columns):
                        size = src.attachment_size(int(row[0]))
                        chunks = src.attachment_chunks(int(row[0]), size) if size is not None else iter(())
                        dst.insert_attachment(row, size, chunks)
                        report.attachment_bytes += size or 0
                        n += 1  # noqa: SIM113  (a generator: no len())
                else:
                    n = dst.insert(table, columns, src.rows(table, columns))
                report.rows[table] = n
                if progress:
                    progress(table, n)
            for table in COUNTED:
                dst.set_counter(table, src.counter(table))
            dst.rebuild_history_totals()
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()
    return report
