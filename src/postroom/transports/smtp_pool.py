"""The `smtp` transport's connections: a pool per logon, apart from the protocol that uses them.

As Postfix keeps its connection cache (`smtp_reuse.c`) apart from the SMTP protocol engine, this
module owns only when a connection is opened, reused, handed over, closed and given back; what is
said on a connection is `smtp.py`'s. A connection is opened by the logon's `opener` (connect,
EHLO, AUTH) and lives here until it is closed.

`limit` is the limit for the whole profile, not per process: each connection holds one of the
transport's connection slots in the message store, so every spooler process on the store together
opens at most that many. The slots are shared fairly: while another process waits, none takes
more than its share (the limit divided by the processes that want connections), and one holding
more closes a connection when it is next free. A message that finds no slot waits up to
`SLOT_WAIT_SECONDS` for one, or for a connection of its own process to become free (first come,
first served); then `NoSlot` says so and the message waits. A connection idle for `IDLE_SECONDS`
is closed, as Postfix's connection cache does, so its slot is free for another process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..mapi.codes import MAPIError
from .smtp_client import SMTPClient
from .spi import TransportSupport

QUIT_TIMEOUT = 5.0
#: An idle pooled connection is closed after this long (Postfix: smtp_connection_cache_time_limit).
IDLE_SECONDS = 2.0
#: How long a message waits in this process for a connection slot another process holds.
SLOT_WAIT_SECONDS = 10.0


class NoSlot(Exception):
    """Every connection slot is held (by other spooler processes): not an error, the message waits."""


@dataclass(eq=False)  # compared and hashed by identity: kept in a set
class Connection:
    smtp: SMTPClient
    release_slot: Callable[[], None] = lambda: None  # gives the connection slot back, once
    messages: int = 0
    reused: bool = False
    broken: bool = False
    idle_since: float = 0.0

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.smtp.close()
        release, self.release_slot = self.release_slot, lambda: None
        release()

    async def quit(self) -> None:
        try:
            if self.smtp.is_connected:
                await self.smtp.quit(timeout=QUIT_TIMEOUT)
        except Exception:  # QUIT is a courtesy: any error just closes the socket
            pass
        finally:
            self.abort()


class ConnectionPool:
    """The connections of one logon to one server, bound to one event loop at a time.

    `opener` opens a connection ready for a transaction (or raises); `support` is the logon's
    way to the connection slots in the store; `where` names the server in messages.
    """

    def __init__(
        self,
        *,
        limit: int,
        max_messages: int,
        where: str,
        opener: Callable[[], Awaitable[SMTPClient]],
        support: Callable[[], TransportSupport],
    ) -> None:
        self.limit = limit
        self.max_messages = max_messages
        self.where = where
        self._opener = opener
        self._support = support
        # The pool belongs to one event loop: created on first use, replaced if the loop changes.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.in_use: asyncio.Semaphore | None = None  # at most `limit` messages of this process at once
        self._idle: list[Connection] = []
        self._waiters: collections.deque[asyncio.Future[Connection]] = collections.deque()
        self._open: set[Connection] = set()
        self._reaper: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0  # connections opened so far

    def bind_loop(self) -> asyncio.Semaphore:
        """The pool on the running event loop (connections of another loop are dropped); returns
        the semaphore that lets at most `limit` messages of this process use it at once."""
        loop = asyncio.get_running_loop()
        if loop is self.loop and self.in_use is not None:
            return self.in_use
        for conn in list(self._open):
            conn.abort()
        self._open.clear()
        self._idle.clear()
        self._waiters.clear()
        self._stop_reaper()
        self.loop = loop
        self.in_use = asyncio.Semaphore(self.limit)
        return self.in_use

    async def checkout(self, *, fresh: bool = False) -> Connection:
        """A free connection of this process, or a new one in a free connection slot.

        Waits up to SLOT_WAIT_SECONDS, first come first served: a connection checked in while
        tasks wait goes to the one that waited longest, and the wait is announced so that other
        processes give back what they hold beyond their fair share."""
        if not fresh and not self._waiters and (conn := self._take_idle()) is not None:
            return conn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SLOT_WAIT_SECONDS
        pause = 0.02
        support = self._support()
        announced = False
        try:
            while True:
                release = self._try_slot()
                if release is not None:
                    return await self._connect(release)
                if loop.time() >= deadline:
                    raise NoSlot(self._no_slot_text())
                if not announced:
                    support.wait_for_connection_slot(True)
                    announced = True
                handed = await self._wait_for_checkin(pause)
                if handed is not None:
                    return handed
                pause = min(pause * 2, 0.25)
        finally:
            if announced:
                support.wait_for_connection_slot(False)

    async def checkin(self, conn: Connection) -> None:
        """A connection back from a transaction: kept, handed over, or closed."""
        if conn.broken or not conn.smtp.is_connected:
            self._drop(conn)
        elif conn.messages >= self.max_messages or self._gives_back():
            self._open.discard(conn)
            await conn.quit()
        elif not self._hand_over(conn):
            self._park(conn)

    async def close_all(self) -> None:
        """QUIT the idle connections; close the sockets of those in use."""
        self._stop_reaper()
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open.discard(conn)
            await conn.quit()
        for conn in list(self._open):  # in use elsewhere: just close the socket
            self._drop(conn)

    def abort_all(self) -> None:
        """Close every socket at once (off the pool's event loop, where nothing can be awaited)."""
        self._stop_reaper()
        for conn in list(self._open):
            self._drop(conn)
        self._idle.clear()

    def _take_idle(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.smtp.is_connected:
                conn.reused = True
                return conn
            self._drop(conn)
        return None

    async def _wait_for_checkin(self, seconds: float) -> Connection | None:
        """Wait in line for a connection another task checks in; None after `seconds`."""
        future: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await asyncio.wait((future,), timeout=seconds)
        except BaseException:  # cancelled: a connection handed over meanwhile goes back to the pool
            self._leave_line(future)
            raise
        if not future.done():
            self._leave_line(future)
            return None
        conn = future.result()
        conn.reused = True
        return conn

    def _leave_line(self, future: asyncio.Future[Connection]) -> None:
        if future.done():
            self._park(future.result())
        else:
            self._waiters.remove(future)
            future.cancel()

    def _hand_over(self, conn: Connection) -> bool:
        """Give a checked-in connection to the task that has waited longest, if any."""
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(conn)
                return True
        return False

    def _try_slot(self) -> Callable[[], None] | None:
        """One of the transport's connection slots (shared by every spooler process), or None."""
        support = self._support()
        try:
            slot = support.acquire_connection_slot(self.limit)
        except MAPIError as exc:  # the store cannot say: wait as for a busy slot
            raise NoSlot(f"cannot take a connection slot: {exc.message}") from None
        if slot is None:
            return None
        return lambda: support.release_connection_slot(slot)

    def _no_slot_text(self) -> str:
        limit, where, mine = self.limit, self.where, len(self._open)
        if not mine:
            return f"all {limit} connection(s) to {where} are in use by other spooler processes"
        return (
            f"all {limit} connection(s) to {where} are in use: {mine} by this spooler process "
            "(its fair share while others wait), the rest by other spooler processes"
        )

    def _gives_back(self) -> bool:
        """Another process waits for a connection slot and this one holds more than its share."""
        try:
            return self._support().should_give_back_connection_slot(self.limit)
        except MAPIError:
            return False

    def _park(self, conn: Connection) -> None:
        """Keep a free connection for the next message; the reaper closes it after IDLE_SECONDS."""
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._reap_idle)

    def _reap_idle(self) -> None:
        """Close connections idle for IDLE_SECONDS: their slots may be wanted by another process."""
        self._reaper = None
        if self.loop is None or self.loop.is_closed():
            return
        now = self.loop.time()
        stale = [c for c in self._idle if now - c.idle_since >= IDLE_SECONDS]
        for conn in stale:
            self._idle.remove(conn)
            self._open.discard(conn)
            task = self.loop.create_task(conn.quit())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if self._idle:
            first = min(c.idle_since for c in self._idle)
            self._reaper = self.loop.call_later(max(0.05, first + IDLE_SECONDS - now), self._reap_idle)

    def _drop(self, conn: Connection) -> None:
        self._open.discard(conn)
        conn.abort()

    async def _connect(self, release: Callable[[], None]) -> Connection:
        """Open a connection in the slot that `release` gives back."""
        try:
            smtp = await self._opener()
        except BaseException:
            release()
            raise
        conn = Connection(smtp, release_slot=release)
        self._open.add(conn)
        self.opened += 1
        return conn

    def _stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
