"""Retry policy, circuit breaker, throttles, lifetime expiry, deferred send, queue operations,
outcome unknown after a takeover, and an idle queue that costs nothing — all with a controllable clock."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.flags import NDRDiag, StatusCode
from postroom.profile import Profile
from postroom.spooler import scheduler
from postroom.spooler.policy import (
    DeliveryPolicy,
    breaker_after_error,
    breaker_blocked_until,
    breaker_closed,
    breaker_probe,
)
from postroom.store import QueueState

from support.clock import Clock
from support.profiles import make_profile

Calls = list[tuple[str, str, Any]]
T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def submits(calls: Calls, name: str = "smtp") -> int:
    return sum(1 for c in calls if c[0] == name and c[1] == "submit_message")


def profile_with(
    tmp_path: Path, options: dict[str, Any], policy: dict[str, Any] | None = None, **settings: Any
) -> Profile:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"], **options}))
    profile.service("smtp").policy = policy or {}
    profile.settings.update(settings)
    profile.save()
    return profile


def few_workers(profile: Profile, workers: int = 4) -> Profile:
    """Fewer workers than the test has messages (the default, 64, would take them all at once):
    what a pass does with the messages it has not taken yet is what these tests look at."""
    profile.settings["spooler_concurrency"] = workers
    profile.save()
    return profile


def test_a_transports_wait_is_honoured_exactly(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    with postroom.logon(profile_with(tmp_path, {"answer": "wait:90"}), clock=clock) as s:
        s.create_message("x").to("a@x.test").submit()
        s.deliver()
        assert s.queue()[0].next_attempt == T0 + timedelta(seconds=90)
        clock.advance(89)
        s.deliver()
        assert submits(calls) == 1
        clock.advance(1)
        s.deliver()
        assert submits(calls) == 2


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = DeliveryPolicy(retry_min_seconds=10, retry_max_seconds=300, retry_factor=2, retry_jitter=0)
    assert [policy.backoff(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    jittery = DeliveryPolicy(retry_min_seconds=100, retry_max_seconds=10_000, retry_jitter=0.2)
    rng = random.Random(1)
    samples = [jittery.backoff(3, rng) for _ in range(200)]
    assert min(samples) >= 320 and max(samples) <= 480 and len(set(samples)) > 100


def test_the_daemons_automatic_send_receive_does_not_cut_a_retry_wait_short(tmp_path: Path, calls: Calls) -> None:
    profile = profile_with(tmp_path, {"answer": "busy"})  # the default backoff: 300 s before the second try
    profile.groups = [{"name": "All Accounts", "online": {"every_minutes": 0.01}}]  # every 0.6 s
    profile.save()

    async def scenario() -> None:
        daemon = postroom.alogon(Profile.load(profile.directory))
        daemon.create_message("x").to("a@x.test").submit()
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run_spooler(stop))
        await asyncio.sleep(2.5)  # four automatic Send/Receives
        stop.set()
        await asyncio.wait_for(task, 5)
        await daemon.close()

    asyncio.run(scenario())
    assert submits(calls) == 1


def test_busy_backs_off_from_attempt_to_attempt(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    policy = {"retry_min_seconds": 10, "retry_max_seconds": 35, "retry_jitter": 0}
    with postroom.logon(profile_with(tmp_path, {"answer": "busy"}, policy), clock=clock) as s:
        s.create_message("x").to("a@x.test").submit()
        delays = []
        for _ in range(4):
            s.deliver()
            delay = (s.queue()[0].next_attempt - clock()).total_seconds()  # type: ignore[operator]
            delays.append(delay)
            clock.advance(delay)
        assert delays == [10, 20, 35, 35]
        assert s.queue()[0].attempts == 4


def test_lifetime_expiry_sends_an_ndr_that_says_so(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    profile = profile_with(tmp_path, {"answer": "wait:3600"}, max_queue_lifetime_hours=2)
    with postroom.logon(profile, clock=clock) as s:
        mid = s.create_message("too late").to("a@x.test").submit()
        s.deliver()
        clock.advance(3600)
        s.deliver()
        # The next retry is clamped to the expiry time, then the message expires.
        assert s.queue()[0].next_attempt == T0 + timedelta(hours=2)
        clock.advance(3600)
        s.deliver()
        assert s.queue() == []
        assert s.recipient_states(mid)[0].state.value == "expired"
        ndr = s.open_message(s.list_messages("Inbox")[0].id)
        row = ndr.recipients[0]
        assert row[T.PR_NDR_DIAG_CODE] == NDRDiag.MAXIMUM_TIME_EXPIRED
        assert "Maximum time expired" in row[T.PR_REPORT_TEXT] and "MAPI_E_WAIT" in row[T.PR_REPORT_TEXT]


def test_delay_warning_is_sent_once(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    profile = profile_with(tmp_path, {"answer": "wait:1800"}, delay_warning_hours=1)
    with postroom.logon(profile, clock=clock) as s:
        s.create_message("slow").to("a@x.test").submit()
        for _ in range(5):
            s.deliver()
            clock.advance(1800)
        warnings = [m for m in s.list_messages("Inbox") if m.message_class == "REPORT.IPM.Note.Delayed.DR"]
        assert len(warnings) == 1
        assert len(s.queue()) == 1  # still trying


def test_circuit_breaker_opens_probes_and_closes(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    policy = {"breaker_threshold": 3, "breaker_seconds": 600}
    profile = profile_with(tmp_path, {"answer": "network:5"}, policy)
    with postroom.logon(profile, clock=clock) as s:
        s.engine.spooler.concurrency = 1
        ids = [s.create_message(f"m{n}").to(f"r{n}@x.test").submit() for n in range(10)]
        s.deliver()
        # Three network errors open the breaker; the other seven messages are not handed over at all.
        assert submits(calls) == 3
        status = {r.display_name: r for r in s.status()}["smtp"]
        assert status.status_code & StatusCode.FAILURE and "circuit breaker" in status.status_string
        assert all("paused" in (q.last_error or "") or "NETWORK" in (q.last_error or "") for q in s.queue())
        clock.advance(300)
        s.deliver()
        assert submits(calls) == 3  # still open: nobody probes yet
        clock.advance(300)
        s.deliver()
        # The rest is over: exactly one message probes the transport. It fails, the breaker opens
        # again, and the other nine wait without being handed over.
        assert submits(calls) == 4
        assert {r.display_name: r for r in s.status()}["smtp"].status_code & StatusCode.FAILURE
        assert len(s.queue()) == 10
        clock.advance(600)
        s.engine.transports.by_name("smtp").logon.provider.context.options["answer"] = "ok"  # type: ignore[union-attr,index]
        s.deliver()
        # Again exactly one probe; it succeeded and closed the breaker, and then every message went out,
        # each handed over once more.
        assert submits(calls) == 4 + 10
        assert s.queue() == []
        assert [(r.state.value, r.transport) for mid in ids for r in s.recipient_states(mid)] == [
            ("delivered", "smtp")
        ] * 10
        assert not {r.display_name: r for r in s.status()}["smtp"].status_code & StatusCode.FAILURE


def test_breaker_logic_probe_failure_reopens() -> None:
    policy = DeliveryPolicy(breaker_threshold=2, breaker_seconds=60)
    t0 = T0.timestamp()
    state = breaker_after_error({}, t0, policy, "refused", "me")
    assert breaker_blocked_until(state, t0) is None  # one error: still closed
    state = breaker_after_error(state, t0, policy, "refused", "me")
    assert breaker_blocked_until(state, t0 + 30) == t0 + 60
    assert breaker_blocked_until(state, t0 + 60) is None  # the rest is over: time for a probe
    probing = breaker_probe(state, t0 + 60, "me", 30)
    assert probing is not None and probing["probe_owner"] == "me"
    assert breaker_probe(probing, t0 + 61, "other-spooler", 30) is None  # one probe, in one process
    reopened = breaker_after_error(probing, t0 + 61, policy, "refused", "me")  # the probe failed
    assert breaker_blocked_until(reopened, t0 + 62) == t0 + 121
    assert breaker_closed(reopened) == {} and breaker_closed({}) is None


def test_throttle_per_minute_makes_excess_wait(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    with postroom.logon(profile_with(tmp_path, {}, {"max_per_minute": 3}), clock=clock) as s:
        s.engine.spooler.concurrency = 1
        ids = [s.create_message(f"m{n}").to(f"r{n}@x.test").submit() for n in range(5)]
        summary = s.deliver()
        assert submits(calls) == 3 and summary.failed == 0
        waiting = s.queue()
        assert [q.id for q in waiting] == ids[3:]
        assert all("throttled" in (q.last_error or "") for q in waiting)
        clock.advance(60)
        s.deliver()
        assert submits(calls) == 5 and s.queue() == []


def test_throttle_windows(tmp_path: Path) -> None:
    from postroom.store import SQLiteStore

    store = SQLiteStore(tmp_path / "s.sqlite")
    hour = [(2, 3600.0)]
    assert store.reserve_send("smtp", T0, hour) == 0
    assert store.reserve_send("smtp", T0 + timedelta(minutes=10), hour) == 0
    assert store.reserve_send("smtp", T0 + timedelta(minutes=20), hour) == 40 * 60
    assert store.reserve_send("smtp", T0 + timedelta(minutes=60), hour) == 0
    assert store.count_sends("smtp", T0 - timedelta(seconds=1)) == 3
    store.close()


def test_deferred_send_and_cancel_before_due(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    with postroom.logon(profile_with(tmp_path, {}), clock=clock) as s:
        later = (
            s.create_message("later").to("a@x.test").set(T.PR_DEFERRED_SEND_TIME, T0 + timedelta(minutes=5)).submit()
        )
        undone = (
            s.create_message("undo").to("b@x.test").set(T.PR_DEFERRED_SEND_TIME, T0 + timedelta(minutes=5)).submit()
        )
        s.deliver()
        assert submits(calls) == 0
        s.cancel(undone)  # the undo-send window
        assert [q.id for q in s.queue()] == [later]
        clock.advance(300)
        s.deliver()
        assert submits(calls) == 1 and s.engine.store.message_folder(later) == s.sent_items.id
        assert s.engine.store.message_folder(undone) == s.outbox.id


def test_retry_now_ignores_backoff(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    with postroom.logon(profile_with(tmp_path, {"answer": "wait:3600"}), clock=clock) as s:
        mid = s.create_message("x").to("a@x.test").submit()
        s.deliver()
        s.deliver()
        assert submits(calls) == 1
        assert s.retry(mid) == 1
        s.deliver()
        assert submits(calls) == 2
        assert s.retry() == 1  # --all
        s.deliver()
        assert submits(calls) == 3


def test_hold_and_release(tmp_path: Path, calls: Calls) -> None:
    with postroom.logon(profile_with(tmp_path, {})) as s:
        mid = s.create_message("x").to("a@x.test").submit()
        s.hold(mid)
        assert s.queue()[0].state is QueueState.HELD
        s.deliver()
        assert submits(calls) == 0
        with pytest.raises(MAPIError) as err:
            s.hold(mid)
        assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
        with pytest.raises(MAPIError):
            s.retry(mid)  # held: release it first
        s.release(mid)
        s.deliver()
        assert submits(calls) == 1 and s.queue() == []
        with pytest.raises(MAPIError) as err:
            s.release(mid)
        assert err.value.code == HResult.MAPI_E_NOT_IN_QUEUE
        with pytest.raises(MAPIError) as err:
            s.hold("999")
        assert err.value.code == HResult.MAPI_E_NOT_FOUND


def test_a_poison_message_does_not_block_the_others(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(
        tmp_path / "p",
        ("buggy", {"address_types": ["X-POISON"], "answer": "raise"}),
        ("smtp", {"address_types": ["SMTP"]}),
    )
    with postroom.logon(profile) as s:
        s.engine.spooler.concurrency = 1
        poison = s.create_message("poison").to("X-POISON:boom").submit()
        good = [s.create_message(f"m{n}").to(f"r{n}@x.test").submit() for n in range(3)]
        s.deliver()
        assert all(s.engine.store.message_folder(m) == s.sent_items.id for m in [poison, *good])
        assert s.recipient_states(poison)[0].state.value == "failed"


@pytest.mark.parametrize("policy", ["resend", "hold"])
def test_outcome_unknown_after_a_spooler_died_holding_a_message(tmp_path: Path, calls: Calls, policy: str) -> None:
    clock = Clock(T0)
    with postroom.logon(profile_with(tmp_path, {}, crash_policy=policy), clock=clock) as s:
        mid = s.create_message("x").to("a@x.test").submit()
        assert s.engine.store.claim("dead-spooler", clock(), 60) == [mid]  # it died holding the message,
        assert s.engine.store.mark_started("dead-spooler", [mid]) == {mid}  # with a transport calling it
        s.deliver()
        assert submits(calls) == 0  # the lease has not run out yet
        clock.advance(61)
        s.deliver()
        kinds = [e.kind for e in s.events(mid)]
        assert "outcome-unknown" in kinds
        if policy == "resend":
            assert submits(calls) == 1 and s.queue() == []
            # Same Message-ID on the resend, so receivers can de-duplicate.
            assert s.open_message(mid)[T.PR_INTERNET_MESSAGE_ID]
        else:
            assert submits(calls) == 0
            (entry,) = s.queue()
            assert entry.state is QueueState.HELD and "outcome unknown" in (entry.hold_reason or "")


def test_a_message_a_dead_spooler_only_claimed_is_sent_without_an_outcome_unknown(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    with postroom.logon(profile_with(tmp_path, {}, crash_policy="hold"), clock=clock) as s:
        mid = s.create_message("x").to("a@x.test").submit()
        assert s.engine.store.claim("dead-spooler", clock(), 60) == [mid]  # claimed ahead, never started
        clock.advance(61)
        s.deliver()
        assert submits(calls) == 1 and s.queue() == []  # not held: no transport had it
        assert "outcome-unknown" not in [e.kind for e in s.events(mid)]


def test_an_idle_waiting_queue_does_not_spin(tmp_path: Path, calls: Calls) -> None:
    """With only waiting messages the daemon sleeps until the next due time: no busy loop."""
    profile = profile_with(tmp_path, {"answer": "wait:3600"})

    async def scenario() -> int:
        session = postroom.alogon(Profile.load(profile.directory))
        for n in range(50):
            session.create_message(f"m{n}").to(f"r{n}@x.test").submit()
        stop = asyncio.Event()
        task = asyncio.create_task(session.run_spooler(stop))
        for _ in range(300):  # first pass: all 50 get "wait 3600" (however slow the machine is)
            if submits(calls) == 50 and not session.queue()[-1].locked:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        before = session.engine.daemon.iterations
        calls_before = submits(calls)
        await asyncio.sleep(1.5)
        spins = session.engine.daemon.iterations - before
        stop.set()
        await asyncio.wait_for(task, 5)
        await session.close()
        assert submits(calls) == calls_before == 50
        return spins

    assert asyncio.run(scenario()) <= 1


# --- issue 14: timers that mean what they say ----------------------------------------------------------


def test_a_deferred_send_is_not_bounced_when_it_falls_due(tmp_path: Path, calls: Calls) -> None:
    """The queue lifetime counts from the first delivery attempt, not from submission: a message
    deferred by seven days goes out when due, and then has its whole lifetime to be delivered."""
    clock = Clock(T0)
    profile = profile_with(tmp_path, {"answer": "ok"}, max_queue_lifetime_hours=120)
    with postroom.logon(profile, clock=clock) as s:
        draft = s.create_message("later").to("a@x.test")
        draft.set(T.PR_DEFERRED_SEND_TIME, T0 + timedelta(days=7))
        mid = draft.submit()
        s.deliver()
        assert submits(calls) == 0
        clock.advance(timedelta(days=7))
        s.deliver()
        assert submits(calls) == 1 and s.queue() == []
        assert s.recipient_states(mid)[0].state.value == "delivered"


def test_a_message_that_waited_offline_for_days_is_sent_by_send_receive(tmp_path: Path, calls: Calls) -> None:
    """Offline waits never expire: six days in the Outbox, then Send/Receive sends it."""
    clock = Clock(T0)
    profile = profile_with(tmp_path, {"answer": "ok"}, max_queue_lifetime_hours=120)
    with postroom.logon(profile, clock=clock) as s:
        s.set_mode("offline")
        mid = s.create_message("written offline").to("a@x.test").submit()
        s.deliver()
        clock.advance(timedelta(days=6))
        s.deliver()
        assert submits(calls) == 0 and s.queue()[0].first_try is None
        summary = s.send_receive()
        assert summary.sent == 1 and summary.failed == 0
        assert s.recipient_states(mid)[0].state.value == "delivered"


def test_a_queue_left_alone_for_days_is_tried_before_it_expires(tmp_path: Path, calls: Calls) -> None:
    """The spooler was off for five days: the first attempt happens, and only a failed attempt
    after the lifetime ran out bounces the message."""
    clock = Clock(T0)
    profile = profile_with(tmp_path, {"answer": "wait:600"}, max_queue_lifetime_hours=120)
    with postroom.logon(profile, clock=clock) as s:
        mid = s.create_message("queued").to("a@x.test").submit()
        clock.advance(timedelta(days=5, hours=1))
        s.deliver()
        assert submits(calls) == 1 and s.recipient_states(mid)[0].state.value == "pending"
        entry = s.queue()[0]
        assert entry.first_try == clock() and entry.failures == 1
        clock.advance(timedelta(hours=120))
        s.deliver()  # attempted, failed, and the lifetime (from the first try) is over
        assert submits(calls) == 2 and s.recipient_states(mid)[0].state.value == "expired"


def test_temporary_failures_back_off_to_about_a_hundred_tries_in_five_days(tmp_path: Path, calls: Calls) -> None:
    """A server answering 4xx for five days (no wait of its own): 300 s doubling up to 4000 s."""
    clock = Clock(T0)
    profile = profile_with(tmp_path, {"answer": "wait:0"}, {"retry_jitter": 0}, max_queue_lifetime_hours=120)
    with postroom.logon(profile, clock=clock) as s:
        s.create_message("4xx").to("a@x.test").submit()
        delays = []
        while s.queue() and len(delays) < 1000:
            s.deliver()
            if not s.queue():
                break
            delay = (s.queue()[0].next_attempt - clock()).total_seconds()  # type: ignore[operator]
            delays.append(delay)
            clock.advance(delay)
        assert delays[:6] == [300, 600, 1200, 2400, 4000, 4000]
        assert 100 <= submits(calls) <= 115  # not 7,200 (a try a minute)


# --- issue 14: no transport starves another ------------------------------------------------------


def test_a_slow_transports_backlog_does_not_starve_another_transport(tmp_path: Path, calls: Calls) -> None:
    """Oldest first alone would make the fax wait behind twenty slow SMTP messages; fair lanes hand
    it to the first free worker."""
    profile = make_profile(
        tmp_path / "p",
        ("slow", {"address_types": ["SMTP"], "sleep": 0.05}),
        ("fax", {"address_types": ["FAX"]}),
    )
    with postroom.logon(profile) as s:
        for n in range(20):
            s.create_message(f"m{n}").to(f"r{n}@x.test").submit()
        s.create_message("fax").to("FAX:+1").submit()
        summary = s.deliver()
        assert summary.delivered == 21
    order = [c[0] for c in calls if c[1] == "submit_message"]
    assert order.index("fax") <= 2, order  # not 20th: among the first messages taken


def test_a_backlog_longer_than_one_read_of_due_messages_does_not_starve_another_transport(
    tmp_path: Path, calls: Calls
) -> None:
    """The soak found it: lanes were made from the oldest 256 due messages only, so behind a
    backlog of 300 SMTP messages the fax was not seen until 256 of them had been sent."""
    profile = make_profile(tmp_path / "p", ("slow", {"address_types": ["SMTP"]}), ("fax", {"address_types": ["FAX"]}))
    with postroom.logon(profile) as s:
        s.submit_many(s.create_message(f"m{n}").to(f"r{n}@x.test") for n in range(300))
        s.create_message("fax").to("FAX:+1").submit()
        assert s.deliver().delivered == 301
    order = [c[0] for c in calls if c[1] == "submit_message"]
    assert order.index("fax") <= 2, order.index("fax")


def test_a_backlog_longer_than_a_chunk_hides_another_transport_for_a_few_claims_only(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lanes are placed CHUNK messages at a time, one more chunk at each claim: the fax behind 300
    SMTP messages (six chunks of 50) is found by the seventh claim, long before the backlog's end."""
    monkeypatch.setattr(scheduler, "CHUNK", 50)
    profile = few_workers(
        make_profile(tmp_path / "p", ("slow", {"address_types": ["SMTP"]}), ("fax", {"address_types": ["FAX"]}))
    )
    with postroom.logon(profile) as s:
        s.submit_many(s.create_message(f"m{n}").to(f"r{n}@x.test") for n in range(300))
        s.create_message("fax").to("FAX:+1").submit()
        assert s.deliver().delivered == 301
    order = [c[0] for c in calls if c[1] == "submit_message"]
    assert order.index("fax") <= 7 * 4, order.index("fax")  # seven claims of four workers


def test_a_short_pass_reads_the_recipients_of_a_few_chunks_of_a_long_backlog(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Figure 8: a pass taking a few messages out of a long backlog read the recipients of every
    due message it looked at (up to SCAN, 20,000) before its first claim."""
    monkeypatch.setattr(scheduler, "CHUNK", 50)
    profile = few_workers(make_profile(tmp_path / "p", ("slow", {"address_types": ["SMTP"]})))
    with postroom.logon(profile) as s:
        s.submit_many(s.create_message(f"m{n}").to(f"r{n}@x.test") for n in range(400))
        read: list[int] = []
        store = s.engine.store
        pending_recipients = store.pending_recipients
        monkeypatch.setattr(store, "pending_recipients", lambda ids: read.append(len(ids)) or pending_recipients(ids))
        assert s.deliver(limit=8).delivered == 8
    assert 0 < sum(read) <= 3 * 50, read  # a chunk per claim (two or three claims), not all 400


def test_a_message_submitted_during_a_pass_without_a_time_limit_is_not_left_for_last(
    tmp_path: Path, calls: Calls
) -> None:
    """A pass with no time limit (deliver(), a Send/Receive) reads the due messages again every
    second: a fax submitted while 120 slow SMTP messages go out is taken long before the last of
    them. The soak found the daemon's scheduled Send/Receive delivering a backlog for minutes in
    one such pass while maildir messages waited."""
    profile = few_workers(
        make_profile(
            tmp_path / "p", ("slow", {"address_types": ["SMTP"], "sleep": 0.1}), ("fax", {"address_types": ["FAX"]})
        )
    )

    async def scenario() -> None:
        s = postroom.alogon(Profile.load(profile.directory))
        s.submit_many(s.create_message(f"m{n}").to(f"r{n}@x.test") for n in range(120))
        await s.deliver(limit=0)  # log on

        async def fax_after(calls_made: int) -> None:
            while sum(1 for c in calls if c[1] == "submit_message") < calls_made:
                await asyncio.sleep(0.01)
            s.create_message("fax").to("FAX:+1").submit()

        submitter = asyncio.create_task(fax_after(20))
        summary = await s.engine.spooler.process_due()
        await submitter
        assert summary.delivered == 121
        await s.close()

    asyncio.run(scenario())
    order = [c[0] for c in calls if c[1] == "submit_message"]
    assert order.index("fax") < 100, order.index("fax")  # about 20 + one second's worth (40), not 120th


def test_a_pass_with_a_time_limit_stops_taking_messages_and_says_so(tmp_path: Path, calls: Calls) -> None:
    profile = few_workers(make_profile(tmp_path / "p", ("slow", {"address_types": ["SMTP"], "sleep": 0.1})))

    async def scenario() -> tuple[int, bool, int]:
        s = postroom.alogon(Profile.load(profile.directory))
        for n in range(30):
            s.create_message(f"m{n}").to(f"r{n}@x.test").submit()
        await s.deliver(limit=0)  # log on
        summary = await s.engine.spooler.process_due(max_seconds=0.15)
        left = len(s.queue())
        await s.close()
        return summary.processed, summary.cut_short, left

    processed, cut_short, left = asyncio.run(scenario())
    assert cut_short and 0 < processed < 30 and left == 30 - processed


def test_a_scheduled_send_receive_takes_no_new_message_after_its_time_limit(tmp_path: Path, calls: Calls) -> None:
    """The daemon's automatic Send/Receive (explicit=False) is bounded like its own passes, so a
    long backlog never keeps the daemon from its notifications; what it leaves is the next turn's."""
    profile = few_workers(make_profile(tmp_path / "p", ("slow", {"address_types": ["SMTP"], "sleep": 0.1})))

    async def scenario() -> tuple[int, int]:
        s = postroom.alogon(Profile.load(profile.directory))
        for n in range(30):
            s.create_message(f"m{n}").to(f"r{n}@x.test").submit()
        summary = await s.send_receive(explicit=False, max_seconds=0.15)
        left = len(s.queue())
        await s.close()
        return summary.sent, left

    sent, left = asyncio.run(scenario())
    assert 0 < sent < 30 and left == 30 - sent


def test_a_paused_transport_costs_nothing_until_one_message_probes_it(tmp_path: Path, calls: Calls) -> None:
    """While the breaker is open its backlog is parked: no claims, no calls; when the rest is over
    one message probes, and once that works the whole backlog goes out."""
    clock = Clock(T0)
    policy = {"breaker_threshold": 2, "breaker_seconds": 600}
    profile = profile_with(tmp_path, {"answer": "network:5"}, policy)
    with postroom.logon(profile, clock=clock) as s:
        s.engine.spooler.concurrency = 1
        for n in range(30):
            s.create_message(f"m{n}").to(f"r{n}@x.test").submit()
        s.deliver()
        assert submits(calls) == 2
        parked = [q for q in s.queue() if q.waiting_for is not None and q.waiting_for.value == "paused"]
        assert len(parked) == 28
        claims = sum(q.attempts for q in s.queue())
        for _ in range(5):  # the rest: passes find nothing to claim
            clock.advance(100)
            assert s.deliver().processed <= 2  # at most the two retrying messages, never the parked backlog
        assert sum(q.attempts for q in s.queue()) - claims <= 2 * 5
        assert submits(calls) <= 4
        clock.advance(200)  # the rest is over
        s.engine.transports.by_name("smtp").logon.provider.context.options["answer"] = "ok"  # type: ignore[union-attr,index]
        before = submits(calls)
        s.deliver()
        assert s.queue() == []  # the probe worked: the parked backlog was woken and sent in the same pass
        assert submits(calls) - before >= 28


def test_one_message_probes_a_paused_transport_however_many_workers(tmp_path: Path, calls: Calls) -> None:
    clock = Clock(T0)
    policy = {"breaker_threshold": 2, "breaker_seconds": 600}
    profile = few_workers(profile_with(tmp_path, {"answer": "network:5"}, policy))
    with postroom.logon(profile, clock=clock) as s:
        assert s.engine.spooler.concurrency == 4
        for n in range(12):
            s.create_message(f"m{n}").to(f"r{n}@x.test").submit()
        s.deliver()
        opened = submits(calls)
        assert 2 <= opened <= 4  # the workers in flight when the breaker opened
        clock.advance(601)
        s.deliver()
        assert submits(calls) == opened + 1  # one probe, which fails: the breaker opens again
        clock.advance(601)
        s.engine.transports.by_name("smtp").logon.provider.context.options["answer"] = "ok"  # type: ignore[union-attr,index]
        s.deliver()
        # A message a worker parked while another's probe closed the breaker is due at once, not in 6 h.
        assert all(q.next_attempt is None or q.next_attempt <= clock() for q in s.queue())
        s.deliver()
        assert s.queue() == [] and submits(calls) == opened + 1 + 12
