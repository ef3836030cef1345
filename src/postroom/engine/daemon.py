"""The spooler daemon: one loop that drives the protocol manager until it is stopped, and what the
loop needs around it (its start while the store's disk is in trouble).

Each turn reads the store's notifications (a submitted message, a change of mode or of the
profile), runs a pass over what is due, polls the transports that asked for it and runs the
Send/Receive groups' schedules; then it sleeps until the next notification, a transport's wake-up
or the next due time. A store outage (spooler/outage.py) cuts a turn short: the daemon waits with
backoff and tries the turn again, and loses nothing meanwhile, because every claim and outcome is
in the store. The daemon's pid file is pidfile.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from ..mapi.codes import MAPIError, StoreDiskTrouble, StoreUnavailable
from ..spooler import PassSummary
from ..spooler.outage import StoreOutage
from ..store import WaitKind
from ..store.notify import Listener, NoteKind
from .groups import load_groups
from .protocol import ProtocolManager, Redo

log = logging.getLogger("postroom.protocol")

SAFETY_SCAN_SECONDS = 30.0
#: A daemon pass takes no new message after this long, so mode and configuration changes,
#: inbound polls and schedules are seen within seconds while a long backlog drains.
PASS_SECONDS = 5.0

T = TypeVar("T")


def open_when_usable(opener: Callable[[], T], stop: asyncio.Event) -> T | None:
    """`opener()` (a logon), once the store can be opened: a full or failing disk at start-up is
    waited out as it is while running (None: stopped meanwhile). A database that cannot be reached
    at start is still an error at once: most likely a wrong URL, which waiting would only hide."""
    outage = StoreOutage()
    while True:
        try:
            return opener()
        except StoreDiskTrouble as exc:
            deadline = time.monotonic() + outage.failed(exc, time.monotonic())
            while time.monotonic() < deadline:
                if stop.is_set():
                    return None
                time.sleep(0.1)


class Daemon:
    """The daemon loop over one protocol manager (and so one runtime)."""

    def __init__(self, protocol: ProtocolManager) -> None:
        self.protocol = protocol
        self.runtime = protocol.runtime
        self.iterations = 0  # turns of the loop: an idle queue must not make this grow
        self.work_waiting = True  # the next turn runs a pass over the queue

    async def run(self, stop: asyncio.Event, *, on_pass: Callable[[PassSummary], None] | None = None) -> None:
        """Turn after turn until `stop` is set: outbound on notifications and due times, polling,
        schedules, mode changes. A store outage is waited out with backoff."""
        self.protocol.wakeup = asyncio.Event()
        self.work_waiting = True
        listener: Listener | None = None
        try:  # the first turn publishes the status table (the store may not take writes yet)
            listener = await self._listen(stop)
            if listener is not None:
                await self._daemon_loop(stop, listener.attach(), on_pass)
        finally:
            if listener is not None:
                listener.close()
            await self.runtime.transports.end_traffic()

    async def _listen(self, stop: asyncio.Event) -> Listener | None:
        """The store's notifications. The store was opened a moment ago, so it cannot be reached
        now only for a while (PostgreSQL restarting): wait, as the loop waits out an outage,
        instead of ending a daemon that has started (None: stopped meanwhile)."""
        outage = StoreOutage()
        while not stop.is_set():
            try:
                listener = self.runtime.store.bus.listen()
            except StoreUnavailable as exc:
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
                timeout = self._sleep_seconds(self.runtime.clock())
            except StoreUnavailable as exc:
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

        What a notification asks for is remembered in the protocol manager's `redo` until it is done,
        so a store outage in the middle of a turn does not lose a mode change or a configuration reload.
        """
        now = self.runtime.clock()
        self.runtime.store.check_file()  # deleted or replaced under us: stop, rather than write into a lost file
        while not queue.empty():
            note = queue.get_nowait()
            if note.kind in (NoteKind.MODE, NoteKind.CONFIG):
                self.protocol.redo.add(Redo(note.kind))
            self.work_waiting = True
        if Redo.MODE in self.protocol.redo:
            fresh = self.runtime.profile.reload()
            if fresh.mode != self.protocol.mode:
                await self.protocol.apply_mode(fresh.mode)
            self.protocol.redo.discard(Redo.MODE)
        if Redo.CONFIG in self.protocol.redo:
            # Services, transport order or groups changed: log on again with the new profile.
            await self.protocol.reload_configuration()
            self.runtime.publish_status()
            self.protocol.redo.discard(Redo.CONFIG)
        if Redo.ROUTING in self.protocol.redo:
            self.runtime.place_waiting()
            self.protocol.redo.discard(Redo.ROUTING)
        if self.protocol.transition.due(now):
            self.protocol.redo.add(Redo.FLUSH)
        if Redo.FLUSH in self.protocol.redo:
            self.runtime.store.wake(now, (WaitKind.SEND_RECEIVE,))
            self.protocol.redo.discard(Redo.FLUSH)
            self.work_waiting = True
        due = self.runtime.store.next_due()
        probe = self.runtime.spooler.processor.next_probe()
        if self.work_waiting or (due is not None and due <= now) or (probe is not None and probe <= now):
            self.work_waiting = False
            summary = PassSummary()
            try:
                await self.runtime.spooler.process_due(stop=stop, keep=False, summary=summary, max_seconds=PASS_SECONDS)
            finally:  # a pass cut short by a store outage still counts what it delivered
                if on_pass and summary.processed:
                    on_pass(summary)
            if summary.cut_short:  # a long backlog: notifications, polls and schedules get their turn first
                self.work_waiting = True
            self.runtime.publish_status()
        await self.protocol.poll_due()
        for g in self.protocol.schedule.due(load_groups(self.runtime.profile), self.protocol.mode, now):
            try:
                await self.protocol.send_receive(g.name, explicit=False, stop=stop, max_seconds=PASS_SECONDS)
                self.work_waiting = True  # what its bounded pass left is the next turn's
            except StoreUnavailable:
                raise
            except MAPIError as exc:
                log.warning("scheduled Send/Receive of group %s failed: %s", g.name, exc.message)

    async def _wait_for_work(self, stop: asyncio.Event, queue: asyncio.Queue[Any], timeout: float) -> None:
        """Sleep until a notification, a transport's wake-up, the stop, or `timeout` seconds."""
        assert self.protocol.wakeup is not None
        wait_note = asyncio.ensure_future(queue.get())
        wait_wake = asyncio.ensure_future(self.protocol.wakeup.wait())
        wait_stop = asyncio.ensure_future(stop.wait())
        done, pending = await asyncio.wait(
            {wait_note, wait_wake, wait_stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for f in pending:
            f.cancel()
        if wait_note in done:
            queue.put_nowait(wait_note.result())
        if wait_wake in done:
            self.protocol.wakeup.clear()
            self.work_waiting = True

    def _sleep_seconds(self, now: datetime) -> float:
        candidates = [SAFETY_SCAN_SECONDS]
        due = self.runtime.store.next_due()
        if due is not None:
            candidates.append((due - now).total_seconds())
        if self.protocol.transition.flush_at is not None:
            candidates.append((self.protocol.transition.flush_at - now).total_seconds())
        probe = self.runtime.spooler.processor.next_probe()
        if probe is not None:  # a paused transport's rest ends: one parked message probes it
            candidates.append(max(1.0, (probe - now).total_seconds()))
        nxt = self.protocol.schedule.next_time()
        if nxt is not None:
            candidates.append((nxt - now).total_seconds())
        for t in self.runtime.transports.transports:
            if t.name in self.protocol.newmail:
                candidates.append(0.0)
            at = self.protocol.next_poll.get(t.name)
            if at is not None:
                candidates.append((at - now).total_seconds())
        return max(0.0, min(candidates))
