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
it runs. Send/Receive *groups* (groups.py) choose which transports take part, and whether
they send, receive, or both, with separate settings for online and offline, plus an optional
schedule.

The protocol manager is the only writer of the mode, and it owns when the transports are
logged on: at the first use, again after a change of the profile, after ValidateState. The
spooler daemon (daemon.py) drives it turn after turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from ..mapi import tags as T
from ..mapi.codes import StoreUnavailable
from ..mapi.flags import FlushFlags, LogonFlags, LogonResultFlags, NotifyFlags, SpoolerNotifyFlags, StatusCode
from ..mapi.message import MessageData
from ..profile import Mode
from ..spooler import LoadedTransport
from ..spooler.transports import call_transport, error_summary
from ..store import MessageStore, WaitKind
from ..store.notify import NoteKind
from ..transports.spi import InboundMessage
from .groups import DEFAULT_GROUP, GroupSchedule, find_group, load_groups
from .results import Received, SendReceiveSummary, TransportFlush
from .runtime import Runtime, online_stability_seconds

log = logging.getLogger("postroom.protocol")

MAX_INBOUND_PER_RUN = 10_000


class Redo(StrEnum):
    """A step the spooler daemon owes until it has done it (a store outage must not lose one)."""

    MODE = "mode"  # another process changed the mode: take it
    CONFIG = "config"  # another process changed the profile: log on again with it
    FLUSH = "flush"  # wake what waits for Send/Receive (online again, after the stability window)
    ROUTING = "routing"  # move waiting recipients to the transports a new routing gives them


Progress = Callable[[str, LoadedTransport, str], None]


class OnlineTransition:
    """Flush the Outbox once the connection has been up for `stability` seconds."""

    def __init__(self, stability_seconds: float) -> None:
        self.stability = timedelta(seconds=stability_seconds)
        self.flush_at: datetime | None = None

    def mode_changed(self, mode: Mode, now: datetime) -> None:
        self.flush_at = now + self.stability if mode == Mode.ONLINE else None

    def due(self, now: datetime) -> bool:
        """True once, when the window has passed without going offline again."""
        if self.flush_at is not None and now >= self.flush_at:
            self.flush_at = None
            return True
        return False


class ProtocolManager:
    """Owns when the runtime's transports are logged on, called, flushed and polled, and the mode."""

    def __init__(self, runtime: Runtime, stability_seconds: float | None = None) -> None:
        self.runtime = runtime
        stability = stability_seconds
        if stability is None:
            stability = online_stability_seconds(runtime.profile)
        self.transition = OnlineTransition(stability)
        self.schedule = GroupSchedule()
        self.newmail: set[str] = set()  # transports that said NEWMAIL: received from at the next turn
        self.wakeup = asyncio.Event()  # a transport asked for the daemon's attention
        self.next_poll: dict[str, datetime] = {}
        self.redo: set[Redo] = set()  # what the daemon owes (`start` may add a flush it could not do)

    # State ------------------------------------------------------------------------------------
    @property
    def store(self) -> MessageStore:
        return self.runtime.store

    @property
    def mode(self) -> Mode:
        return self.runtime.mode

    @property
    def offline(self) -> bool:
        return self.runtime.offline

    def logon_flags(self, t: LoadedTransport) -> LogonFlags:
        return self.runtime.logon_flags(t)

    def may_call(self, t: LoadedTransport) -> bool:
        return self.runtime.may_call(t)

    def may_receive(self, t: LoadedTransport) -> bool:
        return self.runtime.may_call(t)

    # Logon ------------------------------------------------------------------------------------
    async def ensure_logged_on(self) -> None:
        """Log the transports on at the first use, and again when the profile changed."""
        runtime = self.runtime
        runtime.check_open()
        if runtime.transports.logged_on and not runtime.needs_relogon:
            return
        if runtime.transports.logged_on:
            await runtime.transports.logoff_all()
        runtime.renew()
        runtime.needs_relogon = False
        await self.start()

    async def start(self) -> None:
        """Log on every transport with the flags its mode calls for (call_when_offline ones connect)."""
        table = self.runtime.transports
        table.listeners.append(self._transport_notified)
        await table.logon_all(self.logon_flags)
        table.remember_errors(row for name, row, _, _ in self.store.status_rows())
        try:
            self.runtime.place_waiting()  # the routing may have changed since recipients began to wait
        except StoreUnavailable:
            self.redo.add(Redo.ROUTING)  # the daemon's first usable turn does it
        now = self.runtime.clock()
        self.schedule.reset(load_groups(self.runtime.profile), self.mode, now)
        if not self.offline:
            # Messages parked while offline go out now that this session starts online (the
            # stability window only applies to a change of mode watched by a running spooler).
            try:
                self.store.wake(now, (WaitKind.SEND_RECEIVE,))
            except StoreUnavailable:
                self.redo.add(Redo.FLUSH)  # the daemon's first usable turn does it

    async def reload_configuration(self) -> None:
        """Re-read the profile (another process changed it) and log on again."""
        self.runtime.profile = self.runtime.profile.reload()
        self.runtime.needs_relogon = True
        await self.ensure_logged_on()

    async def validate_state(self) -> None:
        """ValidateState on the spooler's row: log on again, re-read every registration."""
        self.runtime.needs_relogon = True
        self.runtime.profile = self.runtime.profile.reload()
        await self.ensure_logged_on()

    def configuration_changed(self) -> None:
        """The profile was saved: the next use logs on again with it, and so does a running spooler
        daemon. Messages that wait for a misconfigured transport are looked at again at once."""
        self.runtime.needs_relogon = True
        self.store.wake(self.runtime.clock(), (WaitKind.UNCONFIGURED,))
        self.store.bus.publish(NoteKind.CONFIG)

    def _transport_notified(self, transport: str, flags: SpoolerNotifyFlags, data: Any) -> None:
        if flags & SpoolerNotifyFlags.NEWMAIL:
            self.newmail.add(transport)
        if flags & (SpoolerNotifyFlags.NEWMAIL | SpoolerNotifyFlags.READYTOSEND | SpoolerNotifyFlags.SENTDEFERRED):
            if flags & SpoolerNotifyFlags.SENTDEFERRED:
                self.store.wake(self.runtime.clock(), (WaitKind.DEFERRED,))
            self.wakeup.set()

    # The mode ---------------------------------------------------------------------------------
    async def set_mode(self, mode: Mode) -> None:
        """Go online or offline: persist, log transports on again with the right flags (when they
        are logged on), tell others (a running spooler daemon follows)."""
        profile = self.runtime.profile
        profile.set_mode(mode)
        profile.save()
        if self.runtime.transports.logged_on:
            await self.apply_mode(mode)
        self.store.bus.publish(NoteKind.MODE, mode=mode)

    async def apply_mode(self, mode: Mode) -> None:
        """Take a mode another process set (or this one): flags, the stability window, schedules."""
        log.info("mode: %s", mode)
        self.runtime.profile.set_mode(mode)
        now = self.runtime.clock()
        self.transition.mode_changed(mode, now)
        self.schedule.reset(load_groups(self.runtime.profile), mode, now)
        for t in self.runtime.transports.transports:
            await self.runtime.transports.relogon(t, self.logon_flags(t))

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
        now = self.runtime.clock()
        data.props.setdefault(T.PR_MESSAGE_CLASS, "IPM.Note")
        data.props.setdefault(T.PR_MESSAGE_DELIVERY_TIME, now)
        data.props.setdefault(T.PR_MESSAGE_FLAGS, 0)
        for tag in (T.PR_ENTRYID, T.PR_SENTMAIL_ENTRYID, T.PR_DELETE_AFTER_SUBMIT, T.PR_SUBMIT_FLAGS):
            data.props.pop(tag, None)
        folder, _ = self.store.get_receive_folder(data.message_class)
        return self.store.deliver_message(folder, data, now)

    async def poll_due(self) -> int:
        """Poll transports that asked for it (LOGON_SP_POLL) whose interval is up; receive what waits."""
        received = 0
        now = self.runtime.clock()
        for t in self.runtime.transports.transports:
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
                log.warning("transport %s: poll raised %s", t.name, error_summary(exc))
                continue
            got = await self.receive(t) if waiting else 0
            received += got
            log.info("transport %s: polled, %d message(s) received", t.name, got)
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
        max_seconds: float | None = None,
    ) -> SendReceiveSummary:
        """FlushQueues on the spooler's status row, for one group.

        An explicit Send/Receive works offline too: it connects the group's transports for the
        duration of the flush (that is the point of KB 317412's workaround). All of them are
        callable during one outbound pass, so a recipient one of them declines goes on to the
        next in transport order within the same Send/Receive. A scheduled one (`explicit=False`)
        leaves messages that wait for a retry alone (their backoff holds), and its outbound pass
        takes no new message after `max_seconds`.
        """
        profile = self.runtime.profile
        g = find_group(profile, group or DEFAULT_GROUP)
        settings = g.settings(self.mode)
        summary = SendReceiveSummary(g.name)
        if explicit and not settings.include:
            return summary
        table = self.runtime.transports
        members = [table.by_name(name) for name in g.members(profile)]
        upload, download = upload and settings.send, download and settings.receive
        await self._flush(members, summary, upload, download, progress, stop, retries=explicit, max_seconds=max_seconds)
        self.runtime.publish_status()
        return summary

    async def flush_transport(self, t: LoadedTransport, stop: asyncio.Event | None = None) -> SendReceiveSummary:
        """Upload-only flush of one transport, connecting it for the flush if offline."""
        summary = SendReceiveSummary(t.name)
        await self._flush([t], summary, True, False, None, stop)
        self.runtime.publish_status()
        return summary

    async def _flush(
        self,
        members: list[LoadedTransport],
        summary: SendReceiveSummary,
        upload: bool,
        download: bool,
        progress: Progress | None,
        stop: asyncio.Event | None = None,
        *,
        retries: bool = True,
        max_seconds: float | None = None,
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
        table = self.runtime.transports
        ready: list[LoadedTransport] = []
        try:
            for t in members:
                if progress:
                    progress("start", t, "")
                self.runtime.flushing.add(t.name)
                await table.relogon(t, self.logon_flags(t))
                error = await self._begin_flush(t, flags)
                if error:
                    self.runtime.flushing.discard(t.name)
                    summary.entry(t.name).error = error
                    continue
                ready.append(t)
            if upload and ready:
                await self._upload(ready, summary, progress, stop, retries, max_seconds)
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
                self.runtime.flushing.discard(t.name)
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
        retries: bool = True,
        max_seconds: float | None = None,
    ) -> None:
        errors_before = {t.name: t.status.last_error_time for t in ready}
        for t in ready:
            t.status.set(add=StatusCode.OUTBOUND_FLUSH)
            if progress:
                progress("send", t, "")
        try:
            known = [s.name for s in self.runtime.profile.services]
            self.store.wake_for([t.name for t in ready], self.runtime.clock(), known, retries=retries)
            summary.absorb(await self.runtime.spooler.process_due(keep=False, stop=stop, max_seconds=max_seconds))
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

    async def receive_all(self) -> Received:
        """Run the inbound side once: fetch what waits from every transport that may be called now.

        A transport that could not log on, connect or fetch is named in the result's `errors`.
        """
        total = 0
        errors: list[str] = []
        for t in self.runtime.transports.transports:
            if not self.may_receive(t) or (t.logon is None and not t.receives):
                continue
            got = await self.receive_from(t)
            total += got.received
            if got.error:
                errors.append(f"{t.name}: {got.error}")
        return Received(total, errors)
