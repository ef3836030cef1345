"""What /metrics reads about the spooler processes themselves: each process's pass totals (one row
it rewrites), summed over the processes, and the connection slots every process holds now.

The other process holding slots is real (a subprocess opening the same store), as in
test_store_connection_slots.py, because the slots are its locks.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from tests.store.test_store_connection_slots import holder

from postroom.store import MessageStore
from postroom.store.activity import PASS_BUCKETS, PassTotals

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def totals(*seconds: float, waits: dict[str, int] | None = None) -> PassTotals:
    out = PassTotals()
    for s in seconds:
        out.add_pass(s)
    for transport, n in (waits or {}).items():
        for _ in range(n):
            out.add_throttle_wait(transport)
    return out


def test_a_store_with_no_spooler_pass_reports_nothing(store: MessageStore) -> None:
    stats = store.spooler_stats(["mta"])
    assert (stats.processes, stats.passes, stats.pass_seconds) == (0, 0, 0.0)
    assert stats.pass_buckets == [0] * len(PASS_BUCKETS)
    assert stats.throttle_waits == {}
    assert stats.slots_in_use == {"mta": 0}


def test_each_process_row_is_rewritten_with_its_totals_and_the_rows_are_summed(
    store: MessageStore, open_another: Callable[[], MessageStore]
) -> None:
    store.record_pass("host:1:a", NOW, totals(0.02))
    store.record_pass("host:1:a", NOW, totals(0.02, 2.0, waits={"MTA": 2}))  # the same process, later
    open_another().record_pass("host:2:b", NOW, totals(0.005, waits={"mta": 1, "fax": 1}))
    stats = store.spooler_stats([])
    assert stats.processes == 2
    assert stats.passes == 3  # not 4: a row holds totals, so rewriting it never counts a pass twice
    assert abs(stats.pass_seconds - 2.025) < 1e-9
    expected = [sum(1 for s in (0.02, 2.0, 0.005) if s <= bound) for bound in PASS_BUCKETS]
    assert stats.pass_buckets == expected
    assert stats.throttle_waits == {"mta": 3, "fax": 1}


def test_slots_in_use_count_every_process_holding_them_once(store: MessageStore, store_target: str) -> None:
    with holder(store_target, "mta", 4, 2) as (proc, taken):
        assert taken == ["0", "1"]
        slots = store.connection_slots
        assert slots.try_acquire("mta", 4) == 2
        assert store.spooler_stats(["MTA", "fax"]).slots_in_use == {"mta": 3, "fax": 0}
        # Reading took nothing: the last free slot is still there to take.
        assert slots.held("mta") == 1
        assert slots.try_acquire("mta", 4) == 3
        slots.release("mta", 2)
        slots.release("mta", 3)
        assert store.spooler_stats(["mta"]).slots_in_use == {"mta": 2}
        proc.kill()
        proc.wait()
        assert store.spooler_stats(["mta"]).slots_in_use == {"mta": 0}


def owners(store: MessageStore) -> list[str]:
    return sorted(str(owner) for (owner,) in store._q("SELECT owner FROM spooler_passes"))  # type: ignore[attr-defined]


def test_the_rows_of_processes_silent_for_an_hour_are_folded_into_one_that_keeps_their_counts(
    store: MessageStore, open_another: Callable[[], MessageStore]
) -> None:
    for i in range(5):  # five spooler processes that each made a pass and stopped, two hours apart
        open_another().record_pass(f"host:{i}:x", NOW + timedelta(hours=2 * i), totals(0.02, waits={"mta": 1}))
    assert owners(store) == ["(retired)", "host:4:x"]  # the table does not grow with restarts
    stats = store.spooler_stats([])
    assert (stats.processes, stats.passes, stats.throttle_waits) == (5, 5, {"mta": 5})
    assert abs(stats.pass_seconds - 0.1) < 1e-9
    assert stats.pass_buckets == [5 if bound >= 0.02 else 0 for bound in PASS_BUCKETS]


def test_a_process_folded_while_it_was_only_idle_counts_each_of_its_passes_once(
    store: MessageStore, open_another: Callable[[], MessageStore]
) -> None:
    store.record_pass("host:1:a", NOW, totals(0.02))
    open_another().record_pass("host:2:b", NOW + timedelta(hours=2), totals(0.5))  # folds a's row
    assert owners(store) == ["(retired)", "host:2:b"]
    store.record_pass("host:1:a", NOW + timedelta(hours=3), totals(0.02, 2.0, waits={"mta": 1}))  # a goes on
    store.record_pass("host:1:a", NOW + timedelta(hours=3), totals(0.02, 2.0, 0.02, waits={"mta": 1}))
    stats = store.spooler_stats([])
    assert stats.passes == 4  # 3 of a's and b's one: what was folded is not written again
    assert abs(stats.pass_seconds - 2.54) < 1e-9
    assert stats.throttle_waits == {"mta": 1}
    assert stats.pass_buckets == [sum(1 for s in (0.02, 2.0, 0.02, 0.5) if s <= bound) for bound in PASS_BUCKETS]
