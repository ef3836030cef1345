"""The protocol manager: *when* transports are called (spec §9.3, §10; KB 317412).

Online, a submitted message goes to its transports at once: the spooler wakes on the
store's "submitted" notification, not from a sleep-and-scan loop. Offline, transports are
logged on with LOGON_NO_CONNECT and nothing is passed to them; messages wait quietly in
the Outbox for Send/Receive. This is the Outlook 2002+ behaviour the seed describes, and a
transport marked `call_when_offline` gets the fix that KB 317412 describes: it is logged
on at start-up with a connection and called at once, even offline.

Going back online flushes the Outbox only after the connection has stayed up for a
stability window. A blip shorter than that flushes nothing and fails nothing.

Send/Receive (`IMAPIStatus::FlushQueues` on the spooler's status row) runs transport by
transport in transport order. The transport's flush bits are set in its status row while
it runs. Send/Receive *groups* choose which transports take part, and whether they send,
receive, or both, with separate settings for online and offline, plus an optional
schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .mapi.codes import HResult, MAPIError
from .mapi.flags import FlushFlags, LogonFlags, NotifyFlags, SpoolerNotifyFlags, StatusCode
from .mapi.message import MessageData
from .profile import Profile
from .spooler import LoadedTransport, PassSummary
from .spooler.outage import StoreOutage, store_unreachable
from .spooler.tally import Counts
from .spooler.transports import call_transport, error_summary
from .store.base import MessageStore, WaitKind
from .store.notify import Listener
from .transports.spi import InboundMessage

if TYPE_CHECKING:
    from .session import _SessionCore

log = logging.getLogger("postroom.protocol")

DEFAULT_GROUP = "All Accounts"
MAX_EVERY_MINUTES = 525_600.0  # a year: beyond it a schedule means nothing (and `inf` breaks the timer)
DEFAULT_STABILITY_SECONDS = 5.0
SAFETY_SCAN_SECONDS = 30.0
#: A daemon pass takes no new message after this long, so mode and configuration changes,
#: inbound polls and schedules are seen within seconds while a long backlog drains.
PASS_SECONDS = 5.0
MAX_INBOUND_PER_RUN = 10_000


# --- Send/Receive groups --------------------------------------------------------------------


@dataclass
class GroupSettings:
    """A group's behaviour in one mode (online or offline)."""

    include: bool = True  # part of an explicit Send/Receive (F9)
    send: bool = True
    receive: bool = True
    every_minutes: float = 0.0  # automatic Send/Receive every n minutes; 0 = never

    def __post_init__(self) -> None:
        every = self.every_minutes
        if not math.isfinite(every) or not 0 <= every <= MAX_EVERY_MINUTES:
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER,
                f"a Send/Receive schedule is 0 (never) to {MAX_EVERY_MINUTES:g} minutes (a year), not {every!r}",
            )

    def to_toml(self) -> dict[str, Any]:
        return {
            "include": self.include,
            "send": self.send,
            "receive": self.receive,
            "every_minutes": self.every_minutes,
        }

    @classmethod
    def from_toml(cls, data: Any, default: GroupSettings) -> GroupSettings:
        if data is None:
            return GroupSettings(**default.to_toml())
        if not isinstance(data, dict):
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "group settings must be a table")
        try:
            every = float(data.get("every_minutes", default.every_minutes))
        except (TypeError, ValueError) as exc:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"every_minutes: {exc}") from exc
        return cls(
            include=bool(data.get("include", default.include)),
            send=bool(data.get("send", default.send)),
            receive=bool(data.get("receive", default.receive)),
            every_minutes=every,
        )


@dataclass
class SendReceiveGroup:
    """A named set of transports with online and offline settings (Outlook's Send/Receive groups)."""

    name: str
    transports: list[str] | None = None  # None: every transport of the profile
    online: GroupSettings = field(default_factory=lambda: GroupSettings(every_minutes=5.0))
    offline: GroupSettings = field(default_factory=GroupSettings)

    def settings(self, mode: str) -> GroupSettings:
        return self.online if mode == "online" else self.offline

    def members(self, profile: Profile) -> list[str]:
        """The group's transports, in transport order."""
        order = [s.name for s in profile.transport_order()]
        if self.transports is None:
            return order
        wanted = {t.lower() for t in self.transports}
        return [n for n in order if n.lower() in wanted]

    def to_toml(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "online": self.online.to_toml(), "offline": self.offline.to_toml()}
        if self.transports is not None:
            data["transports"] = list(self.transports)
        return data

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> SendReceiveGroup:
        base = cls(str(data.get("name", "")))
        if not base.name:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "a [[sendreceive_group]] has no name")
        transports = data.get("transports")
        if transports is not None and (
            not isinstance(transports, list) or not all(isinstance(t, str) for t in transports)
        ):
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"group {base.name!r}: transports must be a list of names")
        return cls(
            name=base.name,
            transports=transports,
            online=GroupSettings.from_toml(data.get("online"), base.online),
            offline=GroupSettings.from_toml(data.get("offline"), base.offline),
        )


def load_groups(profile: Profile) -> list[SendReceiveGroup]:
    """The profile's groups; "All Accounts" (every transport) exists unless the profile redefines it."""
    groups = [SendReceiveGroup.from_toml(g) for g in profile.groups]
    if not any(g.name.lower() == DEFAULT_GROUP.lower() for g in groups):
        groups.insert(0, SendReceiveGroup(DEFAULT_GROUP))
    return groups


def save_group(profile: Profile, group: SendReceiveGroup) -> None:
    """Add or replace a group in the profile (the caller saves the profile)."""
    known = {s.name.lower() for s in profile.services}
    for t in group.transports or []:
        if t.lower() not in known:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"group {group.name!r}: no transport named {t!r}")
    profile.groups = [g for g in profile.groups if str(g.get("name", "")).lower() != group.name.lower()]
    profile.groups.append(group.to_toml())


def find_group(profile: Profile, name: str) -> SendReceiveGroup:
    for g in load_groups(profile):
        if g.name.lower() == name.lower():
            return g
    known = ", ".join(g.name for g in load_groups(profile))
    raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no Send/Receive group named {name!r} (groups: {known})")


# --- timing logic, pure so tests drive it with their own clock ----------------------------------


class OnlineTransition:
    """Flush the Outbox once the connection has been up for `stability` seconds."""

    def __init__(self, stability_seconds: float) -> None:
        self.stability = timedelta(seconds=stability_seconds)
        self.flush_at: datetime | None = None

    def mode_changed(self, mode: str, now: datetime) -> None:
        self.flush_at = now + self.stability if mode == "online" else None

    def due(self, now: datetime) -> bool:
        """True once, when the window has passed without going offline again."""
        if self.flush_at is not None and now >= self.flush_at:
            self.flush_at = None
            return True
        return False


class GroupSchedule:
    """When each group's automatic Send/Receive runs next, in the current mode."""

    def __init__(self) -> None:
        self.next_run: dict[str, datetime] = {}

    def reset(self, groups: Iterable[SendReceiveGroup], mode: str, now: datetime) -> None:
        self.next_run = {}
        for g in groups:
            every = g.settings(mode).every_minutes
            if every > 0:
                self.next_run[g.name] = now + timedelta(minutes=every)

    def due(self, groups: Iterable[SendReceiveGroup], mode: str, now: datetime) -> list[SendReceiveGroup]:
        out = []
        for g in groups:
            at = self.next_run.get(g.name)
            if at is not None and now >= at:
                out.append(g)
                self.next_run[g.name] = now + timedelta(minutes=g.settings(mode).every_minutes)
        return out

    def next_time(self) -> datetime | None:
        return min(self.next_run.values(), default=None)


# --- results -----------------------------------------------------------------------------------


@dataclass
class TransportFlush:
    """One line of a Send/Receive summary: the recipients a transport had, and what it received.

    `waiting` counts recipients that wait for this transport because it may not be called now
    (offline, outside the group); `deferred` those it asked to try again later.
    """

    transport: str  # "" for recipients no transport takes (their NDRs)
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    waiting: int = 0
    received: int = 0
    error: str = ""

    def add(self, counts: Counts) -> None:
        self.sent += counts.delivered
        self.failed += counts.failed
        self.deferred += counts.deferred
        self.waiting += counts.waiting


@dataclass
class SendReceiveSummary:
    """What a Send/Receive did, transport by transport; the totals are the sums of the lines.

    The group's transports come first, in transport order. The outbound pass of a flush sends
    every message that is due, so a transport outside the group can have a line too (a
    call-when-offline transport, or one that recipients still wait for), and recipients no
    transport takes are counted on the line of transport "" (no transport).
    """

    group: str
    transports: list[TransportFlush] = field(default_factory=list)

    def entry(self, transport: str) -> TransportFlush:
        for t in self.transports:
            if t.transport.lower() == transport.lower():
                return t
        entry = TransportFlush(transport)
        self.transports.append(entry)
        return entry

    def absorb(self, passes: PassSummary) -> None:
        """Count a spooler pass's recipients under the transports that had them."""
        for name, counts in passes.tally:
            self.entry(name).add(counts)

    @property
    def sent(self) -> int:
        return sum(t.sent for t in self.transports)

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.transports)

    @property
    def deferred(self) -> int:
        return sum(t.deferred for t in self.transports)

    @property
    def waiting(self) -> int:
        return sum(t.waiting for t in self.transports)

    @property
    def received(self) -> int:
        return sum(t.received for t in self.transports)

    @property
    def errors(self) -> list[str]:
        return [f"{t.transport}: {t.error}" for t in self.transports if t.error]

    @property
    def ok(self) -> bool:
        """Nothing failed: no NDR, and every transport could log on, flush and fetch."""
        return self.failed == 0 and not self.errors


class Received(int):
    """How many messages a receive run stored (it is that number), and which transports failed.

    `errors` lists "transport: why" for each transport that could not log on, connect or
    fetch, so a caller can tell "nothing new" from "could not look".
    """

    errors: tuple[str, ...]

    def __new__(cls, count: int, errors: Iterable[str] = ()) -> Received:
        obj = super().__new__(cls, count)
        obj.errors = tuple(errors)
        return obj

    @property
    def ok(self) -> bool:
        return not self.errors


Progress = Callable[[str, LoadedTransport, str], None]


# --- the protocol manager ----------------------------------------------------------------------


class ProtocolManager:
    """Owns when the session's transports are logged on, called, flushed and polled."""

    def __init__(self, core: _SessionCore, stability_seconds: float | None = None) -> None:
        self.core = core
        self.flushing: set[str] = set()
        stability = stability_seconds
        if stability is None:
            stability = float(core.profile.settings.get("online_stability_seconds", DEFAULT_STABILITY_SECONDS))
        self.transition = OnlineTransition(stability)
        self.schedule = GroupSchedule()
        self.newmail: set[str] = set()
        self.wakeup = asyncio.Event() if _has_loop() else None
        self.next_poll: dict[str, datetime] = {}
        self.iterations = 0  # daemon loop turns: an idle queue must not make this grow
        self.work_waiting = True  # the daemon's next turn runs a pass over the queue
        self.redo: set[str] = set()  # daemon steps a notification asked for, until done: mode, config, flush

    # State ------------------------------------------------------------------------------------
    @property
    def store(self) -> MessageStore:
        return self.core.store

    @property
    def mode(self) -> str:
        return self.core.profile.mode

    @property
    def offline(self) -> bool:
        return self.mode == "offline"

    def logon_flags(self, t: LoadedTransport) -> LogonFlags:
        """Offline transports make no connections, except those marked call_when_offline."""
        flags = LogonFlags.NO_DIALOG
        if self.offline and not t.service.call_when_offline and t.name not in self.flushing:
            flags |= LogonFlags.NO_CONNECT
        return flags

    def may_call(self, t: LoadedTransport) -> bool:
        """Whether the spooler may pass messages to this transport now."""
        return not self.offline or t.service.call_when_offline or t.name in self.flushing

    def may_receive(self, t: LoadedTransport) -> bool:
        return self.may_call(t)

    async def start(self) -> None:
        """Log on every transport with the flags its mode calls for (call_when_offline ones connect)."""
        table = self.core.transports
        table.listeners.append(self._transport_notified)
        await table.logon_all(self.logon_flags)
        table.remember_errors(row for name, row, _, _ in self.store.status_rows())
        now = self.core.clock()
        self.schedule.reset(load_groups(self.core.profile), self.mode, now)
        if not self.offline:
            # Messages parked while offline go out now that this session starts online (the
            # stability window only applies to a change of mode watched by a running spooler).
            try:
                self.store.wake(now, (WaitKind.SEND_RECEIVE,))
            except MAPIError as exc:
                if not store_unreachable(exc):
                    raise
                self.redo.add("flush")  # the daemon's first usable turn does it

    def _transport_notified(self, transport: str, flags: SpoolerNotifyFlags, data: Any) -> None:
        if flags & SpoolerNotifyFlags.NEWMAIL:
            self.newmail.add(transport)
        if flags & (SpoolerNotifyFlags.NEWMAIL | SpoolerNotifyFlags.READYTOSEND | SpoolerNotifyFlags.SENTDEFERRED):
            if flags & SpoolerNotifyFlags.SENTDEFERRED:
                self.store.wake(self.core.clock(), (WaitKind.DEFERRED,))
            if self.wakeup is not None:
                self.wakeup.set()

    async def set_mode(self, mode: str) -> None:
        """Go online or offline: persist, log transports on again with the right flags, tell others."""
        profile = self.core.profile
        profile.set_mode(mode)
        profile.save()
        await self.apply_mode(mode)
        self.store.bus.publish("mode", mode=mode)

    async def apply_mode(self, mode: str) -> None:
        self.core.profile.set_mode(mode)
        now = self.core.clock()
        self.transition.mode_changed(mode, now)
        self.schedule.reset(load_groups(self.core.profile), mode, now)
        for t in self.core.transports.transports:
            await self.core.transports.relogon(t, self.logon_flags(t))

    # Outbound ---------------------------------------------------------------------------------
    async def outbound_pass(self) -> PassSummary:
        return await self.core.spooler.process_due()

    # Inbound ----------------------------------------------------------------------------------
    async def receive(self, t: LoadedTransport) -> int:
        """StartMessage loop (§8.2): each saved message goes to the receive folder for its class."""
        if t.logon is None:
            return 0
        count = 0
        t.status.set(add=StatusCode.INBOUND_ACTIVE)
        try:
            while count < MAX_INBOUND_PER_RUN:
                message = InboundMessage(ref=count + 1)
                try:
                    await call_transport(t.logon.start_message, message)
                except Exception as exc:
                    t.status.failed(f"start_message raised {error_summary(exc)}")
                    log.warning("transport %s: start_message raised %s", t.name, error_summary(exc))
                    break
                if not message.saved:
                    break  # nothing (more) to deliver; an unsaved message is never stored
                self.deliver_inbound(message.data)
                count += 1
        finally:
            t.status.set(remove=StatusCode.INBOUND_ACTIVE)
        return count

    def deliver_inbound(self, data: MessageData) -> int:
        from .mapi import tags as T

        now = self.core.clock()
        data.props.setdefault(T.PR_MESSAGE_CLASS, "IPM.Note")
        data.props.setdefault(T.PR_MESSAGE_DELIVERY_TIME, now)
        data.props.setdefault(T.PR_MESSAGE_FLAGS, 0)
        for tag in (T.PR_ENTRYID, T.PR_SENTMAIL_ENTRYID, T.PR_DELETE_AFTER_SUBMIT, T.PR_SUBMIT_FLAGS):
            data.props.pop(tag, None)
        folder, _ = self.store.get_receive_folder(data.message_class)
        return self.store.deliver_message(folder, data, now)

    async def poll_due(self) -> int:
        """Poll transports that asked for it (LOGON_SP_POLL) whose interval is up; receive what waits."""
        from .mapi.flags import LogonResultFlags

        received = 0
        now = self.core.clock()
        for t in self.core.transports.transports:
            if t.logon is None or not self.may_receive(t):
                continue
            wants_poll = bool(t.logon.result_flags & LogonResultFlags.SP_POLL)
            if t.name in self.newmail:
                self.newmail.discard(t.name)
                received += await self.receive(t)
                continue
            if not wants_poll:
                continue
            due = self.next_poll.get(t.name)
            if due is not None and now < due:
                continue
            self.next_poll[t.name] = now + timedelta(seconds=t.service.poll_seconds)
            try:
                waiting = await call_transport(t.logon.poll)
            except Exception as exc:
                t.status.failed(f"poll raised {error_summary(exc)}")
                continue
            if waiting:
                received += await self.receive(t)
        return received

    # Send/Receive -------------------------------------------------------------------------------
    async def send_receive(
        self,
        group: str | None = None,
        *,
        upload: bool = True,
        download: bool = True,
        explicit: bool = True,
        progress: Progress | None = None,
        stop: asyncio.Event | None = None,
    ) -> SendReceiveSummary:
        """FlushQueues on the spooler's status row, for one group.

        An explicit Send/Receive works offline too: it connects the group's transports for the
        duration of the flush (that is the point of KB 317412's workaround). All of them are
        callable during one outbound pass, so a recipient one of them declines goes on to the
        next in transport order within the same Send/Receive.
        """
        profile = self.core.profile
        g = find_group(profile, group or DEFAULT_GROUP)
        settings = g.settings(self.mode)
        summary = SendReceiveSummary(g.name)
        if explicit and not settings.include:
            return summary
        table = self.core.transports
        members = [table.by_name(name) for name in g.members(profile)]
        await self._flush(members, summary, upload and settings.send, download and settings.receive, progress, stop)
        self.core.publish_status()
        return summary

    async def flush_transport(self, t: LoadedTransport, stop: asyncio.Event | None = None) -> SendReceiveSummary:
        """Upload-only flush of one transport, connecting it for the flush if offline."""
        summary = SendReceiveSummary(t.name)
        await self._flush([t], summary, True, False, None, stop)
        self.core.publish_status()
        return summary

    async def _flush(
        self,
        members: list[LoadedTransport],
        summary: SendReceiveSummary,
        upload: bool,
        download: bool,
        progress: Progress | None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Connect every member, run one outbound pass in which all of them may be called, then
        fetch from each, in transport order. Whatever happens, the members are disconnected
        again afterwards if the mode says so. Once `stop` is set nothing new starts."""
        flags = (FlushFlags.UPLOAD if upload else FlushFlags.NONE) | (
            FlushFlags.DOWNLOAD if download else FlushFlags.NONE
        )
        for t in members:
            summary.entry(t.name)
        if flags == FlushFlags.NONE:
            return
        table = self.core.transports
        ready: list[LoadedTransport] = []
        try:
            for t in members:
                if progress:
                    progress("start", t, "")
                self.flushing.add(t.name)
                await table.relogon(t, self.logon_flags(t))
                error = await self._begin_flush(t, flags)
                if error:
                    self.flushing.discard(t.name)
                    summary.entry(t.name).error = error
                    continue
                ready.append(t)
            if upload and ready:
                await self._upload(ready, summary, progress, stop)
            if download:
                for t in ready:
                    if stop is not None and stop.is_set():
                        break
                    await self._download(t, summary.entry(t.name), progress)
            for t in ready:
                if progress and not summary.entry(t.name).error:
                    progress("done", t, "")
        finally:
            for t in members:
                self.flushing.discard(t.name)
            for t in members:
                if t.logon is not None:  # a failed logon is not tried again on the way out
                    await table.relogon(t, self.logon_flags(t))

    async def _begin_flush(self, t: LoadedTransport, flags: FlushFlags) -> str:
        """FlushQueues on one transport; the error that keeps it out of this flush, or ""."""
        if t.logon is None:
            return t.status.last_error or "transport not logged on"
        try:
            await call_transport(t.logon.flush_queues, flags)
        except Exception as exc:
            error = f"flush_queues raised {error_summary(exc)}"
            t.status.failed(error)
            return error
        return ""

    async def _upload(
        self,
        ready: list[LoadedTransport],
        summary: SendReceiveSummary,
        progress: Progress | None,
        stop: asyncio.Event | None,
    ) -> None:
        errors_before = {t.name: t.status.last_error_time for t in ready}
        for t in ready:
            t.status.set(add=StatusCode.OUTBOUND_FLUSH)
            if progress:
                progress("send", t, "")
        try:
            self.store.wake_for([t.name for t in ready], self.core.clock())
            summary.absorb(await self.core.spooler.process_due(keep=False, stop=stop))
        finally:
            for t in ready:
                if t.logon is not None:
                    t.logon.transport_notify(NotifyFlags.END_OUTBOUND_FLUSH)
                t.status.set(remove=StatusCode.OUTBOUND_FLUSH)
        for t in ready:  # a transport that went into failure while sending (server down, misconfigured)
            if t.status.status_code & StatusCode.FAILURE and t.status.last_error_time != errors_before[t.name]:
                summary.entry(t.name).error = t.status.last_error

    async def _download(self, t: LoadedTransport, entry: TransportFlush, progress: Progress | None) -> None:
        assert t.logon is not None
        t.status.set(add=StatusCode.INBOUND_FLUSH)
        if progress:
            progress("receive", t, "")
        try:
            got = await self.receive_from(t)
            entry.received += got.received
            entry.error = entry.error or got.error
        finally:
            if t.logon is not None:
                t.logon.transport_notify(NotifyFlags.END_INBOUND_FLUSH)
            t.status.set(remove=StatusCode.INBOUND_FLUSH)

    async def receive_from(self, t: LoadedTransport) -> TransportFlush:
        """One receive run of a transport, and whether it could log on and fetch.

        Inbound transports report a failed connection, logon or fetch by setting FAILURE in their
        status row (and clear it on the next success), so that bit after the run is the answer.
        """
        out = TransportFlush(t.name)
        if t.logon is None:
            out.error = t.status.last_error or "transport not logged on"
            return out
        before = t.status.last_error_time
        out.received = await self.receive(t)
        if t.status.status_code & StatusCode.FAILURE and t.status.last_error_time != before:
            out.error = t.status.last_error or t.status.status_string or "failure"
        return out

    # The daemon ------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, *, on_pass: Callable[[PassSummary], None] | None = None) -> None:
        """The spooler daemon: outbound on notifications and due times, polling, schedules, mode changes."""
        self.wakeup = asyncio.Event()
        self.work_waiting = True
        listener: Listener | None = None
        try:  # the first turn publishes the status table (the store may not take writes yet)
            listener = await self._listen(stop)
            if listener is not None:
                await self._daemon_loop(stop, listener.attach(), on_pass)
        finally:
            if listener is not None:
                listener.close()
            await self.core.transports.end_traffic()

    async def _listen(self, stop: asyncio.Event) -> Listener | None:
        """The store's notifications. The store was opened a moment ago, so it cannot be reached
        now only for a while (PostgreSQL restarting): wait, as the loop waits out an outage,
        instead of ending a daemon that has started (None: stopped meanwhile)."""
        outage = StoreOutage()
        while not stop.is_set():
            try:
                listener = self.store.bus.listen()
            except MAPIError as exc:
                if not store_unreachable(exc):
                    raise
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), outage.failed(exc, time.monotonic()))
                continue
            outage.recovered(time.monotonic())
            return listener
        return None

    async def _daemon_loop(
        self, stop: asyncio.Event, queue: asyncio.Queue[Any], on_pass: Callable[[PassSummary], None] | None
    ) -> None:
        """Turn after turn until stopped; a turn cut short by a store outage is tried again, after backoff."""
        outage = StoreOutage()
        while not stop.is_set():
            self.iterations += 1
            try:
                await self._daemon_turn(stop, queue, on_pass)
                timeout = self._sleep_seconds(self.core.clock())
            except MAPIError as exc:
                if not store_unreachable(exc):
                    raise
                self.work_waiting = True  # once the store answers, look at the whole queue again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), outage.failed(exc, time.monotonic()))
                continue
            outage.recovered(time.monotonic())
            if not stop.is_set():
                await self._wait_for_work(stop, queue, timeout)

    async def _daemon_turn(
        self, stop: asyncio.Event, queue: asyncio.Queue[Any], on_pass: Callable[[PassSummary], None] | None
    ) -> None:
        """Notifications, due messages, polls and schedules, once.

        What a notification asks for is remembered in `self.redo` until it is done, so a store
        outage in the middle of a turn does not lose a mode change or a configuration reload.
        """
        now = self.core.clock()
        self.store.check_file()  # deleted or replaced under us: stop, rather than write into a lost file
        while not queue.empty():
            note = queue.get_nowait()
            if note.kind in ("mode", "config"):
                self.redo.add(note.kind)
            self.work_waiting = True
        if "mode" in self.redo:
            fresh = self.core.profile.reload()
            if fresh.mode != self.mode:
                await self.apply_mode(fresh.mode)
            self.redo.discard("mode")
        if "config" in self.redo:
            # Services, transport order or groups changed: log on again with the new profile.
            await self.core.reload_configuration()
            self.core.publish_status()
            self.redo.discard("config")
        if self.transition.due(now):
            self.redo.add("flush")
        if "flush" in self.redo:
            self.store.wake(now, (WaitKind.SEND_RECEIVE,))
            self.redo.discard("flush")
            self.work_waiting = True
        due = self.store.next_due()
        probe = self.core.spooler.processor.next_probe()
        if self.work_waiting or (due is not None and due <= now) or (probe is not None and probe <= now):
            self.work_waiting = False
            summary = PassSummary()
            try:
                await self.core.spooler.process_due(stop=stop, keep=False, summary=summary, max_seconds=PASS_SECONDS)
            finally:  # a pass cut short by a store outage still counts what it delivered
                if on_pass and summary.processed:
                    on_pass(summary)
            if summary.cut_short:  # a long backlog: notifications, polls and schedules get their turn first
                self.work_waiting = True
            self.core.publish_status()
        await self.poll_due()
        for g in self.schedule.due(load_groups(self.core.profile), self.mode, now):
            try:
                await self.send_receive(g.name, explicit=False)
            except MAPIError as exc:
                if store_unreachable(exc):
                    raise
                log.warning("scheduled Send/Receive of group %s failed: %s", g.name, exc.message)

    async def _wait_for_work(self, stop: asyncio.Event, queue: asyncio.Queue[Any], timeout: float) -> None:
        """Sleep until a notification, a transport's wake-up, the stop, or `timeout` seconds."""
        assert self.wakeup is not None
        wait_note = asyncio.ensure_future(queue.get())
        wait_wake = asyncio.ensure_future(self.wakeup.wait())
        wait_stop = asyncio.ensure_future(stop.wait())
        done, pending = await asyncio.wait(
            {wait_note, wait_wake, wait_stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for f in pending:
            f.cancel()
        if wait_note in done:
            queue.put_nowait(wait_note.result())
        if wait_wake in done:
            self.wakeup.clear()
            self.work_waiting = True

    def _sleep_seconds(self, now: datetime) -> float:
        candidates = [SAFETY_SCAN_SECONDS]
        due = self.store.next_due()
        if due is not None:
            candidates.append((due - now).total_seconds())
        if self.transition.flush_at is not None:
            candidates.append((self.transition.flush_at - now).total_seconds())
        probe = self.core.spooler.processor.next_probe()
        if probe is not None:  # a paused transport's rest ends: one parked message probes it
            candidates.append(max(1.0, (probe - now).total_seconds()))
        nxt = self.schedule.next_time()
        if nxt is not None:
            candidates.append((nxt - now).total_seconds())
        for t in self.core.transports.transports:
            if t.name in self.newmail:
                candidates.append(0.0)
            at = self.next_poll.get(t.name)
            if at is not None:
                candidates.append((at - now).total_seconds())
        return max(0.0, min(candidates))


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
