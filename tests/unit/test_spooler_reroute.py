"""A change of routing while recipients wait (spooler/reroute.py, spooler/declines.py): waiting
recipients go to the transport the new routing gives them, the waiting recipients are read only
when the routing changed, and what no transport takes any more gets its NDR."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.profile import Profile
from postroom.spooler.reroute import ROUTED_AGAIN
from postroom.store import SQLiteStore, WaitKind

from support.profiles import make_profile

Calls = list[tuple[str, str, Any]]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many waiting recipients each read of them returned (the store's own method, counted)."""
    seen: list[int] = []
    real = SQLiteStore.waiting_recipients

    def counted(self: SQLiteStore) -> Any:
        out = real(self)
        seen.append(len(out))
        return out

    monkeypatch.setattr(SQLiteStore, "waiting_recipients", counted)
    yield seen


def offline(profile: Profile) -> Profile:
    profile.set_mode("offline")
    profile.save()
    return profile


def waiting(session: postroom.Session) -> list[tuple[str, ...]]:
    return [q.waiting_transports for q in session.queue()]


def test_waiting_recipients_are_read_again_only_when_the_routing_changed(tmp_path: Path, reads: list[int]) -> None:
    profile = offline(
        make_profile(tmp_path / "p", ("a", {"address_types": ["SMTP"]}), ("b", {"address_types": ["SMTP"]}))
    )
    with postroom.logon(profile) as session:
        for n in range(3):
            session.create_message(f"m{n}").to(f"u{n}@x.test").submit()
        session.deliver()
        assert waiting(session) == [("a",)] * 3
    reads.clear()

    for _ in range(2):  # new logons, passes, a Send/Receive: the same routing, nothing read
        with postroom.logon(profile.directory) as session:
            session.deliver()
            session.flush("b")  # b waits for nobody: nothing is sent
    assert reads == []

    with postroom.logon(profile.directory) as session:
        session.set_transport_order(["b", "a"])
        assert reads == [3]
        assert waiting(session) == [("b",)] * 3
        assert {q.waiting_for for q in session.queue()} == {WaitKind.SEND_RECEIVE}  # b may not be called either
        session.deliver()  # this session's own logon: the routing it now has is the one they were placed by
    with postroom.logon(profile.directory) as session:
        session.deliver()
    assert reads == [3]


def test_a_change_written_to_the_profile_by_another_program_is_followed_at_the_next_logon(tmp_path: Path) -> None:
    profile = offline(
        make_profile(tmp_path / "p", ("a", {"address_types": ["SMTP"]}), ("b", {"address_types": ["SMTP"]}))
    )
    with postroom.logon(profile) as session:
        session.create_message("m").to("u@x.test").submit()
        session.deliver()
    edited = Profile.load(profile.directory)
    edited.set_transport_order(["b", "a"])
    edited.save()

    with postroom.logon(profile.directory) as session:
        assert waiting(session) == [("a",)]  # nothing has logged on with the new profile yet
        session.deliver()
        assert waiting(session) == [("b",)]


def test_a_recipient_no_transport_takes_after_a_change_gets_its_ndr_at_the_next_pass(tmp_path: Path) -> None:
    profile = offline(
        make_profile(tmp_path / "p", ("mail", {"address_types": ["SMTP"]}), ("fax", {"address_types": ["FAX"]}))
    )
    with postroom.logon(profile) as session:
        mid = session.create_message("m").to("u@x.test").submit()
        session.deliver()

        session.remove_service("mail")

        (state,) = session.recipient_states(mid)
        assert (state.waiting_for, state.detail) == (None, ROUTED_AGAIN)
        (entry,) = session.queue()
        assert entry.waiting_for is None and entry.waiting_transports == ()  # due now: no Send/Receive needed
        session.deliver()
        (report,) = session.recipient_report(mid)
        assert report.state == "failed" and (report.report_text or "").startswith("No transport")
        assert session.queue() == []


def test_a_recipient_a_change_left_to_no_transport_goes_to_the_one_a_later_change_gives_it(tmp_path: Path) -> None:
    """mail is removed (bob has no transport: his NDR is due), then added again before any pass:
    bob waits for mail again, quietly, as online routing would give him mail."""
    profile = offline(make_profile(tmp_path / "p", ("mail", {"address_types": ["SMTP"]})))
    with postroom.logon(profile) as session:
        mid = session.create_message("m").to("bob@x.test").submit()
        session.deliver()
        session.remove_service("mail")
        assert [s.waiting_for for s in session.recipient_states(mid)] == [None]

        session.add_service("recording", "mail", {"address_types": ["SMTP"]})

        (state,) = session.recipient_states(mid)
        assert (state.waiting_for, state.detail) == ("mail", ROUTED_AGAIN)
        assert [e.detail for e in session.events(mid)][-1].endswith("recipient 0: no transport -> mail")
        session.deliver()
        assert waiting(session) == [("mail",)]


def test_a_call_when_offline_transport_the_new_order_puts_first_takes_a_waiting_recipient_at_once(
    tmp_path: Path, calls: Calls
) -> None:
    """KB 317412 after a change of order: offline, bob waits for gate; the order then puts relay,
    which may be called offline, first. His message is due at once and relay takes him."""
    profile = make_profile(
        tmp_path / "p", ("gate", {"address_types": ["SMTP"]}), ("relay", {"address_types": ["SMTP"]})
    )
    profile.service("relay").call_when_offline = True
    offline(profile)
    with postroom.logon(profile) as session:
        mid = session.create_message("m").to("bob@x.test").submit()
        session.deliver()
        assert waiting(session) == [("gate",)]

        session.set_transport_order(["relay", "gate"])

        (entry,) = session.queue()
        assert (entry.waiting_for, entry.waiting_transports) == (None, ("relay",))
        summary = session.deliver()
        assert summary.delivered_by == {"relay": 1}
        assert [s.transport for s in session.recipient_states(mid)] == ["relay"]
        assert [c[0] for c in calls if c[1] == "submit_message"] == ["relay"]


def test_a_held_message_keeps_its_hold_when_its_recipients_are_moved(tmp_path: Path) -> None:
    profile = offline(
        make_profile(tmp_path / "p", ("a", {"address_types": ["SMTP"]}), ("b", {"address_types": ["SMTP"]}))
    )
    with postroom.logon(profile) as session:
        mid = session.create_message("m").to("u@x.test").submit()
        session.deliver()
        session.hold(mid, "check it")

        session.set_transport_order(["b", "a"])

        (entry,) = session.queue()
        assert entry.hold_reason == "check it" and entry.waiting_transports == ("b",)


def test_a_running_daemon_moves_waiting_recipients_when_another_process_changes_the_order(tmp_path: Path) -> None:
    """An async session leaves the move to whoever logs on next with the new profile: here the
    spooler daemon, which reloads the profile when told it changed."""
    profile = offline(
        make_profile(tmp_path / "p", ("a", {"address_types": ["SMTP"]}), ("b", {"address_types": ["SMTP"]}))
    )
    with postroom.logon(profile) as session:
        mid = session.create_message("m").to("u@x.test").submit()
        session.deliver()

    async def scenario() -> None:
        daemon = postroom.alogon(Profile.load(profile.directory))
        client = postroom.alogon(Profile.load(profile.directory))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run_spooler(stop))
        try:
            await asyncio.sleep(0.2)
            client.set_transport_order(["b", "a"])
            assert [s.waiting_for for s in client.recipient_states(mid)] == ["a"]
            for _ in range(250):  # the daemon follows the change notification, long before its 30 s scan
                await asyncio.sleep(0.02)
                if [s.waiting_for for s in client.recipient_states(mid)] == ["b"]:
                    break
            assert [q.waiting_transports for q in client.queue()] == [("b",)]
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            await daemon.close()
            await client.close()

    asyncio.run(scenario())
