"""Submission and the outgoing queue with leases: the same semantics and error codes in both stores."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.flags import MessageFlags, SubmitFlags
from postroom.mapi.message import MessageData, Recipient
from postroom.store import (
    EventKind,
    FolderRole,
    LeaseLost,
    MessageStore,
    QueueState,
    RecipientOutcome,
    RecipientState,
    RecipientWait,
    WaitKind,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def message(*addresses: str, subject: str = "s") -> MessageData:
    return MessageData(
        props={T.PR_SUBJECT: subject},
        recipients=[
            Recipient(
                props={T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: a, T.PR_DISPLAY_NAME: a, T.PR_RECIPIENT_TYPE: 1}
            )
            for a in addresses
        ],
    )


def submitted(store: MessageStore, *addresses: str, at: datetime = NOW, **props: object) -> int:
    msg = message(*addresses)
    for name, value in props.items():
        msg.props[getattr(T, name)] = value
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, msg)
    store.submit(mid, at)
    return mid


def delivered(row: int, transport: str = "t", report: bool = False) -> RecipientOutcome:
    return RecipientOutcome(row, RecipientState.DELIVERED, transport, report=report)


# --- submission ----------------------------------------------------------------------------------------
def test_submit_sets_flags_responsibility_and_queues(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test", "b@x.test")
    loaded = store.open_message(mid)
    assert loaded[T.PR_MESSAGE_FLAGS] & MessageFlags.SUBMIT
    assert not loaded[T.PR_MESSAGE_FLAGS] & MessageFlags.UNMODIFIED
    assert loaded[T.PR_CLIENT_SUBMIT_TIME] == NOW
    assert loaded[T.PR_SUBMIT_FLAGS] == int(SubmitFlags.NONE)
    assert [r.props[T.PR_RESPONSIBILITY] for r in loaded.recipients] == [False, False]
    (entry,) = store.queue()
    assert (entry.id, entry.state, entry.pending, entry.recipients, entry.locked) == (
        mid,
        QueueState.QUEUED,
        2,
        2,
        False,
    )
    assert entry.submit_time == NOW and entry.subject == "s" and entry.display_to == "a@x.test; b@x.test"
    assert [e.kind for e in store.events(mid)] == ["submitted"]


def test_submit_errors(store: MessageStore) -> None:
    outbox = store.folder(FolderRole.OUTBOX).id
    empty = store.create_message(outbox, message())
    with pytest.raises(MAPIError) as err:
        store.submit(empty, NOW)
    assert err.value.code == HResult.MAPI_E_NO_RECIPIENTS
    mid = submitted(store, "a@x.test")
    with pytest.raises(MAPIError) as err:
        store.submit(mid, NOW)
    assert err.value.code == HResult.MAPI_E_SUBMITTED
    with pytest.raises(MAPIError) as err:
        store.create_and_submit(outbox, message(), NOW)
    assert err.value.code == HResult.MAPI_E_NO_RECIPIENTS
    assert store.queue_entry(empty) is None


def test_create_and_submit_with_a_stamp_and_mapi_submitted_rows(store: MessageStore) -> None:
    msg = message("a@x.test", "done@x.test")
    msg.recipients[1].props[T.PR_RECIPIENT_TYPE] = 1 | 0x80000000  # MAPI_SUBMITTED: delivered earlier
    mid = store.create_and_submit(store.folder(FolderRole.OUTBOX).id, msg, NOW)
    states = store.recipient_states(mid)
    assert [s.state for s in states] == [RecipientState.PENDING, RecipientState.DELIVERED]
    assert states[1].reported
    other = store.create_message(store.folder(FolderRole.OUTBOX).id, message("c@x.test"))
    store.submit(other, NOW, stamp={T.PR_INTERNET_MESSAGE_ID: "<id@x.test>"})
    assert store.open_message(other)[T.PR_INTERNET_MESSAGE_ID] == "<id@x.test>"


def test_abort_submit(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test")
    store.abort_submit(mid, NOW)
    assert store.queue_entry(mid) is None
    assert not store.open_message(mid)[T.PR_MESSAGE_FLAGS] & MessageFlags.SUBMIT
    with pytest.raises(MAPIError) as err:
        store.abort_submit(mid, NOW)
    assert err.value.code == HResult.MAPI_E_NOT_IN_QUEUE
    store.submit(mid, NOW)  # it can be submitted again
    store.claim("spooler", NOW, 60)
    with pytest.raises(MAPIError) as err:
        store.abort_submit(mid, NOW)
    assert err.value.code == HResult.MAPI_E_UNABLE_TO_ABORT


# --- claims and leases ------------------------------------------------------------------------------------
def test_claims_are_leases(store: MessageStore) -> None:
    ids = [submitted(store, f"r{n}@x.test", at=NOW + timedelta(seconds=n)) for n in range(3)]
    assert store.claim("a", NOW + timedelta(seconds=5), 60, 2) == ids[:2]
    assert store.claim("b", NOW + timedelta(seconds=5), 60, 5) == ids[2:]
    assert store.claim("b", NOW + timedelta(seconds=6), 60) == []
    entry = store.queue_entry(ids[0])
    assert entry is not None and entry.locked and entry.lease_owner == "a" and entry.attempts == 1
    assert store.open_message(ids[0])[T.PR_SUBMIT_FLAGS] == int(SubmitFlags.LOCKED)
    assert store.mark_started("a", ids[:2]) == set(ids[:2])  # a transport is called for a's two
    # A lease that ran out is taken over; the old owner can no longer record anything.
    later = NOW + timedelta(seconds=120)
    assert store.claim("c", later, 60, 5) == ids
    taken = store.queue_entry(ids[0])
    assert taken is not None and taken.lease_owner == "c" and taken.previous_owner == "a" and taken.attempts == 2
    never_started = store.queue_entry(ids[2])
    assert never_started is not None and never_started.previous_owner is None  # b only claimed it
    with pytest.raises(LeaseLost):
        store.record_outcomes(ids[0], "a", [delivered(0)], later)
    with pytest.raises(LeaseLost):
        store.renew_lease(ids[0], "a", later, 60)
    with pytest.raises(LeaseLost):
        store.finish(ids[0], "a", later)
    with pytest.raises(LeaseLost):
        store.release(ids[0], "a", later, None, "x")


def test_renew_lease_keeps_a_claim(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test")
    store.claim("a", NOW, 10)
    store.renew_lease(mid, "a", NOW + timedelta(seconds=9), 10)
    assert store.claim("b", NOW + timedelta(seconds=15), 10) == []
    assert store.next_due() == NOW + timedelta(seconds=19)
    assert store.claim("b", NOW + timedelta(seconds=20), 10) == [mid]


def test_renew_leases_extends_every_claim_of_its_owner_with_one_statement(store: MessageStore) -> None:
    ids = [submitted(store, f"r{n}@x.test", at=NOW + timedelta(seconds=n)) for n in range(5)]
    assert store.claim("a", NOW + timedelta(seconds=5), 10, 4) == ids[:4]
    assert store.claim("b", NOW + timedelta(seconds=5), 10, 1) == ids[4:]
    later = NOW + timedelta(seconds=30)
    assert store.claim("c", later, 10, 1) == ids[:1]  # a's first lease ran out and was taken over
    counts = store.count_statements()
    before = counts.snapshot()
    held = store.renew_leases("a", [*ids, 999_999], later, 60)
    after = counts.snapshot()
    assert held == set(ids[1:4])  # not c's, not b's, not a message that does not exist
    # One UPDATE in one transaction: BEGIN, it, COMMIT (and on PostgreSQL the pool's connection check).
    assert after[0] - before[0] <= 4 and after[1] - before[1] == 1, (before, after)
    assert store.renew_leases("a", [], later, 60) == set()
    # Renewed: nobody takes them before the new lease runs out; the others' leases were not touched.
    assert store.claim("d", later + timedelta(seconds=50), 60, 5) == [ids[0], ids[4]]
    assert store.claim("d", later + timedelta(seconds=61), 10, 5) == ids[1:4]


def test_a_claim_never_started_is_due_again_plainly_after_its_spooler_dies(store: MessageStore) -> None:
    started, ahead = (submitted(store, f"r{n}@x.test", at=NOW + timedelta(seconds=n)) for n in range(2))
    assert store.claim_messages("a", [started, ahead], NOW, 10) == [started, ahead]
    assert store.mark_started("a", [started, 999_999]) == {started}
    assert store.mark_started("b", [ahead]) == set()  # not b's claim: not marked
    # "a" dies; its leases run out and "b" takes both over.
    later = NOW + timedelta(seconds=30)
    assert store.claim_messages("b", [started, ahead], later, 10) == [started, ahead]
    claimed = store.load_claimed([started, ahead])
    assert claimed[started].previous_owner == "a"  # a transport may have sent it: outcome unknown
    assert claimed[ahead].previous_owner is None  # only claimed ahead: simply due again
    # "b" dies too before starting either: the first is still of unknown outcome, the second is not.
    muchlater = later + timedelta(seconds=30)
    assert store.claim_messages("c", [started, ahead], muchlater, 10) == [started, ahead]
    claimed = store.load_claimed([started, ahead])
    assert claimed[started].previous_owner == "b" and claimed[ahead].previous_owner is None
    # Released for a retry, then claimed again: a fresh claim, not started.
    store.release(started, "c", muchlater, muchlater, "retry")
    assert store.claim_messages("d", [started], muchlater + timedelta(seconds=1), 10) == [started]
    assert store.load_claimed([started])[started].previous_owner is None


def test_a_message_given_back_while_a_transport_was_sending_it_is_taken_over_as_outcome_unknown(
    store: MessageStore,
) -> None:
    cut, untouched = (submitted(store, f"r{n}@x.test", at=NOW + timedelta(seconds=n)) for n in range(2))
    assert store.claim_messages("a", [cut, untouched], NOW, 60) == [cut, untouched]
    assert store.mark_started("a", [cut, untouched]) == {cut, untouched}
    store.give_back(cut, "a", NOW, "interrupted while a transport was sending it: outcome unknown", True)
    store.give_back(untouched, "a", NOW, "interrupted", False)
    soon = NOW + timedelta(seconds=1)  # due at once, not when the lease would have run out
    assert store.claim_messages("b", [cut, untouched], soon, 60) == [cut, untouched]
    claimed = store.load_claimed([cut, untouched])
    assert claimed[cut].previous_owner == "a" and claimed[untouched].previous_owner is None


def test_an_outcome_is_never_overwritten(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test")
    store.claim("me", NOW, 60)
    store.record_outcomes(mid, "me", [RecipientOutcome(0, RecipientState.DELIVERED, "one")], NOW)
    store.record_outcomes(mid, "me", [RecipientOutcome(0, RecipientState.FAILED, "two")], NOW)
    (state,) = store.recipient_states(mid)
    assert (state.state, state.transport) == (RecipientState.DELIVERED, "one")
    assert state.outcome_time == NOW and state.reported is False
    assert store.open_message(mid).recipients[0].props[T.PR_RESPONSIBILITY] is True


def test_deferred_send_time_holds_the_message(store: MessageStore) -> None:
    msg = message("a@x.test")
    msg.props[T.PR_DEFERRED_SEND_TIME] = NOW + timedelta(minutes=5)
    mid = store.create_message(store.folder(FolderRole.OUTBOX).id, msg)
    store.submit(mid, NOW)
    assert store.claim("me", NOW + timedelta(minutes=4), 60) == []
    assert store.next_due() == NOW + timedelta(minutes=5)
    assert store.claim("me", NOW + timedelta(minutes=5), 60) == [mid]


def test_retry_all_leaves_a_scheduled_send_alone_but_retry_id_forces_it(store: MessageStore) -> None:
    msg = message("a@x.test")
    msg.props[T.PR_DEFERRED_SEND_TIME] = NOW + timedelta(minutes=5)
    scheduled = store.create_and_submit(store.folder(FolderRole.OUTBOX).id, msg, NOW)
    entry = store.queue_entry(scheduled)
    assert entry is not None and entry.waiting_for is WaitKind.SCHEDULED and entry.attempts == 0
    assert store.retry_now(None, NOW) == 0
    assert store.claim("me", NOW, 60) == []
    assert store.retry_now(scheduled, NOW) == 1
    assert store.claim("me", NOW, 60) == [scheduled]


def test_retry_all_says_which_messages_it_made_due_and_which_deferred_sends_it_left(store: MessageStore) -> None:
    msg = message("a@x.test")
    msg.props[T.PR_DEFERRED_SEND_TIME] = NOW + timedelta(minutes=5)
    scheduled = store.create_and_submit(store.folder(FolderRole.OUTBOX).id, msg, NOW)
    due = submitted(store, "due@x.test")
    waiting, held = submitted(store, "wait@x.test"), submitted(store, "held@x.test")
    assert set(store.claim("me", NOW, 60, limit=10)) == {due, waiting, held}
    for mid in (due, waiting, held):
        store.release(mid, "me", NOW, NOW + timedelta(hours=1), "450 busy")
    store.retry_now(due, NOW)
    store.hold(held, NOW, "operator says wait")

    done = store.retry_all(NOW)

    assert (done.retried, done.left_scheduled) == ([waiting], [scheduled])
    assert store.claim("me", NOW, 60, limit=10) == [due, waiting]
    assert [e.kind for e in store.events(scheduled)].count(EventKind.RETRY) == 0


def test_release_with_outcomes_then_retry_later(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test", "b@x.test")
    store.claim("me", NOW, 60)
    later = NOW + timedelta(minutes=1)
    store.release(mid, "me", NOW, later, "451 try later", WaitKind.RETRY, [delivered(0)])
    entry = store.queue_entry(mid)
    assert entry is not None
    assert (entry.locked, entry.pending, entry.last_error, entry.waiting_for) == (
        False,
        1,
        "451 try later",
        WaitKind.RETRY,
    )
    assert entry.next_attempt == later
    assert store.claim("me", NOW + timedelta(seconds=30), 60) == []
    assert store.next_due() == later
    assert store.claim("me", later, 60) == [mid]
    assert [e.kind for e in store.events(mid)] == ["submitted", "delivered", "waiting"]


def test_offline_waits_until_woken(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test")
    store.claim("me", NOW, 60)
    store.release(mid, "me", NOW, None, "offline", WaitKind.SEND_RECEIVE)
    entry = store.queue_entry(mid)
    assert entry is not None and entry.waiting_for is WaitKind.SEND_RECEIVE and entry.next_attempt is None
    assert store.next_due() is None
    assert store.claim("me", NOW + timedelta(days=400), 60) == []
    assert store.wake(NOW, (WaitKind.RETRY,)) == 0
    assert store.wake(NOW) == 1
    assert store.claim("me", NOW, 60) == [mid]


def test_send_receive_wakes_messages_waiting_for_its_transports_or_for_a_removed_one(store: MessageStore) -> None:
    waits = {}
    for transport in ("work", "local", "gone"):
        mid = submitted(store, f"{transport}@x.test")
        store.claim("me", NOW, 60)
        store.release(mid, "me", NOW, None, "offline", WaitKind.SEND_RECEIVE, waits=[RecipientWait(0, transport, "")])
        waits[transport] = mid
    assert [q.waiting_transports for q in store.queue()] == [("work",), ("local",), ("gone",)]

    assert store.wake_for(["WORK"], NOW, known=["work", "local"]) == 2  # "gone" is no transport any more
    assert sorted(store.claim("me", NOW, 60, 10)) == sorted([waits["work"], waits["gone"]])
    assert store.wake_for(["work"], NOW) == 0  # claimed now; and "local" waits for another transport


def test_finish_moves_leaves_or_deletes(store: MessageStore) -> None:
    sent = store.folder(FolderRole.SENT_ITEMS)
    moved = submitted(store, "a@x.test", PR_SENTMAIL_ENTRYID=sent.entry_id)
    left = submitted(store, "b@x.test")
    deleted = submitted(store, "c@x.test", PR_DELETE_AFTER_SUBMIT=True)
    assert sorted(store.claim("me", NOW, 60, 10)) == sorted([moved, left, deleted])
    assert store.finish(moved, "me", NOW, [delivered(0)]) == "moved"
    assert store.finish(left, "me", NOW, [delivered(0)]) == "left"
    assert store.finish(deleted, "me", NOW, [delivered(0)]) == "deleted"
    assert store.message_folder(moved) == sent.id
    assert store.message_folder(left) == store.folder(FolderRole.OUTBOX).id
    flags = store.open_message(moved)[T.PR_MESSAGE_FLAGS]
    assert not flags & (MessageFlags.SUBMIT | MessageFlags.UNSENT)
    assert store.queue() == []
    with pytest.raises(MAPIError):
        store.open_message(deleted)
    assert store.events(deleted)[-1].detail == "deleted (PR_DELETE_AFTER_SUBMIT)"


def test_finish_with_pending_recipients_is_refused_and_changes_nothing(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test", "b@x.test")
    store.claim("me", NOW, 60)
    with pytest.raises(MAPIError) as err:
        store.finish(mid, "me", NOW, [delivered(0)])
    assert err.value.code == HResult.MAPI_E_CALL_FAILED
    # All or nothing: the outcome that came with it was not recorded either.
    assert [s.state for s in store.recipient_states(mid)] == [RecipientState.PENDING, RecipientState.PENDING]


def test_deliver_report_marks_recipients_reported(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test")
    store.claim("me", NOW, 60)
    store.record_outcomes(mid, "me", [RecipientOutcome(0, RecipientState.FAILED, "t", report=True)], NOW)
    report = MessageData(props={T.PR_MESSAGE_CLASS: "REPORT.IPM.Note.NDR", T.PR_SUBJECT: "Undeliverable: s"})
    inbox = store.folder(FolderRole.INBOX).id
    rid = store.deliver_report(mid, "me", report, inbox, [0], NOW)
    assert store.recipient_states(mid)[0].reported
    assert [m.id for m in store.list_messages(inbox)] == [rid]
    assert store.list_messages(inbox)[0].message_class == "REPORT.IPM.Note.NDR"
    with pytest.raises(LeaseLost):
        store.deliver_report(mid, "other", report, inbox, [0], NOW)


def test_hold_release_and_retry_now(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test")
    store.hold(mid, NOW, "operator says wait")
    entry = store.queue_entry(mid)
    assert entry is not None and entry.state is QueueState.HELD and entry.hold_reason == "operator says wait"
    assert store.claim("me", NOW, 60) == []
    with pytest.raises(MAPIError) as err:
        store.hold(mid, NOW, "again")
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
    with pytest.raises(MAPIError) as err:
        store.retry_now(mid, NOW)
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
    store.release_hold(mid, NOW)
    with pytest.raises(MAPIError) as err:
        store.release_hold(mid, NOW)
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
    store.claim("me", NOW, 60)
    with pytest.raises(MAPIError) as err:
        store.hold(mid, NOW, "busy")
    assert err.value.code == HResult.MAPI_E_UNABLE_TO_ABORT
    store.hold(mid, NOW, "outcome unknown", owner="me")  # the owner itself may hold it
    store.release_hold(mid, NOW)
    store.claim("me", NOW, 60)
    store.release(mid, "me", NOW, NOW + timedelta(hours=1), "wait")
    assert store.retry_now(mid, NOW) == 1
    assert store.claim("me", NOW, 60) == [mid]
    store.release(mid, "me", NOW, NOW + timedelta(hours=1), "wait")
    assert store.retry_now(None, NOW) == 1
    for call in (
        lambda: store.hold(987654, NOW, "x"),
        lambda: store.retry_now(987654, NOW),
        lambda: store.release_hold(987654, NOW),
    ):
        with pytest.raises(MAPIError) as err:
            call()
        assert err.value.code == HResult.MAPI_E_NOT_IN_QUEUE
    kinds = [e.kind for e in store.events(mid)]
    assert kinds.count("held") == 2 and kinds.count("released") == 2 and "retry" in kinds


def test_an_operator_confirms_a_held_message_delivered(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test", "b@x.test")
    store.claim("me", NOW, 60)
    store.record_outcomes(mid, "me", [delivered(0)], NOW)  # a@ was recorded before the crash; b@ was not
    store.hold(mid, NOW, "outcome unknown", owner="me")
    with pytest.raises(MAPIError) as err:
        store.confirm_delivered(987654, NOW, "x")
    assert err.value.code == HResult.MAPI_E_NOT_IN_QUEUE

    assert store.confirm_delivered(mid, NOW, "the server's log shows it") == "left"
    assert store.queue_entry(mid) is None and store.claim("me", NOW, 60) == []
    states = store.recipient_states(mid)
    assert [s.state for s in states] == [RecipientState.DELIVERED] * 2
    assert all(s.reported for s in states[1:])  # no delivery report is owed for the operator's word
    flags = store.open_message(mid).get(T.PR_MESSAGE_FLAGS)
    assert not flags & (MessageFlags.SUBMIT | MessageFlags.UNSENT)
    event = [e for e in store.events(mid) if e.kind == "confirmed-delivered"]
    assert event and "1 recipient(s): the server's log shows it" in event[0].detail

    other = submitted(store, "c@x.test")
    with pytest.raises(MAPIError) as err:
        store.confirm_delivered(other, NOW, "x")  # not held: it may be being sent right now
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert store.queue_entry(other) is not None


def test_queue_order_and_single_entries(store: MessageStore) -> None:
    late = submitted(store, "a@x.test", at=NOW + timedelta(seconds=10))
    early = submitted(store, "b@x.test", at=NOW)
    assert [q.id for q in store.queue()] == [early, late]
    assert [q.id for q in store.queue(late)] == [late]
    assert store.queue_entry(424242) is None
    assert store.claim("me", NOW + timedelta(seconds=20), 60, 5) == [early, late]


def test_delivered_mail_events_and_status_rows(store: MessageStore) -> None:
    inbox = store.folder(FolderRole.INBOX).id
    mid = store.deliver_message(inbox, MessageData(props={T.PR_SUBJECT: "hello"}), NOW)
    assert store.list_messages(inbox)[0].subject == "hello"
    store.add_event(mid, NOW, "note", "a line\0 with a NUL", "smtp")
    events = store.events(mid)
    assert [e.kind for e in events] == ["received", "note"]
    assert events[1].transport == "smtp" and events[1].time == NOW and events[1].detail.startswith("a line")
    rows = [("smtp", {"status": "available", "n": 1}), ("maildir", {"status": "offline"})]
    store.save_status_rows("owner-1", rows, NOW)
    assert [(n, r, t, o) for n, r, t, o in store.status_rows()] == [
        ("smtp", {"status": "available", "n": 1}, NOW, "owner-1"),
        ("maildir", {"status": "offline"}, NOW, "owner-1"),
    ]
    store.save_status_rows("owner-2", rows[:1], NOW)
    assert [r[0] for r in store.status_rows()] == ["smtp"]


# --- group commit -------------------------------------------------------------------------------------------
def test_batch_is_one_transaction_with_a_savepoint_per_operation(store: MessageStore) -> None:
    outbox = store.folder(FolderRole.OUTBOX).id
    with store.batch():
        first = store.create_and_submit(outbox, message("a@x.test"), NOW)
        with pytest.raises(MAPIError):
            store.create_and_submit(outbox, message(), NOW)  # fails alone (its savepoint)
        with pytest.raises(MAPIError):
            store.create_folder("")  # refused before touching the store
        store.create_folder("Twice")
        with pytest.raises(MAPIError):
            store.create_folder("Twice")  # a database error inside the batch: only this one is undone
        second = store.create_and_submit(outbox, message("b@x.test"), NOW)
        with store.batch():  # nested: part of the same transaction
            third = store.create_and_submit(outbox, message("c@x.test"), NOW)
    assert [q.id for q in store.queue()] == [first, second, third]
    assert store.find_folder("Twice")
    with pytest.raises(RuntimeError), store.batch():
        store.create_and_submit(outbox, message("d@x.test"), NOW)
        raise RuntimeError("the whole batch is rolled back")
    assert len(store.queue()) == 3


def test_claims_in_a_batch_and_lease_checks(store: MessageStore) -> None:
    ids = [submitted(store, f"r{n}@x.test", at=NOW + timedelta(seconds=n)) for n in range(2)]
    with store.batch():
        assert store.claim("me", NOW + timedelta(seconds=5), 60) == [ids[0]]
        with pytest.raises(LeaseLost):
            store.record_outcomes(ids[1], "me", [delivered(0)], NOW)
        store.finish(ids[0], "me", NOW, [delivered(0)])
    assert [q.id for q in store.queue()] == [ids[1]]


# --- several processes ----------------------------------------------------------------------------------------
def claim_in_threads(stores: Sequence[MessageStore], now: datetime) -> dict[str, list[int]]:
    """One thread per store claims (3 at a time) and finishes messages until none is due; what each
    claimed, by its owner name. A worker's exception fails the caller."""
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def worker(n: int, s: MessageStore) -> None:
        mine = claimed.setdefault(f"w{n}", [])
        try:
            while got := s.claim(f"w{n}", now, 60, 3):
                mine.extend(got)
                for mid in got:
                    s.finish(mid, f"w{n}", now, [delivered(0)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n, s)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return claimed


def test_concurrent_claims_never_share_a_message(store: MessageStore, open_another: Callable[[], MessageStore]) -> None:
    outbox = store.folder(FolderRole.OUTBOX).id
    with store.batch():
        ids = [store.create_and_submit(outbox, message(f"r{n}@x.test"), NOW) for n in range(120)]
    claimed = claim_in_threads([open_another() for _ in range(4)], NOW)
    every = [mid for got in claimed.values() for mid in got]
    assert sorted(every) == ids  # each exactly once
    assert store.queue() == []
