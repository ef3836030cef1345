"""A store outage (MAPI_E_NETWORK_ERROR from the store) while the spooler daemon runs: it backs off, logs
the outage once and its end once, and carries on; a pass cut short leaves nothing stale in memory, and
a claim whose outcome could not be written runs out and is taken over ("outcome unknown").
Other errors still end the daemon. (The same against a real PostgreSQL server cut off by a proxy:
tests/integration/test_postgres_outage.py.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.mapi.codes import HResult, MAPIError
from postroom.profile import Profile
from postroom.spooler.commit import GroupCommit
from postroom.spooler.outage import StoreOutage, retry_delay, store_unreachable
from postroom.store.base import MessageStore

from support.clock import Clock
from support.profiles import make_profile

Calls = list[tuple[str, str, Any]]
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def unreachable() -> MAPIError:
    return MAPIError(HResult.MAPI_E_NETWORK_ERROR, "the message store postgresql://db/x failed: connection refused")


class Outage:
    """Some of a store's methods fail with MAPI_E_NETWORK_ERROR while `down` is set (or raise `error`)."""

    METHODS = ("next_due", "claim", "queue_entry", "load_claimed", "save_status_rows", "wake")

    def __init__(self, store: MessageStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = False
        self.error: Callable[[], Exception] = unreachable
        self.failures = 0
        for name in self.METHODS:
            monkeypatch.setattr(store, name, self._failing(getattr(store, name)))

    def _failing(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.failures += 1
                raise self.error()
            return real(*args, **kwargs)

        return call


def submits(calls: Calls) -> int:
    return sum(1 for c in calls if c[1] == "submit_message")


async def until(condition: Callable[[], bool], seconds: float) -> bool:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert retry_delay(10_000) == 30  # no overflow however long the outage
    assert [retry_delay(n, first=0.5, cap=3) for n in range(1, 5)] == [0.5, 1, 2, 3]


def test_only_a_network_error_is_an_outage() -> None:
    assert store_unreachable(unreachable())
    assert not store_unreachable(MAPIError(HResult.MAPI_E_CORRUPT_DATA, "bad row"))
    assert not store_unreachable(OSError("a bug"))


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="postroom.spooler")
    outage = StoreOutage()
    assert outage.recovered(5.0) is None  # no outage, nothing to say
    assert outage.failed(unreachable(), 100.0) == 1
    assert outage.failed(unreachable(), 101.0) == 2
    assert outage.failed(unreachable(), 103.0) == 4
    assert outage.recovered(107.5) == 7.5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "message store unreachable: the message store postgresql://db/x failed: connection refused; retrying in 1 s",
        "message store reachable again after 7.5 s; resuming",
    ]
    assert outage.failed(unreachable(), 200.0) == 1  # the next outage starts from the first delay again


def test_the_daemon_rides_out_a_store_outage(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="postroom.spooler")
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))

    async def scenario() -> None:
        daemon = postroom.alogon(Profile.load(profile.directory))
        client = postroom.alogon(Profile.load(profile.directory))
        outage = Outage(daemon.engine.store, monkeypatch)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run_spooler(stop))
        await asyncio.sleep(0.2)
        first = client.create_message("before").to("a@x.test").submit()
        assert await until(lambda: client.recipient_states(first)[0].state.final, 2)

        outage.down = True
        second = client.create_message("during").to("b@x.test").submit()  # the notification wakes the daemon
        assert await until(lambda: outage.failures > 0, 2)
        await asyncio.sleep(0.5)
        assert not task.done()
        assert outage.failures <= 2  # it waits between tries: no busy loop
        assert not client.recipient_states(second)[0].state.final
        outage.down = False

        assert await until(lambda: client.recipient_states(second)[0].state.final, 5)  # backoff: 1 s
        assert client.recipient_states(second)[0].state.value == "delivered"
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)
        await daemon.close()
        await client.close()

    asyncio.run(scenario())
    assert submits(calls) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("message store unreachable: the message store postgresql://db/x failed")
    assert warnings[0].endswith("; retrying in 1 s")
    assert warnings[1].startswith("message store reachable again after ")


def test_a_daemon_that_cannot_listen_for_notifications_at_start_waits_for_the_store(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The soak found it: a daemon had opened its store and logged on ("Spooler running"), then met a
    PostgreSQL restart as it began to LISTEN, and ended with exit code 2 instead of waiting."""
    caplog.set_level(logging.DEBUG, logger="postroom.spooler")
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))

    async def scenario() -> None:
        daemon = postroom.alogon(Profile.load(profile.directory))
        listen = daemon.engine.store.bus.listen
        refusals = [unreachable()]

        def listen_after_a_refusal() -> Any:
            if refusals:
                raise refusals.pop()
            return listen()

        monkeypatch.setattr(daemon.engine.store.bus, "listen", listen_after_a_refusal)
        mid = daemon.create_message("x").to("a@x.test").submit()
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run_spooler(stop))
        assert await until(lambda: daemon.recipient_states(mid)[0].state.final, 5)  # after 1 s of backoff
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)
        await daemon.close()

    asyncio.run(scenario())
    assert submits(calls) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith("message store unreachable: ") and warnings[0].endswith("; retrying in 1 s")
    assert warnings[1].startswith("message store reachable again after ")


def test_a_stop_during_an_outage_ends_the_daemon_at_once(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))

    async def scenario() -> None:
        daemon = postroom.alogon(Profile.load(profile.directory))
        outage = Outage(daemon.engine.store, monkeypatch)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run_spooler(stop))
        await asyncio.sleep(0.2)
        outage.down = True
        assert daemon.engine.protocol.wakeup is not None
        daemon.engine.protocol.wakeup.set()
        assert await until(lambda: outage.failures > 0, 2)  # now it waits 1 s before trying again
        stop.set()
        await asyncio.wait_for(task, 0.5)  # without waiting for the backoff to end
        await daemon.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("error", [RuntimeError("a bug"), MAPIError(HResult.MAPI_E_CORRUPT_DATA, "bad row")])
def test_other_errors_still_end_the_daemon(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))

    async def scenario() -> None:
        daemon = postroom.alogon(Profile.load(profile.directory))
        outage = Outage(daemon.engine.store, monkeypatch)
        outage.error = lambda: error
        outage.down = True
        with pytest.raises(type(error)) as raised:
            await asyncio.wait_for(daemon.run_spooler(asyncio.Event()), 5)
        assert raised.value is error
        outage.down = False
        await daemon.close()

    asyncio.run(scenario())


def test_an_outcome_that_could_not_be_written_leaves_the_claim_to_run_out(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transport delivered, then finishing it (finish_many, the tick's finishes together) met the
    outage: nothing stays behind in memory, the lease is not renewed any more, and once it runs out the
    message is taken over and resent (outcome unknown)."""
    clock = Clock(T0)
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    profile.settings["lease_seconds"] = 60
    profile.save()

    async def scenario() -> None:
        s = postroom.alogon(Profile.load(profile.directory), clock=clock)
        mid = s.create_message("x").to("a@x.test").submit()
        finish = s.engine.store.finish_many

        def unreachable_finish(*args: Any) -> list[str]:
            raise unreachable()

        monkeypatch.setattr(s.engine.store, "finish_many", unreachable_finish)
        with pytest.raises(MAPIError) as raised:
            await s.deliver()
        assert raised.value.code == HResult.MAPI_E_NETWORK_ERROR
        processor = s.engine.spooler.processor
        assert processor._unflushed == {} and processor.in_flight == set()
        assert processor.commit._pending == [] and not processor.commit._scheduled
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []  # no lease renewer left
        (entry,) = s.queue()
        assert entry.lease_owner == s.engine.spooler.owner  # still claimed: its outcome is unknown to the store
        assert submits(calls) == 1

        monkeypatch.setattr(s.engine.store, "finish_many", finish)
        assert (await s.deliver()).processed == 0  # the lease has not run out yet
        clock.advance(61)
        summary = await s.deliver()
        assert summary.delivered == 1 and s.queue() == []
        assert submits(calls) == 2
        assert [e.kind for e in s.events(mid)].count("outcome-unknown") == 1
        await s.close()

    asyncio.run(scenario())


def test_a_pass_cut_short_with_outcomes_unwritten_stops_renewing_the_lease(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first transport delivered (its outcome waits for the next write), then the store went away
    before the second transport: the last-chance write of that outcome fails too. The lease renewer must
    still stop, or the claim would be kept alive forever and the message never taken over."""
    clock = Clock(T0)
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}), ("fax", {"address_types": ["FAX"]}))

    async def scenario() -> None:
        s = postroom.alogon(Profile.load(profile.directory), clock=clock)
        s.create_message("x").to("a@x.test", "FAX:1").submit()
        breaker_state = s.engine.store.breaker_state

        def breaker_state_unreachable(name: str) -> dict[str, Any]:
            if name == "fax":
                raise unreachable()
            return breaker_state(name)

        def record_outcomes_unreachable(*args: Any) -> None:
            raise unreachable()

        monkeypatch.setattr(s.engine.store, "breaker_state", breaker_state_unreachable)
        monkeypatch.setattr(s.engine.store, "record_outcomes", record_outcomes_unreachable)
        with pytest.raises(MAPIError) as raised:
            await s.deliver()
        assert raised.value.code == HResult.MAPI_E_NETWORK_ERROR
        assert submits(calls) == 1  # smtp delivered; fax was never called
        processor = s.engine.spooler.processor
        assert processor._unflushed == {} and processor.in_flight == set()
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []  # no lease renewer left
        await s.close()

    asyncio.run(scenario())


def test_a_message_this_process_still_delivers_is_not_taken_over_by_itself(tmp_path: Path, calls: Calls) -> None:
    """After an outage longer than the lease, a worker here may still hold a message whose lease ran out:
    another worker of the same process claiming it (same owner) must not deliver it a second time."""
    clock = Clock(T0)
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))

    async def scenario() -> None:
        s = postroom.alogon(Profile.load(profile.directory), clock=clock)
        await s.deliver()  # logged on: the session's spooler is the one that will claim
        mid = s.create_message("x").to("a@x.test").submit()
        processor = s.engine.spooler.processor
        processor.in_flight.add(mid)  # as if a worker were still in the transport with it
        summary = await s.deliver()
        assert summary.processed == 0 and submits(calls) == 0
        (entry,) = s.queue()
        assert entry.lease_owner is None  # not even claimed: a pass never takes what a worker here holds
        processor.in_flight.discard(mid)
        await s.close()

    asyncio.run(scenario())


def test_group_commit_takes_new_writes_after_a_failed_commit() -> None:
    class LostAtCommit:
        fail = True

        @contextmanager
        def batch(self) -> Iterator[None]:
            yield
            if self.fail:
                self.fail = False
                raise unreachable()

    async def scenario() -> None:
        commit = GroupCommit(LostAtCommit())  # type: ignore[arg-type]
        results = await asyncio.gather(commit.write(lambda: 1), commit.write(lambda: 2), return_exceptions=True)
        assert all(isinstance(r, MAPIError) and store_unreachable(r) for r in results)
        assert commit._pending == [] and not commit._scheduled and commit.commits == 0
        assert await commit.write(lambda: 3) == 3
        assert commit.commits == 1

    asyncio.run(scenario())
