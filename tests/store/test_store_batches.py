"""The spooler's batched store calls (issue 17): claim a batch, read it, finish a tick's messages.

Each does for many messages what the one-message calls do for one, in a number of statements
that does not grow with the batch; both stores."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.store.test_store_queue import NOW, delivered, message, submitted

from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.flags import MessageFlags
from postroom.store import FolderRole, LeaseLost, MessageStore, RecipientOutcome, RecipientState


def test_one_call_claims_the_chosen_messages_that_are_still_due_and_free(store: MessageStore) -> None:
    a, b, c, later = (submitted(store, f"{x}@x.test") for x in "abcd")
    store.claim_message("other", b, NOW, 60)
    store.claim("me", NOW, 60)  # takes a
    store.release(a, "me", NOW, NOW + timedelta(hours=1), "wait")  # a now waits an hour
    store.hold(later, NOW, "held")
    assert store.claim_messages("me", [c, b, a, later, 10**9], NOW, 60) == [c]
    (entry,) = [q for q in store.queue() if q.id == c]
    assert entry.lease_owner == "me" and entry.lease_until == NOW + timedelta(seconds=60)
    assert store.claim_messages("me", [c], NOW, 60) == []  # a claim is a lease: not twice


def test_a_claimed_batch_reads_as_open_message_and_recipient_states_read_each_message(store: MessageStore) -> None:
    first = submitted(store, "a@x.test", "b@x.test")
    outbox = store.folder(FolderRole.OUTBOX).id
    second = store.create_message(outbox, message("c@x.test", subject="with attachment"))
    store.add_attachment(second, {T.PR_ATTACH_FILENAME: "x.txt"}, b"hello")
    store.submit(second, NOW)
    assert store.claim_messages("me", [first, second], NOW, 60) == [first, second]
    loaded = store.load_claimed([first, second])
    for mid in (first, second):
        claimed, alone = loaded[mid], store.open_message(mid)
        assert claimed.message.props == alone.props
        assert [r.props for r in claimed.message.recipients] == [r.props for r in alone.recipients]
        assert [(a.num, a.size, a.props) for a in claimed.message.attachments] == [
            (a.num, a.size, a.props) for a in alone.attachments
        ]
        assert claimed.states == store.recipient_states(mid)
        assert claimed.previous_owner is None and claimed.failures == 0
    (attachment,) = loaded[second].message.attachments
    assert attachment.open().read() == b"hello"


def test_finishing_many_at_once_does_what_finish_does_for_each(store: MessageStore) -> None:
    sent = store.folder(FolderRole.SENT_ITEMS)
    moved = submitted(store, "a@x.test", "b@x.test", PR_SENTMAIL_ENTRYID=sent.entry_id)
    left = submitted(store, "c@x.test")
    deleted = submitted(store, "d@x.test", PR_DELETE_AFTER_SUBMIT=True)
    assert store.claim_messages("me", [moved, left, deleted], NOW, 60) == [moved, left, deleted]
    failed = RecipientOutcome(1, RecipientState.FAILED, "t", {T.PR_REPORT_TEXT: "550 no"}, report=True)
    answers = store.finish_many(
        "me", [(moved, [delivered(0), failed]), (left, [delivered(0)]), (deleted, [delivered(0)])], NOW
    )
    assert answers == ["moved", "left", "deleted"]
    assert store.queue() == []
    assert store.message_folder(moved) == sent.id
    assert store.message_folder(left) == store.folder(FolderRole.OUTBOX).id
    assert not store.open_message(moved)[T.PR_MESSAGE_FLAGS] & (MessageFlags.SUBMIT | MessageFlags.UNSENT)
    states = store.recipient_states(moved)
    assert [(s.state, s.transport, s.reported, s.outcome_time) for s in states] == [
        (RecipientState.DELIVERED, "t", True, NOW),
        (RecipientState.FAILED, "t", False, NOW),
    ]
    recipient = store.open_message(moved).recipients[1]
    assert recipient[T.PR_REPORT_TEXT] == "550 no" and recipient[T.PR_RESPONSIBILITY] is True
    assert [(e.kind, e.detail) for e in store.events(moved)][-3:] == [
        ("delivered", "recipient 0"),
        ("failed", "recipient 1: 550 no"),
        ("finished", "moved to PR_SENTMAIL_ENTRYID"),
    ]
    with pytest.raises(MAPIError):
        store.open_message(deleted)


def test_a_message_finish_would_refuse_is_left_out_whole_and_the_others_finish(store: MessageStore) -> None:
    ok, pending, lost = (submitted(store, f"{x}@x.test", "z@x.test") for x in "abc")
    store.claim_messages("me", [ok, pending], NOW, 60)
    store.claim_messages("other", [lost], NOW, 60)
    both = [delivered(0), delivered(1)]
    answers = store.finish_many("me", [(ok, both), (pending, [delivered(0)]), (lost, both)], NOW)
    assert answers[0] == "left"
    assert isinstance(answers[1], MAPIError) and answers[1].code == HResult.MAPI_E_CALL_FAILED
    assert isinstance(answers[2], LeaseLost)
    assert [q.id for q in store.queue()] == [pending, lost]
    for mid in (pending, lost):  # nothing of them was written
        assert [s.state for s in store.recipient_states(mid)] == [RecipientState.PENDING] * 2


def test_a_recipient_keeps_its_first_outcome_in_a_batch(store: MessageStore) -> None:
    mid = submitted(store, "a@x.test")
    store.claim_messages("me", [mid], NOW, 60)
    again = RecipientOutcome(0, RecipientState.FAILED, "u")
    assert store.finish_many("me", [(mid, [delivered(0), again])], NOW) == ["left"]
    assert [s.state for s in store.recipient_states(mid)] == [RecipientState.DELIVERED]


def test_unclaimed_messages_are_as_the_claim_found_them(store: MessageStore) -> None:
    free, crashed = submitted(store, "a@x.test"), submitted(store, "b@x.test")
    store.claim_messages("dead", [crashed], NOW, 60)
    store.mark_started("dead", [crashed])  # it died while a transport had the message
    later = NOW + timedelta(seconds=61)  # the dead spooler's lease ran out
    assert store.claim_messages("me", [free, crashed], later, 60) == [free, crashed]
    store.unclaim("me", [free, crashed])
    entries = {q.id: q for q in store.queue()}
    assert not entries[free].locked and entries[free].attempts == 0
    assert entries[crashed].attempts == 1  # the dead spooler's attempt only
    assert store.claim_messages("next", [free, crashed], later, 60) == [free, crashed]
    loaded = store.load_claimed([free, crashed])
    assert loaded[free].previous_owner is None
    assert loaded[crashed].previous_owner == "dead"  # its outcome is still unknown


@pytest.mark.parametrize("n", [5, 50])
def test_a_batch_costs_the_same_statements_whatever_its_size(store: MessageStore, n: int) -> None:
    ids = [submitted(store, f"r{i}@x.test") for i in range(n)]
    counts = store.count_statements()
    before = counts.snapshot()
    assert store.claim_messages("me", ids, NOW, 60) == ids
    assert len(store.load_claimed(ids)) == n
    assert store.finish_many("me", [(mid, [delivered(0)]) for mid in ids], NOW) == ["left"] * n
    statements, commits = (after - was for after, was in zip(counts.snapshot(), before, strict=True))
    assert commits == 2
    assert statements <= 20, statements  # claim 3, reads 4 (+ pool checks), finish 2 + 6
