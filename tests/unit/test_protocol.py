"""The protocol manager: offline mode (the KB 317412 seed), call_when_offline, Send/Receive, groups,
the online stability window, inbound delivery into receive folders, the status table."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import postroom
from postroom.engine.groups import GroupSchedule, GroupSettings, SendReceiveGroup, load_groups, save_group
from postroom.engine.protocol import OnlineTransition
from postroom.mapi.flags import LogonFlags, NotifyFlags, StatusCode
from postroom.profile import Profile
from postroom.store import WaitKind

from support.clock import Clock
from support.profiles import make_profile
from support.recording import INBOUND

Calls = list[tuple[str, str, Any]]
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def offline_profile(tmp_path: Path, *, fax_when_offline: bool = False) -> Profile:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}), ("fax", {"address_types": ["FAX"]}))
    profile.service("fax").call_when_offline = fax_when_offline
    profile.set_mode("offline")
    profile.save()
    return profile


def submits(calls: Calls, name: str) -> int:
    return sum(1 for c in calls if c[0] == name and c[1] == "submit_message")


def logon_flags(calls: Calls, name: str) -> list[int]:
    return [c[2] for c in calls if c[0] == name and c[1] == "logon"]


def test_offline_message_waits_in_the_outbox_until_send_receive(tmp_path: Path, calls: Calls) -> None:
    """The seed: offline, SubmitMessage is not called and the message stays in the Outbox."""
    with postroom.logon(offline_profile(tmp_path)) as s:
        mid = s.create_message("offline").to("a@x.test").submit()
        summary = s.deliver()
        assert submits(calls, "smtp") == 0
        assert summary.failed == 0 and summary.messages[0].offline
        assert s.engine.store.message_folder(mid) == s.outbox.id
        (entry,) = s.queue()
        assert entry.waiting_for is WaitKind.SEND_RECEIVE and entry.next_attempt is None
        assert all(flags & LogonFlags.NO_CONNECT for flags in logon_flags(calls, "smtp"))
        # Not failed, not retried by later passes either.
        s.deliver()
        assert submits(calls, "smtp") == 0 and s.list_messages("Inbox") == []

        result = s.send_receive()
        assert submits(calls, "smtp") == 1
        assert (result.sent, result.failed) == (1, 0) and result.ok
        assert s.engine.store.message_folder(mid) == s.sent_items.id
        assert s.queue() == []


def test_call_when_offline_transport_is_logged_on_at_start_and_called_at_once(tmp_path: Path, calls: Calls) -> None:
    with postroom.logon(offline_profile(tmp_path, fax_when_offline=True)) as s:
        s.status()  # the session starts: transports are logged on
        assert not logon_flags(calls, "fax")[0] & LogonFlags.NO_CONNECT
        assert logon_flags(calls, "smtp")[0] & LogonFlags.NO_CONNECT
        mid = s.create_message("mixed").to("a@x.test", "FAX:1").submit()
        s.deliver()
        assert submits(calls, "fax") == 1 and submits(calls, "smtp") == 0
        states = {r.row_id: r.state.value for r in s.recipient_states(mid)}
        assert states == {0: "pending", 1: "delivered"}
        assert s.queue()[0].waiting_for is WaitKind.SEND_RECEIVE


def test_going_online_flushes_only_after_the_stability_window(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    with postroom.logon(offline_profile(tmp_path), clock=clock) as s:
        s.create_message("waits").to("a@x.test").submit()
        s.deliver()
        pm = s.engine.protocol
        pm.transition = OnlineTransition(5)

        async def go(mode: str) -> None:
            await pm.apply_mode(mode)

        s._run(go("online"))
        clock.advance(3)
        assert not pm.transition.due(clock())
        s._run(go("offline"))  # a blip: offline again before the window ends
        clock.advance(10)
        assert not pm.transition.due(clock())
        assert submits(calls, "smtp") == 0 and s.queue()[0].waiting_for is WaitKind.SEND_RECEIVE
        assert s.list_messages("Inbox") == []  # nothing marked failed

        s._run(go("online"))
        clock.advance(5)
        assert pm.transition.due(clock())
        assert not pm.transition.due(clock())  # once
        assert s.engine.store.wake(clock(), (WaitKind.SEND_RECEIVE,)) == 1
        s.deliver()
        assert submits(calls, "smtp") == 1 and s.queue() == []


def test_online_transition_logic() -> None:
    t = OnlineTransition(4)
    t.mode_changed("online", T0)
    assert not t.due(T0 + timedelta(seconds=3.9))
    assert t.due(T0 + timedelta(seconds=4))
    t.mode_changed("online", T0)
    t.mode_changed("offline", T0 + timedelta(seconds=1))
    assert not t.due(T0 + timedelta(hours=1))


def test_group_schedules_with_a_controllable_clock() -> None:
    groups = [
        SendReceiveGroup("All Accounts", online=GroupSettings(every_minutes=5), offline=GroupSettings(every_minutes=0)),
        SendReceiveGroup("Slow", online=GroupSettings(every_minutes=30), offline=GroupSettings(every_minutes=60)),
    ]
    sched = GroupSchedule()
    sched.reset(groups, "online", T0)
    assert sched.due(groups, "online", T0 + timedelta(minutes=4)) == []
    assert [g.name for g in sched.due(groups, "online", T0 + timedelta(minutes=5))] == ["All Accounts"]
    assert sched.due(groups, "online", T0 + timedelta(minutes=6)) == []
    assert [g.name for g in sched.due(groups, "online", T0 + timedelta(minutes=30))] == ["All Accounts", "Slow"]
    sched.reset(groups, "offline", T0)
    assert sched.next_time() == T0 + timedelta(minutes=60)
    assert [g.name for g in sched.due(groups, "offline", T0 + timedelta(minutes=60))] == ["Slow"]


def test_send_only_and_receive_only_groups(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(
        tmp_path / "p",
        ("smtp", {"address_types": ["SMTP"], "poll": True}),
        ("fax", {"address_types": ["FAX"]}),
    )
    save_group(
        profile, SendReceiveGroup("outgoing", ["smtp"], GroupSettings(receive=False), GroupSettings(receive=False))
    )
    save_group(profile, SendReceiveGroup("incoming", ["smtp"], GroupSettings(send=False), GroupSettings(send=False)))
    profile.set_mode("offline")
    profile.save()
    assert [g.name for g in load_groups(Profile.load(profile.directory))] == ["All Accounts", "outgoing", "incoming"]
    INBOUND["smtp"] = [("IPM.Note", "hello from outside")]
    with postroom.logon(profile) as s:
        s.create_message("out").to("a@x.test").submit()
        s.deliver()
        received = s.send_receive("incoming")
        assert (received.sent, received.received) == (0, 1) and submits(calls, "smtp") == 0
        sent = s.send_receive("outgoing")
        assert (sent.sent, sent.received) == (1, 0) and submits(calls, "smtp") == 1
        assert [t.transport for t in sent.transports] == ["smtp"]


def test_flush_bits_are_set_in_the_status_row_while_the_transport_flushes(tmp_path: Path, calls: Calls) -> None:
    seen: list[tuple[str, str, StatusCode]] = []
    with postroom.logon(offline_profile(tmp_path)) as s:
        s.create_message("x").to("a@x.test", "FAX:1").submit()
        s.deliver()
        s.send_receive(progress=lambda stage, t, _: seen.append((stage, t.name, t.status.status_code)))
        by = {(stage, name): code for stage, name, code in seen}
        assert by[("send", "smtp")] & StatusCode.OUTBOUND_FLUSH
        assert by[("receive", "smtp")] & StatusCode.INBOUND_FLUSH
        assert not by[("done", "smtp")] & (StatusCode.OUTBOUND_FLUSH | StatusCode.INBOUND_FLUSH)
        # Transport by transport in transport order, each flushed once, then told the flush ended.
        assert [n for st, n, _ in seen if st == "start"] == ["smtp", "fax"]
        ends = [c[2] for c in calls if c[0] == "smtp" and c[1] == "transport_notify"]
        assert any(f & NotifyFlags.END_OUTBOUND_FLUSH for f in ends) and any(
            f & NotifyFlags.END_INBOUND_FLUSH for f in ends
        )


def test_inbound_messages_go_to_the_receive_folder_for_their_class(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("inbound", {"address_types": [""], "poll": True}))
    INBOUND["inbound"] = [
        ("IPM.Note", "plain"),
        ("IPM.Note.Fax", "a fax"),
        ("ipm.note.fax.cover", "a cover page"),
        ("REPORT.IPM.Note.NDR", "a bounce"),
    ]
    with postroom.logon(profile) as s:
        faxes = s.create_folder("Faxes")
        s.set_receive_folder("IPM.Note.Fax", "Faxes")
        assert s.receive() == 4
        assert sorted(m.subject for m in s.list_messages(faxes)) == ["a cover page", "a fax"]
        assert sorted(m.subject for m in s.list_messages("Inbox")) == ["a bounce", "plain"]
        # start_message was called until it returned an unsaved message: exactly once more.
        assert sum(1 for c in calls if c[1] == "start_message") == 5
        assert ("IPM.NOTE.FAX", "Faxes") in [(cls, f.name) for cls, f in s.receive_folders()]


def test_polling_respects_the_interval(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    profile = make_profile(tmp_path / "p", ("inbound", {"address_types": [""], "poll": True}))
    profile.service("inbound").poll_seconds = 60
    profile.save()
    with postroom.logon(profile, clock=clock) as s:
        s.status()
        pm = s.engine.protocol

        def polls() -> int:
            return sum(1 for c in calls if c[1] == "poll")

        s._run(pm.poll_due())
        assert polls() == 1
        clock.advance(30)
        s._run(pm.poll_due())
        assert polls() == 1
        INBOUND["inbound"] = [("IPM.Note", "arrived")]
        clock.advance(30)
        assert s._run(pm.poll_due()) == 1
        assert polls() == 2


def test_new_mail_notification_reaches_another_session(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("inbound", {"address_types": [""]}))
    INBOUND["inbound"] = [("IPM.Note", "ding")]

    async def scenario() -> list[str]:
        watcher = postroom.alogon(Profile.load(profile.directory))
        receiver = postroom.alogon(Profile.load(profile.directory))
        seen: list[str] = []

        async def watch() -> None:
            async for summary in watcher.new_mail():
                seen.append(summary.subject)
                return

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.05)  # the watcher is listening
        assert await receiver.receive() == 1
        await asyncio.wait_for(task, 5)
        await watcher.close()
        await receiver.close()
        return seen

    assert asyncio.run(scenario()) == ["ding"]


def test_status_table_rows(tmp_path: Path, calls: Calls) -> None:
    with postroom.logon(offline_profile(tmp_path)) as s:
        s.create_message("x").to("a@x.test").submit()
        s.deliver()
        rows = s.status()
        assert [r.display_name for r in rows] == ["MAPI subsystem", "MAPI spooler", "smtp", "fax"]
        spooler = rows[1]
        assert spooler.status_code & StatusCode.OFFLINE
        assert "1 message(s) waiting for Send/Receive" in spooler.status_string
        assert rows[2].status_code & StatusCode.OFFLINE
        assert s.engine.store.status_rows() == []  # only a spooler daemon publishes its table
        s.publish_status()
        published = s.engine.store.status_rows()
        assert [name for name, *_ in published] == ["MAPI subsystem", "MAPI spooler", "smtp", "fax"]


def test_daemon_wakes_on_submit_and_stops_cleanly(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))

    async def scenario() -> None:
        daemon = postroom.alogon(Profile.load(profile.directory))
        client = postroom.alogon(Profile.load(profile.directory))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run_spooler(stop))
        await asyncio.sleep(0.2)
        mid = client.create_message("wake up").to("a@x.test").submit()
        for _ in range(100):  # woken by the notification, long before the 30 s safety scan
            await asyncio.sleep(0.02)
            if client.engine.store.recipient_states(mid)[0].state.final:
                break
        assert client.engine.store.recipient_states(mid)[0].state.value == "delivered"
        stop.set()
        await asyncio.wait_for(task, 5)
        ends = [c[2] for c in calls if c[1] == "transport_notify"]
        assert any(f & NotifyFlags.END_OUTBOUND for f in ends)
        await daemon.close()
        await client.close()

    asyncio.run(scenario())


def test_validate_state_and_config_change_reread_registrations(tmp_path: Path, calls: Calls) -> None:
    from postroom.mapi.flags import SpoolerNotifyFlags

    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    with postroom.logon(profile) as s:
        assert s.enum_adr_types() == ["SMTP"]
        # A transport says its configuration changed (NOTIFY_CONFIG_CHANGE): AddressTypes is asked again.
        t = s.engine.transports.by_name("smtp")
        t.service.options["address_types"] = ["X400"]
        assert t.provider is not None
        t.provider.context.support.spooler_notify(SpoolerNotifyFlags.CONFIG_CHANGE)
        assert s.enum_adr_types() == ["X400"]
        # Another process changes the profile; ValidateState on the spooler logs every transport on again.
        other = Profile.load(profile.directory)
        other.service("smtp").options["address_types"] = ["SMTP", "FAX"]
        other.save()
        s.validate_state()
        assert s.enum_adr_types() == ["SMTP", "FAX"]
        assert len(logon_flags(calls, "smtp")) == 2
