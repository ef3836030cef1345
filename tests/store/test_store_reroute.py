"""A waiting recipient's declines, and moving waiting recipients when the routing changes: the same
in both stores."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.store.test_store_queue import delivered, submitted

from postroom.store import (
    EventKind,
    MessageStore,
    QueueState,
    RecipientMove,
    RecipientState,
    RecipientWait,
    WaitKind,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def waiting(store: MessageStore, address: str, transport: str, declined: dict[str, str]) -> int:
    mid = submitted(store, address)
    assert store.claim("me", NOW, 60) == [mid]
    store.release(
        mid, "me", NOW, None, "offline", WaitKind.SEND_RECEIVE, waits=[RecipientWait(0, transport, "why", declined)]
    )
    return mid


def test_declines_are_kept_while_a_recipient_waits_and_dropped_with_its_outcome(store: MessageStore) -> None:
    mid = waiting(store, "a@x.test", "work", {"gate": "f1", "relay": "f2"})
    (state,) = store.recipient_states(mid)
    assert (state.waiting_for, state.declined) == ("work", {"gate": "f1", "relay": "f2"})
    (w,) = store.waiting_recipients()
    assert (w.message_id, w.waiting_for, w.declined, w.wait_kind, w.held) == (
        mid,
        "work",
        {"gate": "f1", "relay": "f2"},
        WaitKind.SEND_RECEIVE,
        False,
    )
    assert w.recipient.email_address == "a@x.test"

    store.wake(NOW)
    store.claim("me", NOW, 60)
    store.finish(mid, "me", NOW, [delivered(0, "work")])
    (state,) = store.recipient_states(mid)
    assert (state.state, state.declined, state.waiting_for) == (RecipientState.DELIVERED, {}, None)
    assert store.waiting_recipients() == []


def test_reroute_moves_wakes_notes_and_records_the_routing_in_one_go(store: MessageStore) -> None:
    quiet = waiting(store, "a@x.test", "work", {})
    woken = waiting(store, "b@x.test", "work", {})
    held = waiting(store, "c@x.test", "work", {})
    store.hold(held, NOW, "check")
    stale = waiting(store, "d@x.test", "work", {})
    assert store.routing() is None
    moves = [
        RecipientMove(quiet, 0, "work", "corp", "not called while offline"),
        RecipientMove(woken, 0, "work", None, "no transport"),
        RecipientMove(held, 0, "work", "corp", "moved"),
        RecipientMove(stale, 0, "elsewhere", "corp", "moved"),  # it no longer waits for "elsewhere": left alone
    ]

    assert store.reroute(moves, [woken, held], "sig-2", NOW) == 3

    assert store.routing() == "sig-2"
    assert [(s.waiting_for, s.detail) for s in store.recipient_states(quiet)] == [("corp", "not called while offline")]
    assert [(s.waiting_for, s.detail) for s in store.recipient_states(woken)] == [(None, "no transport")]
    assert [s.waiting_for for s in store.recipient_states(stale)] == ["work"]
    entries = {q.id: q for q in store.queue()}
    assert entries[quiet].waiting_for is WaitKind.SEND_RECEIVE
    assert entries[woken].waiting_for is None and store.claim("me", NOW, 60) == [woken]
    assert entries[held].state is QueueState.HELD and entries[held].waiting_transports == ("corp",)
    notes = [e for e in store.events(quiet) if e.kind == EventKind.REROUTED]
    assert len(notes) == 1 and "work -> corp" in notes[0].detail
    assert not any(e.kind == EventKind.REROUTED for e in store.events(stale))
    store.reroute([], [], "sig-3", NOW)
    assert store.routing() == "sig-3"


def test_a_message_no_pass_has_routed_yet_has_no_waiting_recipients(store: MessageStore) -> None:
    submitted(store, "a@x.test")
    assert store.waiting_recipients() == []
