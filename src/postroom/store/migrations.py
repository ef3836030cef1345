"""Store schema versions and the migrations between them, for both stores.

`meta.schema_version` says which schema a store has; the numbers mean the same tables in
SQLite and in PostgreSQL. Each migration runs in one transaction together with the new
version number, so a store is either fully migrated or untouched.

* SQLite (one user's embedded store) is migrated when it is opened.
* PostgreSQL (shared by many processes) gets its schema created when the database is
  empty; an older schema is refused until `postroom store migrate` is run (stop every
  postroom process using it first). Migrations hold an advisory lock, so two `migrate`
  runs never interleave.
* A store written by a newer postroom is always refused (MAPI_E_VERSION): it is never
  touched by an older program.

History:
  1. folders, messages (the outgoing queue with leases), recipients, attachments, receive
     folders, events, status rows.
  2. transport_usage and breaker_state: per-transport throttles and circuit breakers that
     hold across every process using the store.
  3. recipients.waiting_for and recipients.detail: which transport a pending recipient waits
     for (its next offer, where the next pass resumes) and that transport's last words about
     it (a server's 4xx reply, "offline: waiting for Send/Receive"). messages.first_try and
     messages.failures: when a transport was first really called for the message (its queue
     lifetime counts from there) and how many passes met a temporary failure (the backoff).
  4. recipients.declined: the transports that declined a pending recipient ("not mine", or an
     error that passed it on), each with the fingerprint of its configuration then, so that a
     change of routing moves a waiting recipient to the first transport that has not declined it
     (spooler/declines.py, spooler/reroute.py). meta 'routing' names the routing the waiting
     recipients were last placed by. A recipient that waited before this version has no
     declines stored: the first logon places it at the first transport of its routing, which
     may ask a transport that declined it once more.
     mime_originals: the exact bytes of a message that arrived as RFC 5322 (`send --eml`, IMAP,
     POP3) and the fingerprint of its properties then (postroom.original), one row per message,
     deleted with it. A table of its own, so opening a message to list or route it never reads
     the bytes.
     The queue indexes of queue_sql.py (queue_due_now, queue_due_retry, queue_leases,
     queue_waits): a claim and the idle daemon's look at the queue read only what is due, not
     every message waiting for a retry. (An SQLite store made at version 4 before they were
     added gets them when it is opened.)
  5. message_streams: a message's large text and binary properties (its body, PR_HTML, from
     codec.STREAM_THRESHOLD up), one row each, outside the bag: claiming, finishing or moving the
     message then rewrites a small row, never its body. The migration moves the large
     properties of existing messages out of their bags.
     events_by_time and queue_by_submit: the status page's chart and /metrics read the history
     by time, and the queue page pages through the queue by (submit_time, id).
     spooler_passes: each spooler process's running pass totals (passes, seconds, the duration
     histogram, throttle waits by transport), one row per process rewritten at the end of each
     pass, summed by /metrics.
  6. history_totals and history_minutes (history_totals.py): running totals of the history,
     added to by each transaction that writes counted events, so /metrics and the status page's
     chart read a number of rows that does not grow with the history. The migration builds them
     once from the existing history. spooler_passes.processes: how many processes a row stands
     for (1; more for the row the rows of stopped processes are folded into).
  7. messages.started: a transport was (or was about to be) called for the message under its
     present claim. A claim that takes over a run-out lease treats the message as "outcome
     unknown" only when it was started; one the dead spooler had only claimed (ahead, waiting for
     a worker) is simply due again (2: given back while a transport call was cut short, unknown
     too). The migration marks every message under a lease as started: who held it before the
     upgrade is not known to have not sent it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from .activity import PASS_BUCKETS, RETIRED_PASSES
from .codec import STREAM_THRESHOLD, dump_raw, load_raw
from .history_totals import POSTGRES_MINUTE, SQLITE_MINUTE, rebuild_statements
from .history_totals import TABLES as HISTORY_TABLES
from .queue_sql import QUEUE_INDEXES

if TYPE_CHECKING:
    import psycopg

LATEST = 7

#: Version 5, what the status page and /metrics read: the history of every message (events) is
#: the store's record of what every spooler process did, so the chart and the counters read it
#: by time; the queue page pages through the queue by (submit_time, id) whatever its state.
_WEB_V5 = (
    "CREATE INDEX IF NOT EXISTS events_by_time ON events(time, kind)",
    "CREATE INDEX IF NOT EXISTS queue_by_submit ON messages(submit_time, id) WHERE queue_state IS NOT NULL",
)

#: Version 5 too: one row per spooler process, its running totals (store.record_pass), for /metrics.
_PASSES_V5 = (
    "CREATE TABLE IF NOT EXISTS spooler_passes ("
    " owner TEXT PRIMARY KEY, updated DOUBLE PRECISION NOT NULL, passes BIGINT NOT NULL,"
    " seconds DOUBLE PRECISION NOT NULL, buckets TEXT NOT NULL, throttle_waits TEXT NOT NULL)",
)

#: Version 6: the retired row the rows of stopped spooler processes are folded into (store.record_pass),
#: there from the start so that two folds at once update one row rather than both insert it.
_RETIRED_V6 = (
    "INSERT INTO spooler_passes (owner, updated, passes, seconds, buckets, throttle_waits, processes) "
    f"VALUES ('{RETIRED_PASSES}', 0, 0, 0, '{json.dumps([0] * len(PASS_BUCKETS))}', '{{}}', 0) "
    "ON CONFLICT (owner) DO NOTHING"
)

#: Version 7: the "started" mark of a claim (store.mark_started); a lease held at the upgrade counts as started.
_STARTED_V7 = ("UPDATE messages SET started=1 WHERE lease_owner IS NOT NULL",)

# --- SQLite ----------------------------------------------------------------------------------------
# Version 1 is sqlite.SCHEMA (kept there, created with IF NOT EXISTS on every open).
SQLITE_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "CREATE TABLE IF NOT EXISTS transport_usage ("
        " id INTEGER PRIMARY KEY, transport TEXT NOT NULL, time REAL NOT NULL, owner TEXT)",
        "CREATE INDEX IF NOT EXISTS transport_usage_by_time ON transport_usage(transport, time)",
        "CREATE TABLE IF NOT EXISTS breaker_state ("
        " transport TEXT PRIMARY KEY, state TEXT NOT NULL DEFAULT '{}', updated REAL NOT NULL)",
    ),
    3: (
        "ALTER TABLE recipients ADD COLUMN waiting_for TEXT",
        "ALTER TABLE recipients ADD COLUMN detail TEXT",
        "ALTER TABLE messages ADD COLUMN first_try REAL",
        "ALTER TABLE messages ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
    ),
    4: (
        "ALTER TABLE recipients ADD COLUMN declined TEXT",
        "CREATE TABLE IF NOT EXISTS mime_originals ("
        " message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,"
        " fingerprint TEXT NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL)",
        *QUEUE_INDEXES,
    ),
    5: (
        "CREATE TABLE IF NOT EXISTS message_streams ("
        " id INTEGER PRIMARY KEY,"  # a rowid table: SQLite keeps large values best in one
        " message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,"
        " tag INTEGER NOT NULL, data BLOB NOT NULL, UNIQUE (message_id, tag))",
        *_WEB_V5,
        *_PASSES_V5,
    ),
    6: (  # and spooler_passes.processes, added by upgrade_sqlite (SQLite has no ADD COLUMN IF NOT EXISTS)
        *HISTORY_TABLES,
        _RETIRED_V6,
        *rebuild_statements(SQLITE_MINUTE),
    ),
    7: ("ALTER TABLE messages ADD COLUMN started INTEGER NOT NULL DEFAULT 0", *_STARTED_V7),
}


def move_large_properties(db: Any, mark: str = "?") -> int:
    """Move the large properties of stored messages out of their bags (schema 5); how many moved.

    Works on the raw bags: what is not moved is kept as it was stored. `mark` is the driver's
    placeholder (`?` for sqlite3, `%s` for psycopg)."""
    moved = 0
    rows = db.execute(f"SELECT id, props FROM messages WHERE length(props) >= {mark}", (STREAM_THRESHOLD,)).fetchall()
    for mid, text in rows:
        raw = load_raw(text)
        streams: list[tuple[int, int, bytes]] = []
        for key, value in list(raw.items()):
            tag = int(key)
            kind = tag & 0xFFFF
            if not isinstance(value, str) or len(value) < STREAM_THRESHOLD:
                continue
            if kind in (T.PT_UNICODE, T.PT_STRING8):
                streams.append((int(mid), tag, value.encode("utf-8")))
            elif kind == T.PT_BINARY and len(value) >= 2 * STREAM_THRESHOLD:
                streams.append((int(mid), tag, bytes.fromhex(value)))
            else:
                continue
            del raw[key]
        if streams:
            for stream in streams:  # a few per message; psycopg's connection has no executemany
                db.execute(
                    f"INSERT INTO message_streams (message_id, tag, data) VALUES ({mark}, {mark}, {mark})", stream
                )
            db.execute(f"UPDATE messages SET props={mark} WHERE id={mark}", (dump_raw(raw), mid))
            moved += len(streams)
    return moved


def upgrade_sqlite(db: sqlite3.Connection, current: int, *, where: str = "the store") -> int:
    """Bring an SQLite store from `current` to LATEST inside the caller's write transaction."""
    if current > LATEST:
        raise newer_schema(where, current)
    for version in range(current + 1, LATEST + 1):
        if version == 6 and "processes" not in {row[1] for row in db.execute("PRAGMA table_info(spooler_passes)")}:
            db.execute("ALTER TABLE spooler_passes ADD COLUMN processes BIGINT NOT NULL DEFAULT 1")
        for statement in SQLITE_MIGRATIONS.get(version, ()):
            db.execute(statement)
        if version == 5:
            move_large_properties(db)
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (version,))
    return LATEST


# --- PostgreSQL ------------------------------------------------------------------------------------
# The same tables as SQLite's. Times are seconds since the Unix epoch (double precision), as
# in SQLite; property bags are the same JSON text (codec.encode_bag); IDs are identities that
# are never reused (BY DEFAULT only so that `postroom store copy` can keep them).
_PG_V1 = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE IF NOT EXISTS folders (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        parent_id BIGINT REFERENCES folders(id),
        name TEXT NOT NULL,
        role TEXT UNIQUE
    )""",
    # SQLite's COLLATE NOCASE folds ASCII letters only; translate() does exactly that.
    "CREATE UNIQUE INDEX IF NOT EXISTS folder_names ON folders (coalesce(parent_id, 0), "
    "translate(name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'))",
    """CREATE TABLE IF NOT EXISTS messages (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        folder_id BIGINT REFERENCES folders(id),
        parent_attach BIGINT,
        queue_state TEXT,
        submit_time DOUBLE PRECISION,
        next_attempt DOUBLE PRECISION,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        wait_kind TEXT,
        prev_owner TEXT,
        hold_reason TEXT,
        props TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX IF NOT EXISTS messages_folder ON messages(folder_id)",
    "CREATE INDEX IF NOT EXISTS outgoing_queue ON messages(queue_state, submit_time, id) WHERE queue_state IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS recipients (
        message_id BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        row_id INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        transport TEXT,
        outcome_time DOUBLE PRECISION,
        reported INTEGER NOT NULL DEFAULT 0,
        props TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (message_id, row_id)
    )""",
    """CREATE TABLE IF NOT EXISTS attachments (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        message_id BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        num INTEGER NOT NULL,
        data BYTEA,
        embedded_id BIGINT REFERENCES messages(id) DEFERRABLE INITIALLY DEFERRED,
        props TEXT NOT NULL DEFAULT '{}',
        UNIQUE (message_id, num)
    )""",
    # Uncompressed out-of-line storage: reading an attachment chunk by chunk (substring) then
    # fetches only the pages of that chunk.
    "ALTER TABLE attachments ALTER COLUMN data SET STORAGE EXTERNAL",
    "CREATE INDEX IF NOT EXISTS attachments_embedded ON attachments(embedded_id) WHERE embedded_id IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS receive_folders (
        message_class TEXT PRIMARY KEY,
        folder_id BIGINT NOT NULL REFERENCES folders(id)
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        message_id BIGINT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        transport TEXT,
        detail TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_message ON events(message_id, id)",
    """CREATE TABLE IF NOT EXISTS status_rows (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        row TEXT NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        owner TEXT NOT NULL
    )""",
)

_PG_V2 = (
    """CREATE TABLE IF NOT EXISTS transport_usage (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        transport TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        owner TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS transport_usage_by_time ON transport_usage(transport, time)",
    """CREATE TABLE IF NOT EXISTS breaker_state (
        transport TEXT PRIMARY KEY,
        state TEXT NOT NULL DEFAULT '{}',
        updated DOUBLE PRECISION NOT NULL
    )""",
)

_PG_V3 = (
    "ALTER TABLE recipients ADD COLUMN IF NOT EXISTS waiting_for TEXT",
    "ALTER TABLE recipients ADD COLUMN IF NOT EXISTS detail TEXT",
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS first_try DOUBLE PRECISION",
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS failures INTEGER NOT NULL DEFAULT 0",
)

_PG_V4 = (
    "ALTER TABLE recipients ADD COLUMN IF NOT EXISTS declined TEXT",
    """CREATE TABLE IF NOT EXISTS mime_originals (
        message_id BIGINT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL,
        size BIGINT NOT NULL,
        data BYTEA NOT NULL
    )""",
    *QUEUE_INDEXES,
)

_PG_V5 = (
    """CREATE TABLE IF NOT EXISTS message_streams (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        message_id BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        tag BIGINT NOT NULL,
        data BYTEA NOT NULL,
        UNIQUE (message_id, tag)
    )""",
    # Bodies are mostly text that compresses, but a state change never reads them: keep them out of
    # line (TOAST) as PostgreSQL does by default for large values.
    *_WEB_V5,
    *_PASSES_V5,
)

_PG_V6 = (
    *HISTORY_TABLES,
    "ALTER TABLE spooler_passes ADD COLUMN IF NOT EXISTS processes BIGINT NOT NULL DEFAULT 1",
    _RETIRED_V6,
    *rebuild_statements(POSTGRES_MINUTE),
)

_PG_V7 = ("ALTER TABLE messages ADD COLUMN IF NOT EXISTS started SMALLINT NOT NULL DEFAULT 0", *_STARTED_V7)

POSTGRES_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: _PG_V1,
    2: _PG_V2,
    3: _PG_V3,
    4: _PG_V4,
    5: _PG_V5,
    6: _PG_V6,
    7: _PG_V7,
}

#: pg_advisory_xact_lock key for schema changes ("postroom" in ASCII, as a number).
SCHEMA_LOCK = 0x706F7374726F6F6D


def postgres_version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version of the store in the connection's schema; None: no store there yet."""
    # A catalog query, not to_regclass(): that may answer from a cache that another process's
    # just-committed CREATE TABLE has not invalidated yet (no lock is taken on the name).
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = 'meta')"
    ).fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def upgrade_postgres(
    conn: psycopg.Connection[Any], *, where: str, create: Callable[[psycopg.Connection[Any]], None]
) -> tuple[int | None, int]:
    """Create or migrate the schema in one transaction, under the schema lock.

    `create` fills a new store (store UID, special folders, default receive folders) after the
    tables exist. Returns (version before, version after).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        before = postgres_version(conn)
        if before is not None and before > LATEST:
            raise newer_schema(where, before)
        start = 0 if before is None else before
        for version in range(start + 1, LATEST + 1):
            for statement in POSTGRES_MIGRATIONS[version]:
                conn.execute(statement.encode())
            if version == 5 and before is not None:
                move_large_properties(conn, "%s")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (str(version),),
            )
        if before is None:
            create(conn)
    return before, LATEST


def newer_schema(where: str, version: int) -> MAPIError:
    return MAPIError(
        HResult.MAPI_E_VERSION,
        f"{where} was written by a newer postroom (store schema {version}, this one knows {LATEST}); "
        "upgrade postroom to use it",
    )


def older_schema(where: str, version: int) -> MAPIError:
    return MAPIError(
        HResult.MAPI_E_VERSION,
        f"{where} has store schema {version}, this postroom needs {LATEST}: stop every postroom process "
        "that uses it, then run `postroom store migrate` (it is migrated in one transaction)",
    )
