"""Running totals of the history, kept as it is written (schema 6), so that the status page's
charts and /metrics read a number of rows that does not grow with the history.

Two tables, both only ever added to:

* `history_totals`: how many events of each counted kind each transport has (outcomes, retries,
  operator retries, inbound, submissions, messages that left the queue), and the delivery
  latency histogram (counter 'latency', one row per bucket of LATENCY_BOUNDS plus one above
  them, with the sum of the latencies).
* `history_minutes`: the chart's buckets, one row per minute: deliveries, failures (failed and
  expired), submissions and messages that left the queue (finished or aborted).

Every transaction that writes counted events adds them in at its end (sqlbase._counting): one
upsert of history_totals, one of history_minutes, whatever the number of events. Each row is
keyed by a shard too (a store object picks one), so that several spooler processes on a shared
PostgreSQL store do not all queue for the same row at each commit; the rows of a statement are
locked in key order and history_totals before history_minutes, so two writers never deadlock.
Readers sum over the shards.

The history itself is never pruned (nothing deletes events), and history_totals only grows by
addition: the counters /metrics derives from them never go down. The chart's minute rows older than
CHART_MINUTES_KEPT are deleted (sqlbase.record_pass, at most every PASSES_FOLD_EVERY), and the
oldest minute still kept is written to `meta` (CHART_HORIZON_KEY): a chart asked from before it is
answered from the history instead, so no answer is ever short of the minutes that were deleted.
Schema 6 builds them once from the existing history (rebuild_statements), and `postroom store
copy` rebuilds them on the target.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .activity import LEFT_KINDS, OUTCOME_KINDS, RETRY_KINDS

#: Upper bounds (seconds) of the delivery latency histogram kept in the totals: /metrics shows them
#: (web/metrics.py LATENCY_BUCKETS is the same tuple); other bounds are answered from the history.
LATENCY_BOUNDS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0)
#: The history words counted in history_totals.
COUNTED_KINDS = frozenset((*OUTCOME_KINDS, *RETRY_KINDS, "retry", "received", "submitted", *LEFT_KINDS))
#: The history words the chart counts (history_minutes).
CHART_KINDS = frozenset((*OUTCOME_KINDS, "submitted", *LEFT_KINDS))
#: The counter name of the latency histogram's rows in history_totals.
LATENCY = "latency"
MINUTE = 60
#: How long the chart's minute rows are kept, in seconds: the status page shows the last day; a
#: week leaves room for a longer view without a table that grows with the store's age.
CHART_MINUTES_KEPT = 7 * 86400
#: The `meta` key holding the oldest minute (epoch // MINUTE) the chart's rows still cover.
CHART_HORIZON_KEY = "chart_minutes_from"

TABLES = (
    "CREATE TABLE IF NOT EXISTS history_totals ("
    " counter TEXT NOT NULL, transport TEXT NOT NULL, slot INTEGER NOT NULL, shard INTEGER NOT NULL,"
    " n BIGINT NOT NULL, total DOUBLE PRECISION NOT NULL, PRIMARY KEY (counter, transport, slot, shard))",
    "CREATE TABLE IF NOT EXISTS history_minutes ("
    " minute BIGINT NOT NULL, shard INTEGER NOT NULL, delivered BIGINT NOT NULL, failed BIGINT NOT NULL,"
    " submitted BIGINT NOT NULL, left_queue BIGINT NOT NULL, PRIMARY KEY (minute, shard))",
)


def _quoted(words: Iterable[str]) -> str:
    return ", ".join(f"'{w}'" for w in sorted(words))


def _slot(lat: str) -> str:
    """SQL: the latency histogram bucket of `lat` (len(LATENCY_BOUNDS): above every bound)."""
    whens = " ".join(f"WHEN {lat} <= {b!r} THEN {i}" for i, b in enumerate(LATENCY_BOUNDS))
    return f"CASE {whens} ELSE {len(LATENCY_BOUNDS)} END"


def minute_of(t: float) -> int:
    return math.floor(t / MINUTE)


class Tally:
    """The counted events of one transaction, reduced to the rows the totals statements add."""

    def __init__(self, rows: Iterable[Sequence[Any]]) -> None:
        #: (kind, transport as written) -> events (a dict: a Counter costs a microsecond to make,
        #: and every commit makes a Tally)
        self.kinds: dict[tuple[str, str | None], int] = {}
        #: (message id, time, transport) of each outcome, for the latency histogram
        self.outcomes: list[tuple[int, float, str | None]] = []
        #: minute -> [delivered, failed, submitted, left the queue]
        self.minutes: dict[int, list[int]] = {}
        for mid, t, kind, transport, *_ in rows:
            word = str(kind)
            if word not in COUNTED_KINDS:
                continue
            key = (word, transport)
            self.kinds[key] = self.kinds.get(key, 0) + 1
            if word in OUTCOME_KINDS:
                self.outcomes.append((int(mid), float(t), transport))
            if word in CHART_KINDS:
                counts = self.minutes.setdefault(minute_of(float(t)), [0, 0, 0, 0])
                column = 0 if word == "delivered" else 1 if word in OUTCOME_KINDS else 2 if word == "submitted" else 3
                counts[column] += 1


def totals_upsert(kinds: str | None, outcomes: str | None, shard: int) -> str:
    """SQL adding one transaction's counts to history_totals. `kinds` is a table v(kind, transport,
    n), `outcomes` one o(message id, time, transport), either None when empty. Transports are
    lowered in SQL, as the history scans did; a latency is measured from the message's first
    submission, as the history scans did."""
    parts = []
    if kinds:
        parts.append(
            "SELECT k.column1 AS counter, lower(coalesce(k.column2, '')) AS transport, 0 AS slot, "
            f"k.column3 AS n, CAST(0 AS DOUBLE PRECISION) AS total FROM {kinds}"
        )
    if outcomes:
        parts.append(
            f"SELECT '{LATENCY}' AS counter, l.transport AS transport, {_slot('l.lat')} AS slot, "
            "1 AS n, l.lat AS total FROM "
            "(SELECT lower(coalesce(o.column3, '')) AS transport, o.column2 - (SELECT min(e.time) FROM events e "
            f"WHERE e.message_id = o.column1 AND e.kind = 'submitted') AS lat FROM {outcomes}) l "
            "WHERE l.lat IS NOT NULL"
        )
    return (
        "INSERT INTO history_totals (counter, transport, slot, shard, n, total) "
        f"SELECT counter, transport, slot, {int(shard)}, sum(n), sum(total) FROM ({' UNION ALL '.join(parts)}) t "
        "WHERE true GROUP BY counter, transport, slot ORDER BY counter, transport, slot "
        "ON CONFLICT (counter, transport, slot, shard) DO UPDATE SET n = history_totals.n + excluded.n, "
        "total = history_totals.total + excluded.total"
    )


def one_kind_upsert(shard: int) -> str:
    """SQL adding the counts of a transaction that wrote events of one kind and transport and no
    outcome (a submission, a retry): totals_upsert for that one row, whose parameters are (kind,
    transport, events). Without the VALUES table, its GROUP BY and ORDER BY, SQLite runs it in half
    the time, and one message submitted at a time writes it with every commit."""
    return (
        "INSERT INTO history_totals (counter, transport, slot, shard, n, total) "
        f"VALUES (?, lower(coalesce(?, '')), 0, {int(shard)}, ?, CAST(0 AS DOUBLE PRECISION)) "
        "ON CONFLICT (counter, transport, slot, shard) DO UPDATE SET n = history_totals.n + excluded.n, "
        "total = history_totals.total + excluded.total"
    )


def one_minute_upsert(shard: int) -> str:
    """minutes_upsert for the counts of one minute: parameters (minute, delivered, failed,
    submitted, left the queue)."""
    return (
        "INSERT INTO history_minutes (minute, shard, delivered, failed, submitted, left_queue) "
        f"VALUES (CAST(? AS BIGINT), {int(shard)}, CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT), "
        "CAST(? AS BIGINT)) "
        "ON CONFLICT (minute, shard) DO UPDATE SET delivered = history_minutes.delivered + excluded.delivered, "
        "failed = history_minutes.failed + excluded.failed, "
        "submitted = history_minutes.submitted + excluded.submitted, "
        "left_queue = history_minutes.left_queue + excluded.left_queue"
    )


def minutes_upsert(minutes: str, shard: int) -> str:
    """SQL adding one transaction's chart counts; `minutes` is a table m(minute, delivered, failed,
    submitted, left the queue) in minute order."""
    return (
        "INSERT INTO history_minutes (minute, shard, delivered, failed, submitted, left_queue) "
        f"SELECT m.column1, {int(shard)}, m.column2, m.column3, m.column4, m.column5 FROM {minutes} "
        "WHERE true ORDER BY m.column1 "
        "ON CONFLICT (minute, shard) DO UPDATE SET delivered = history_minutes.delivered + excluded.delivered, "
        "failed = history_minutes.failed + excluded.failed, "
        "submitted = history_minutes.submitted + excluded.submitted, "
        "left_queue = history_minutes.left_queue + excluded.left_queue"
    )


def rebuild_statements(minute_sql: str) -> tuple[str, ...]:
    """SQL that builds both tables from the whole history, into shard 0 (schema 6, store copy).
    `minute_sql` is the dialect's whole-minute number of `time`."""
    outcomes = _quoted(OUTCOME_KINDS)
    left = _quoted(LEFT_KINDS)
    return (
        "DELETE FROM history_totals",
        "DELETE FROM history_minutes",
        "INSERT INTO history_totals (counter, transport, slot, shard, n, total) "
        "SELECT kind, coalesce(lower(transport), ''), 0, 0, count(*), 0 FROM events "
        f"WHERE kind IN ({_quoted(COUNTED_KINDS)}) GROUP BY kind, coalesce(lower(transport), '')",
        "INSERT INTO history_totals (counter, transport, slot, shard, n, total) "
        f"SELECT '{LATENCY}', name, slot, 0, count(*), sum(lat) FROM "
        f"(SELECT name, lat, {_slot('lat')} AS slot FROM "
        "(SELECT coalesce(lower(e.transport), '') AS name, e.time - s.first AS lat FROM events e JOIN "
        "(SELECT message_id, min(time) AS first FROM events WHERE kind = 'submitted' GROUP BY message_id) s "
        f"ON s.message_id = e.message_id WHERE e.kind IN ({outcomes})) x) y GROUP BY name, slot",
        "INSERT INTO history_minutes (minute, shard, delivered, failed, submitted, left_queue) "
        f"SELECT {minute_sql}, 0, sum(CASE WHEN kind = 'delivered' THEN 1 ELSE 0 END), "
        f"sum(CASE WHEN kind IN ({outcomes}) AND kind <> 'delivered' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN kind = 'submitted' THEN 1 ELSE 0 END), "
        f"sum(CASE WHEN kind IN ({left}) THEN 1 ELSE 0 END) FROM events "
        f"WHERE kind IN ({_quoted(CHART_KINDS)}) GROUP BY {minute_sql}",
    )


#: The whole-minute number of an event's time in each dialect (SQLite: times are positive, and
#: CAST truncates; PostgreSQL's CAST would round).
SQLITE_MINUTE = f"CAST(time / {MINUTE} AS INTEGER)"
POSTGRES_MINUTE = f"CAST(floor(time / {MINUTE}) AS BIGINT)"
