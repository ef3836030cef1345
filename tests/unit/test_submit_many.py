"""Batched submit (Session.submit_many): one transaction and one statement per table for a batch of
new drafts, whose bags share the encoding of what they have in common (codec.TemplateBags). A
message submitted in a batch must be indistinguishable from the same message submitted alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.profile import Profile
from postroom.session import Session

#: What differs between two submissions of the same message, by design.
OWN = {
    T.PR_ENTRYID,
    T.PR_RECORD_KEY,
    T.PR_SUBJECT,
    T.PR_INTERNET_MESSAGE_ID,
    T.PR_CREATION_TIME,
    T.PR_LAST_MODIFICATION_TIME,
    T.PR_CLIENT_SUBMIT_TIME,
}


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    with postroom.logon(Profile.create(tmp_path / "p")) as s:
        yield s


def shared_props(props: dict[int, Any]) -> dict[int, Any]:
    return {t: v for t, v in props.items() if t not in OWN}


def test_a_batch_is_stored_exactly_as_the_same_messages_submitted_one_at_a_time(session: Session) -> None:
    alone = session.create_message("alone", "the body\n").to("a@localhost").cc("Bee <b@localhost>").submit()
    ids = session.submit_many(
        session.create_message(f"batch {n}", "the body\n").to("a@localhost").cc("Bee <b@localhost>") for n in range(5)
    )
    assert ids == sorted(ids) and ids[0] > alone
    single = session.open_message(alone)
    seen_ids = {single[T.PR_INTERNET_MESSAGE_ID]}
    for n, mid in enumerate(ids):
        batched = session.open_message(mid)
        assert batched[T.PR_SUBJECT] == f"batch {n}"
        assert shared_props(batched.props) == shared_props(single.props)
        assert [r.props for r in batched.recipients] == [r.props for r in single.recipients]
        seen_ids.add(batched[T.PR_INTERNET_MESSAGE_ID])
    assert len(seen_ids) == 6  # every message its own Message-ID
    queued = {e.id: e for e in session.queue()}
    assert set(ids) <= set(queued) and queued[ids[2]].subject == "batch 2"


def test_a_batch_of_different_messages_keeps_each_its_own_properties(session: Session) -> None:
    drafts = [
        session.create_message("one", "body one").to("a@localhost"),
        session.create_message("two", "body two").to("b@localhost").bcc("c@localhost"),
        session.create_message("three", "body one").to("a@localhost").set(T.PR_IMPORTANCE, 2),
    ]
    ids = session.submit_many(drafts)
    got = [session.open_message(mid) for mid in ids]
    assert [m[T.PR_BODY] for m in got] == ["body one", "body two", "body one"]
    assert [m.get(T.PR_IMPORTANCE) for m in got] == [None, None, 2]
    assert [m[T.PR_DISPLAY_TO] for m in got] == ["a@localhost", "b@localhost", "a@localhost"]
    assert got[1][T.PR_DISPLAY_BCC] == "c@localhost"
    assert [d.message_id for d in drafts] == ids


def test_a_batch_with_a_draft_without_recipients_submits_none_of_them(session: Session) -> None:
    before = len(session.queue())
    drafts = [session.create_message("fine").to("a@localhost"), session.create_message("nobody")]
    with pytest.raises(MAPIError) as err:
        session.submit_many(drafts)
    assert err.value.code == HResult.MAPI_E_NO_RECIPIENTS
    assert len(session.queue()) == before


def test_a_batch_with_saved_drafts_and_attachments_submits_them_all_in_order(session: Session) -> None:
    saved = session.create_message("saved").to("a@localhost")
    saved.save()
    attached = session.create_message("attached").to("a@localhost")
    attached.attach_bytes("n.txt", b"data")
    ids = session.submit_many([session.create_message("plain").to("a@localhost"), saved, attached])
    assert ids[1] == saved.message_id
    assert [session.open_message(mid)[T.PR_SUBJECT] for mid in ids] == ["plain", "saved", "attached"]
    assert session.open_message(ids[2]).attachments[0].read_all() == b"data"
    assert set(ids) <= {e.id for e in session.queue()}


def test_batched_messages_are_delivered(session: Session) -> None:
    ids = session.submit_many(session.create_message(f"m{n}", "hello").to("you@localhost") for n in range(20))
    session.deliver()
    assert not {e.id for e in session.queue()} & set(ids)
    delivered = list((session.profile.directory / "maildir" / "localhost" / "you" / "new").iterdir())
    assert len(delivered) == 20


@pytest.mark.parametrize("n", [5, 50])
def test_a_batch_of_new_drafts_is_one_durable_commit_whatever_its_size(session: Session, n: int) -> None:
    drafts = [session.create_message(f"m{i}", "hello").to("you@localhost") for i in range(n)]
    counts = session.engine.store.count_statements()
    before = counts.snapshot()
    ids = session.submit_many(drafts)
    commits = counts.snapshot()[1] - before[1]
    assert commits == 1 and len(ids) == n
