"""The spooler works in batches (issue 17): what a drain costs the store, and what a pass leaves behind."""

from __future__ import annotations

from pathlib import Path

import postroom
from postroom.profile import Profile

from support import instant
from support.profiles import make_profile


def instant_profile(directory: Path, concurrency: int) -> Profile:
    profile = make_profile(directory, ("local", {"address_types": ["SMTP"]}), kind="instant")
    profile.settings["spooler_concurrency"] = concurrency
    profile.save()
    return profile


def submit(session: postroom.Session, n: int) -> list[int]:
    return session.submit_many(session.create_message(f"m{i}", "body").to(f"r{i}@x.test") for i in range(n))


def test_a_drain_at_full_load_costs_at_most_six_statements_and_a_twentieth_of_a_commit_per_message(
    tmp_path: Path,
) -> None:
    instant.CALLS.clear()
    with postroom.logon(instant_profile(tmp_path / "p", 64)) as s:
        submit(s, 640)
        counts = s.engine.store.count_statements()
        statements, commits = counts.snapshot()
        summary = s.deliver()
        statements, commits = counts.statements - statements, counts.commits - commits
        assert summary.delivered == 640 and s.queue() == []
    assert set(instant.CALLS.values()) == {1}  # each message sent once
    assert statements / 640 <= 6, statements
    assert commits / 640 <= 0.05, commits


def test_messages_claimed_ahead_that_a_pass_did_not_reach_are_given_back_untouched(tmp_path: Path) -> None:
    instant.CALLS.clear()
    with postroom.logon(instant_profile(tmp_path / "p", 8)) as s:
        ids = submit(s, 40)
        summary = s.deliver(limit=5)
        assert summary.processed == 5
        waiting = s.queue()
        assert len(waiting) == 35
        assert not any(q.locked for q in waiting)  # no claim held by a pass that has ended
        assert {q.attempts for q in waiting} == {0}
        assert [e.kind for e in s.events(waiting[0].id)] == ["submitted"]  # and no trace in the history
        assert s.deliver().delivered == 35
        assert s.queue() == [] and len(ids) == 40
    assert set(instant.CALLS.values()) == {1}


def test_a_message_a_waiting_worker_takes_is_marked_started_in_its_claims_commit(tmp_path: Path) -> None:
    """A spooler keeping up with one-at-a-time submission runs a pass per message or so; a started
    mark of its own cost each pass a commit, and every commit holds the writer turn that submitters
    wait for (issue 17, figure 1). The pass is: claim and mark, finish, the pass's record."""
    instant.CALLS.clear()
    with postroom.logon(instant_profile(tmp_path / "p", 8)) as s:
        s.deliver()  # the first pass writes what only a first pass writes
        counts = s.engine.store.count_statements()
        for i in range(3):
            s.create_message(f"one {i}", "body").to(f"r{i}@x.test").submit()
            commits = counts.commits
            assert s.deliver().delivered == 1
            assert counts.commits - commits == 3, counts.commits - commits
        assert s.queue() == []
    assert set(instant.CALLS.values()) == {1}
