"""The history's running totals (schema 6, store/history_totals.py): what /metrics and the status
page's chart read, kept as the history is written, equal to what a scan of the history finds, on
both stores, and never fewer when the history loses rows."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tests.store.pgutil import require_server, temp_schema
from tests.store.test_store_activity import finish
from tests.store.test_store_migrations import read_version
from tests.store.test_store_queue import NOW, message, submitted

from postroom.mapi.codes import MAPIError
from postroom.store import EventKind, FolderRole, MessageStore, RecipientOutcome, RecipientState, open_store
from postroom.store.activity import PassTotals
from postroom.store.base import ActivityBucket, DeliveryStats
from postroom.store.history_totals import CHART_MINUTES_KEPT, LATENCY_BOUNDS
from postroom.store.migrations import LATEST
from postroom.storeadmin import copy_store, locate, migrate
from postroom.web.metrics import LATENCY_BUCKETS

#: A bound the totals do not keep: delivery_stats() then measures the latencies from the history.
SCANNED = (*LATENCY_BOUNDS, 1e12)
#: Whole minutes around the history below: the chart is read from the per-minute totals.
SINCE = NOW.replace(second=0) - timedelta(minutes=1)
UNTIL = SINCE + timedelta(minutes=10)

D, F, X = RecipientState.DELIVERED, RecipientState.FAILED, RecipientState.EXPIRED


def write_history(store: MessageStore) -> None:
    """Outcomes by transports spelled in two cases, temporary failures, an operator's retry, an
    inbound message, an aborted submission, a batch finished at once and a two-recipient message."""
    ids = [submitted(store, f"u{i}@x.test", at=NOW + timedelta(seconds=i)) for i in range(6)]
    finish(store, ids[0], D, "SMTP", 70)
    finish(store, ids[1], F, "smtp", 130)
    finish(store, ids[2], X, "fax", 200)
    store.add_event(ids[3], NOW + timedelta(seconds=10), EventKind.WAIT, "busy", "smtp")
    store.add_event(ids[3], NOW + timedelta(seconds=20), EventKind.TRANSPORT_ERROR, "refused", "Fax")
    assert store.retry_now(ids[4], NOW + timedelta(seconds=30)) == 1
    store.deliver_message(store.folder(FolderRole.INBOX).id, message("me@x.test"), NOW + timedelta(seconds=40))
    store.abort_submit(ids[5], NOW + timedelta(seconds=50))
    later = NOW + timedelta(seconds=300)
    assert store.claim_messages("me", ids[3:5], later, 60) == ids[3:5]
    done = store.finish_many("me", [(mid, [RecipientOutcome(0, D, "smtp")]) for mid in ids[3:5]], later)
    assert done == ["left", "left"]
    two = submitted(store, "a@x.test", "b@x.test", at=NOW + timedelta(seconds=60))
    at = NOW + timedelta(seconds=420)
    assert store.claim_message("me", two, at, 30)
    store.finish(two, "me", at, [RecipientOutcome(0, D, "smtp"), RecipientOutcome(1, F, "smtp")])


def steps(buckets: list[ActivityBucket]) -> list[tuple[datetime, int, int, int]]:
    return [(b.start, b.delivered, b.failed, b.depth) for b in buckets]


def chart_from_history(store: MessageStore) -> list[tuple[datetime, int, int, int]]:
    start, end = SINCE.timestamp(), UNTIL.timestamp()
    return steps(store._activity_from_history(SINCE, start, end, 60))  # type: ignore[attr-defined]


def check_counters(stats: DeliveryStats) -> None:
    assert stats.outcomes == {("smtp", "delivered"): 4, ("smtp", "failed"): 2, ("fax", "expired"): 1}
    assert stats.retries == {"smtp": 1, "fax": 1}
    assert (stats.operator_retries, stats.inbound) == (1, 1)


def check_latencies(kept: DeliveryStats, scanned: DeliveryStats) -> None:
    assert kept.latency_bounds == LATENCY_BOUNDS
    assert kept.latency_count == scanned.latency_count == {"smtp": 6, "fax": 1}
    assert kept.latency_buckets == {name: below[:-1] for name, below in scanned.latency_buckets.items()}
    assert kept.latency_sum == pytest.approx(scanned.latency_sum)
    assert kept.latency_sum["smtp"] == pytest.approx(70 + 129 + 297 + 296 + 360 + 360)


def test_the_counters_read_from_the_totals_equal_a_scan_of_the_history(store: MessageStore) -> None:
    write_history(store)
    kept = store.delivery_stats(LATENCY_BOUNDS)
    check_counters(kept)
    check_latencies(kept, store.delivery_stats(SCANNED))
    assert store.delivery_stats([60.0, 300.0]).latency_buckets == {"smtp": [0, 4], "fax": [0, 1]}


def test_the_chart_in_whole_minutes_read_from_the_totals_equals_a_scan_of_the_history(store: MessageStore) -> None:
    write_history(store)
    chart = steps(store.activity(SINCE, UNTIL, 60))
    assert chart == chart_from_history(store)
    # Six submitted at 03:04, one inbound (no queue), one aborted at 03:04; one more submitted at 03:05.
    assert [(d, f, depth) for _, d, f, depth in chart[:4]] == [(0, 0, 0), (0, 0, 5), (1, 0, 5), (0, 1, 4)]
    assert sum(d for _, d, _, _ in chart) == 4 and sum(f for _, _, f, _ in chart) == 3
    assert chart[-1][3] == 0
    half_hours = store.activity(SINCE - timedelta(minutes=29), SINCE + timedelta(minutes=31), 1800)
    assert [(b.delivered, b.failed, b.depth) for b in half_hours] == [(0, 0, 0), (4, 3, 0)]


def test_a_failed_step_inside_a_batch_takes_its_counts_out_with_its_history(store: MessageStore) -> None:
    two = submitted(store, "a@x.test", "b@x.test")
    one = submitted(store, "c@x.test")
    assert store.claim_messages("me", [two, one], NOW, 60) == [two, one]
    with store.batch():
        with pytest.raises(MAPIError):  # one recipient left pending: finish() is refused, as a whole
            store.finish(two, "me", NOW, [RecipientOutcome(0, D, "smtp")])
        store.finish(one, "me", NOW, [RecipientOutcome(0, D, "smtp")])
    assert [e.kind for e in store.events(two)] == ["submitted"]
    assert store.delivery_stats().outcomes == {("smtp", "delivered"): 1}


def raw_execute(backend: str, target: str, *statements: str) -> None:
    """Change the store's tables behind its back (what an older postroom, or an operator, did)."""
    if backend == "sqlite":
        db = sqlite3.connect(target)
        with db:
            for statement in statements:
                db.execute(statement)
        db.close()
        return
    import psycopg

    with psycopg.connect(target, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def test_the_counters_and_the_chart_do_not_read_the_history_and_do_not_drop_when_it_loses_rows(
    backend: str, store_target: str
) -> None:
    store = open_store(store_target)
    try:
        write_history(store)
        stats, chart = store.delivery_stats(LATENCY_BOUNDS), steps(store.activity(SINCE, UNTIL, 60))
        raw_execute(backend, store_target, "DELETE FROM events")
        assert store.delivery_stats(LATENCY_BOUNDS) == stats
        assert steps(store.activity(SINCE, UNTIL, 60)) == chart
    finally:
        store.close()


def test_a_schema_5_store_gets_its_totals_built_from_its_history(backend: str, store_target: str) -> None:
    store = open_store(store_target)
    write_history(store)
    scanned, chart = store.delivery_stats(SCANNED), chart_from_history(store)
    store.close()
    raw_execute(
        backend,
        store_target,
        "DROP TABLE history_totals",
        "DROP TABLE history_minutes",
        "ALTER TABLE spooler_passes DROP COLUMN processes",
        "ALTER TABLE messages DROP COLUMN started",  # schema 7
        "UPDATE meta SET value='5' WHERE key='schema_version'",
    )
    if backend == "postgres":
        assert migrate(store_target).before == 5
    store = open_store(store_target)  # SQLite: migrated as it opens
    try:
        assert read_version(backend, store_target) == LATEST
        kept = store.delivery_stats(LATENCY_BOUNDS)
        check_counters(kept)
        check_latencies(kept, scanned)
        assert steps(store.activity(SINCE, UNTIL, 60)) == chart
        finish(store, submitted(store, "late@x.test"), D, "smtp", 1)  # and it counts on from there
        assert store.delivery_stats().outcomes[("smtp", "delivered")] == 5
    finally:
        store.close()


def test_a_copied_store_has_the_totals_of_the_history_it_was_given(tmp_path: Path) -> None:
    require_server()
    first, back = tmp_path / "first.sqlite", tmp_path / "back.sqlite"
    store = open_store(first)
    write_history(store)
    stats, chart = store.delivery_stats(LATENCY_BOUNDS), steps(store.activity(SINCE, UNTIL, 60))
    store.close()
    with temp_schema("copy") as url:
        copy_store(locate(str(first)), locate(url))  # PostgreSQL builds them ...
        copy_store(locate(url), locate(str(back)))  # ... and SQLite
        for target in (url, str(back)):
            copied = open_store(target)
            try:
                assert copied.delivery_stats(LATENCY_BOUNDS) == stats
                assert steps(copied.activity(SINCE, UNTIL, 60)) == chart
            finally:
                copied.close()


def test_writers_on_one_store_at_once_add_to_the_same_total_rows_losing_nothing(
    store: MessageStore, open_another: Callable[[], MessageStore]
) -> None:
    """Several writers (separate connections: as many spooler processes on PostgreSQL) finishing
    messages at once, all on the same shard: every outcome counted once, no deadlock."""
    writers = [open_another() for _ in range(3)]
    work = {w: [submitted(store, f"w{n}.{i}@x.test") for i in range(24)] for n, w in enumerate(writers)}
    errors: list[BaseException] = []

    def finish_in_batches(writer: MessageStore, ids: list[int]) -> None:
        writer._shard = 0  # type: ignore[attr-defined]  # the rows every writer contends for
        try:
            for start in range(0, len(ids), 4):
                chunk = ids[start : start + 4]
                at = NOW + timedelta(seconds=start)
                assert writer.claim_messages(f"owner{id(writer)}", chunk, at, 60) == chunk
                outcomes = [(mid, [RecipientOutcome(0, D if mid % 3 else F, "smtp")]) for mid in chunk]
                assert writer.finish_many(f"owner{id(writer)}", outcomes, at) == ["left"] * len(chunk)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish_in_batches, args=(w, ids)) for w, ids in work.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    every = [mid for ids in work.values() for mid in ids]
    failed = sum(1 for mid in every if mid % 3 == 0)
    kept = store.delivery_stats(LATENCY_BOUNDS)
    assert kept.outcomes == {("smtp", "delivered"): len(every) - failed, ("smtp", "failed"): failed}
    check = store.delivery_stats(SCANNED)
    assert kept.latency_count == check.latency_count == {"smtp": len(every)}
    assert kept.latency_buckets == {name: below[:-1] for name, below in check.latency_buckets.items()}
    assert steps(store.activity(SINCE, UNTIL, 60)) == chart_from_history(store)


def test_metrics_shows_the_latency_bounds_the_totals_keep() -> None:
    assert tuple(LATENCY_BUCKETS) == LATENCY_BOUNDS


def test_chart_minutes_older_than_a_week_are_deleted_and_a_chart_from_before_them_reads_the_history(
    store: MessageStore,
) -> None:
    write_history(store)
    week_later = NOW + timedelta(seconds=CHART_MINUTES_KEPT + 3600)
    chart = steps(store.activity(SINCE, UNTIL, 60))
    store.record_pass("a spooler", NOW, PassTotals())  # nothing to delete yet
    assert store._q("SELECT count(*) FROM history_minutes")[0][0] > 0  # type: ignore[attr-defined]
    store.record_pass("a spooler", week_later, PassTotals())
    assert store._q("SELECT count(*) FROM history_minutes")[0][0] == 0  # type: ignore[attr-defined]
    assert steps(store.activity(SINCE, UNTIL, 60)) == chart == chart_from_history(store)  # from the history now
    check_counters(store.delivery_stats(LATENCY_BOUNDS))  # the totals stay
    recent = week_later.replace(second=0, microsecond=0)
    assert [b.delivered for b in store.activity(recent - timedelta(minutes=5), recent, 60)] == [0] * 5
