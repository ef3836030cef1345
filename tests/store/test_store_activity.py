"""What the status page and /metrics read from the store (schema 5): the queue a page at a time,
its counts, and the history by time. The same answers from both stores."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.store.test_store_queue import NOW, submitted

from postroom.store import MessageStore, QueueState, RecipientOutcome, RecipientState


def finish(store: MessageStore, mid: int, state: RecipientState, transport: str, seconds: float) -> None:
    at = NOW + timedelta(seconds=seconds)
    assert store.claim_message("me", mid, at, 30)
    store.finish(mid, "me", at, [RecipientOutcome(0, state, transport)])


def test_queue_pages_follow_one_another_in_queue_order_without_a_gap_or_a_repeat(store: MessageStore) -> None:
    # Pairs submitted at the same instant: the ID breaks the tie, as in queue().
    for i in range(23):
        submitted(store, f"u{i}@x.test", at=NOW + timedelta(seconds=i // 2))
    seen, after = [], None
    while True:
        page = store.queue_page(after, 5)
        assert len(page.entries) <= 5
        seen += [e.id for e in page.entries]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == [e.id for e in store.queue()]


def test_queue_pages_filter_by_state_and_by_text_in_subject_to_or_last_reply(store: MessageStore) -> None:
    ids = [submitted(store, f"u{i}@x.test", at=NOW + timedelta(seconds=i)) for i in range(12)]
    for mid in ids[::3]:
        store.hold(mid, NOW, "held here")
    held = store.queue_page(None, 2, QueueState.HELD)
    assert [e.id for e in held.entries] == ids[0:6:3] and held.next_after == ids[3]
    assert [e.id for e in store.queue_page(held.next_after, 2, QueueState.HELD).entries] == ids[6::3]
    assert [e.id for e in store.queue_page(None, 50, text="U7@X").entries] == [ids[7]]
    assert store.queue_page(None, 50, text="nobody").entries == []


def test_queue_counts_by_state_and_the_oldest_submission(store: MessageStore) -> None:
    ids = [submitted(store, f"u{i}@x.test", at=NOW + timedelta(seconds=i)) for i in range(3)]
    store.hold(ids[1], NOW, "held here")
    counts = store.queue_counts()
    assert counts.by_state == {"queued": 2, "held": 1} and counts.total == 3
    assert counts.oldest_submit == NOW


def test_activity_counts_outcomes_in_their_step_and_the_queue_depth_at_each_step_end(store: MessageStore) -> None:
    ids = [submitted(store, f"u{i}@x.test", at=NOW) for i in range(3)]
    finish(store, ids[0], RecipientState.DELIVERED, "smtp", 70)
    finish(store, ids[1], RecipientState.FAILED, "smtp", 130)
    steps = store.activity(NOW - timedelta(seconds=60), NOW + timedelta(seconds=180), 60)
    assert [(s.delivered, s.failed, s.depth) for s in steps] == [(0, 0, 0), (0, 0, 3), (1, 0, 2), (0, 1, 1)]
    assert steps[0].start == NOW - timedelta(seconds=60)


def test_delivery_stats_count_outcomes_by_transport_and_time_them_from_submission(store: MessageStore) -> None:
    ids = [submitted(store, f"u{i}@x.test", at=NOW) for i in range(3)]
    finish(store, ids[0], RecipientState.DELIVERED, "SMTP", 2)
    finish(store, ids[1], RecipientState.DELIVERED, "smtp", 4)
    finish(store, ids[2], RecipientState.FAILED, "", 8)
    stats = store.delivery_stats([3.0, 5.0])
    assert stats.outcomes == {("smtp", "delivered"): 2, ("", "failed"): 1}
    assert stats.latency_bounds == (3.0, 5.0)
    assert stats.latency_buckets == {"smtp": [1, 2], "": [0, 0]}
    assert stats.latency_count == {"smtp": 2, "": 1}
    assert stats.latency_sum == {"smtp": pytest.approx(6.0), "": pytest.approx(8.0)}


def test_a_text_filter_pages_through_every_match_ascii_or_not(store: MessageStore) -> None:
    ids = [submitted(store, f"u{i}@x.test", at=NOW + timedelta(seconds=i)) for i in range(30)]
    accented = submitted(store, "zoé@x.test", at=NOW + timedelta(seconds=40))
    seen, after = [], None
    while True:
        page = store.queue_page(after, 2, text="U1")
        seen += [e.id for e in page.entries]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == [ids[1], *ids[10:20]]
    assert [e.id for e in store.queue_page(None, 5, text="ZOÉ").entries] == [accented]
    assert store.queue_page(None, 5, text='50%"').entries == []
