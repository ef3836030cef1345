"""What runs around a long-running postroom: the SMTP submission listener, systemd's notifications
(READY=1, WATCHDOG=1, RELOADING=1 on SIGHUP) and the reload of the profile on SIGHUP.

The spooler daemon (`postroom spooler`, optionally `--smtp`) and the listener alone
(`postroom serve smtp`) both run inside `Serving.running`, so both tell systemd the same things.
A SIGHUP in the daemon becomes the same "the profile changed" step a `postroom service set` from
another process causes (protocol.Redo.CONFIG), done at the daemon's next turn and never in the
middle of a pass; READY=1 follows once it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..mapi.message import MessageData
from . import sdnotify
from .listener_settings import ListenerSettings
from .protocol import ProtocolManager, Redo

if TYPE_CHECKING:
    from .listener import SubmissionListener

log = logging.getLogger("postroom.daemon")


@dataclass
class Serving:
    """The listener to run (if any), what submission adds to each message, and who wants to know
    the ports once it listens (tests listen on port 0)."""

    listener: ListenerSettings | None = None
    prepare: Callable[[MessageData], None] = lambda message: None
    on_listening: Callable[[list[int]], None] | None = None
    daemon: bool = True  # a spooler daemon runs too: it does the reload at its next turn
    started: SubmissionListener | None = field(default=None, init=False)

    @contextlib.asynccontextmanager
    async def running(self, protocol: ProtocolManager, stop: asyncio.Event) -> AsyncIterator[None]:
        if self.listener is not None:
            from .listener import SubmissionListener  # start-up: aiosmtpd only where a listener runs

            self.started = SubmissionListener(protocol, self.listener, self.prepare)
            await self.started.start()
            if self.on_listening is not None:
                self.on_listening(self.started.ports)
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        hup = threading.current_thread() is threading.main_thread()
        if hup:
            loop.add_signal_handler(signal.SIGHUP, lambda: _spawn(tasks, self._reload(protocol)))
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            _spawn(tasks, _watchdog(interval, stop))
        sdnotify.notify("READY=1", f"STATUS={self._status()}")
        try:
            yield
        finally:
            sdnotify.notify("STOPPING=1")
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.started is not None:
                await self.started.close()

    def _status(self) -> str:
        what = "spooler running" if self.daemon else "listener running"
        if self.started is not None:
            listen = zip(self.started.settings.listen, self.started.ports, strict=False)
            what += "; SMTP on " + ", ".join(f"{host}:{port}" for (host, _), port in listen)
        return what

    async def _reload(self, protocol: ProtocolManager) -> None:
        """SIGHUP: re-read the profile (services, order, listener users) and log on again."""
        sdnotify.reloading()
        log.info("SIGHUP: reloading the profile")
        if self.daemon:
            protocol.redo.add(Redo.CONFIG)
            protocol.redo.add(Redo.MODE)
            if protocol.wakeup is not None:
                protocol.wakeup.set()
            while Redo.CONFIG in protocol.redo or Redo.MODE in protocol.redo:
                await asyncio.sleep(0.05)
        else:
            await protocol.reload_configuration()
        sdnotify.notify("READY=1", f"STATUS={self._status()}")
        log.info("profile reloaded")


def _spawn(tasks: set[asyncio.Task[None]], coro: object) -> None:
    assert asyncio.iscoroutine(coro)
    task: asyncio.Task[None] = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _watchdog(interval: float, stop: asyncio.Event) -> None:
    """WATCHDOG=1 every `interval` seconds while the event loop runs: a loop blocked for longer
    (a hung store call) misses its pings and systemd restarts the service."""
    while not stop.is_set():
        sdnotify.notify("WATCHDOG=1")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
