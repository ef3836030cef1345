"""The queue's hot queries (the claim, the due candidates, the next due time) and their indexes.

A queued message is due when it is free (no lease, or its lease ran out) and its `next_attempt`
is NULL (due at once) or has passed. One ordered walk of `submit_time` cannot find those: every
message waiting for a retry that was submitted earlier would be read and thrown away, inside the
claim's write transaction, and again on every idle turn of the daemon. So the due set is read
as two parts, each from an index that holds only what it may return:

* due at once: `queue_due_now`, in (submit_time, id) order; only leased rows are skipped;
* due again after a wait: `queue_due_retry`, by next_attempt; only those whose time has come are
  read, then sorted. (When very many are due at once, SQLite walks `outgoing_queue` in order for
  this part instead: RETRY_SORT_MAX.)

Each part is limited, then the two are merged oldest first, so the order is exactly that of one
walk. On PostgreSQL each part locks with FOR UPDATE SKIP LOCKED as it reads: a concurrent claimer
skips locked rows *inside* the part and reads on, so claimers never collide on a short candidate
list (a part may lock up to `limit` rows it does not return; they are free again at COMMIT).
Both stores use the same SQL text (SQLite's `?` placeholders; `lock` is empty there, since BEGIN
IMMEDIATE already excludes every other writer).
"""

from __future__ import annotations

from collections.abc import Sequence

#: The indexes the queries below use; created by schema version 4 (migrations.py) and the base
#: SQLite schema. Partial, so a store of sent mail does not carry its history in them.
QUEUE_INDEXES: tuple[str, ...] = (
    "CREATE INDEX IF NOT EXISTS queue_due_now ON messages(submit_time, id) "
    "WHERE queue_state='queued' AND next_attempt IS NULL",
    "CREATE INDEX IF NOT EXISTS queue_due_retry ON messages(next_attempt) "
    "WHERE queue_state='queued' AND next_attempt IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS queue_leases ON messages(lease_until) WHERE lease_owner IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS queue_waits ON messages(wait_kind) WHERE queue_state IS NOT NULL",
)
QUEUE_INDEX_NAMES = tuple(s.split()[5] for s in QUEUE_INDEXES)

#: The SET of every claim (parameters: owner, lease end). A claim that takes over a run-out lease
#: records whose outcome is unknown in prev_owner only when that claim was *started* (started=1:
#: a transport was about to be called for the message, `mark_started`); a message its dead claimer
#: had only claimed ahead is due again like any other. started=2 is a message given back free while
#: a transport call was cut short (`give_back`; prev_owner names its spooler): unknown as well. A
#: taken-over message whose outcome is unknown stays started until it leaves the queue or is
#: claimed free again: the outcome of that call is still unknown if its new claimer dies too.
CLAIM_SET = (
    "prev_owner=CASE WHEN started=1 THEN lease_owner WHEN started=2 THEN prev_owner END, "
    "started=CASE WHEN started=2 THEN 1 WHEN lease_owner IS NULL THEN 0 ELSE started END, "
    "lease_owner=?, lease_until=?, attempts=attempts+1"
)

_FREE = "(lease_owner IS NULL OR lease_until < ?)"
_NOT_OFFLINE = "coalesce(wait_kind, '') != 'send_receive'"


def _using(index: str, hints: bool) -> str:
    """SQLite has no statistics unless ANALYZE ran, and prefers `outgoing_queue` (queue_state, then
    the ORDER BY) by its rules of thumb: that is the walk this module exists to avoid. INDEXED BY
    names the index (and makes SQLite fail loudly if it ever cannot use it). PostgreSQL plans
    from its statistics; it needs no hint."""
    return f" INDEXED BY {index}" if hints else ""


#: SQLite only: when more than `limit` + this many retries are due at once (the daemon was stopped
#: for hours), sorting them all on every claim would cost more than walking `outgoing_queue` in
#: order until enough due ones are found. A bounded count on `queue_due_retry` decides (retry_probe).
RETRY_SORT_MAX = 200

#: How many retries are due, counted up to the second parameter (an index-only read).
RETRY_PROBE_SQL = (
    "SELECT count(*) FROM (SELECT 1 FROM messages INDEXED BY queue_due_retry WHERE queue_state='queued' "
    "AND next_attempt IS NOT NULL AND next_attempt <= ? LIMIT ?) AS due"
)


def retry_probe_params(t: float, limit: int) -> tuple[float, int]:
    return (t, limit + RETRY_SORT_MAX)


def retry_index(due_retries: int, limit: int) -> str:
    """The index the retry part reads, from RETRY_PROBE_SQL's count."""
    return "queue_due_retry" if due_retries < limit + RETRY_SORT_MAX else "outgoing_queue"


def due_sql(lock: str, extra: str = "", *, hints: bool = False, retries: str = "queue_due_retry") -> str:
    """`SELECT id` of up to `limit` due messages, oldest first; `extra` narrows both parts
    (its parameters are due_params' `skip`). Parameters: due_params(). `retries` names the index
    of the retry part where `hints` are given (retry_index)."""
    now = (
        f"SELECT id, submit_time FROM messages{_using('queue_due_now', hints)} WHERE queue_state='queued' "
        f"AND next_attempt IS NULL AND {_FREE}{extra} ORDER BY submit_time, id LIMIT ?{lock}"
    )
    retry = (
        f"SELECT id, submit_time FROM messages{_using(retries, hints)} WHERE queue_state='queued' "
        f"AND next_attempt IS NOT NULL AND next_attempt <= ? AND {_FREE}{extra} ORDER BY submit_time, id LIMIT ?{lock}"
    )
    return (
        f"SELECT id FROM (SELECT * FROM ({now}) AS due_now UNION ALL SELECT * FROM ({retry}) AS due_retry) AS due "
        "ORDER BY submit_time, id LIMIT ?"
    )


def due_params(t: float, limit: int, skip: Sequence[int | None] = ()) -> tuple[object, ...]:
    return (t, *skip, limit, t, t, *skip, limit, limit)


def next_due_sql(*, hints: bool = False) -> str:
    """When the daemon must look at the queue again (Send/Receive waits aside): the earliest lease
    end, now if a free message is due at once, else the earliest retry time. Each part reads its
    index up to the first match. The retry part stops below OFFLINE_EPOCH (the one parameter),
    where the messages waiting for Send/Receive are parked, so a large offline queue is not read
    either (no real time is that large: from_epoch could not even convert it)."""
    return (
        "SELECT min(t) FROM ("
        f"SELECT min(lease_until) AS t FROM messages{_using('queue_leases', hints)} WHERE lease_owner IS NOT NULL"
        f" AND queue_state='queued' AND {_NOT_OFFLINE}"
        f" UNION ALL SELECT * FROM (SELECT 0.0 AS t FROM messages{_using('queue_due_now', hints)}"
        f" WHERE queue_state='queued' AND next_attempt IS NULL AND lease_owner IS NULL AND {_NOT_OFFLINE}"
        " ORDER BY submit_time, id LIMIT 1)"  # the order of its index: PostgreSQL then reads that, not the table
        " AS due_now"
        f" UNION ALL SELECT * FROM (SELECT next_attempt AS t FROM messages{_using('queue_due_retry', hints)}"
        " WHERE queue_state='queued' AND next_attempt IS NOT NULL AND next_attempt < ? AND lease_owner IS NULL"
        f" AND {_NOT_OFFLINE} ORDER BY next_attempt LIMIT 1) AS due_retry"
        ") AS due"
    )
