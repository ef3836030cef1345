"""Which event loop the spooler daemon runs on: uvloop when it is installed, plain asyncio otherwise.

The daemon is CPU-bound on one core (issue 17), and a large part of a delivery's CPU is the event
loop itself: reading replies, waking futures, timers. uvloop (libuv, in C) does that work for
less; benchmarks/smtp_client.py measures the difference on the SMTP send path (README, "A faster
SMTP path"). It is optional: `pip install 'postroom[fast]'` brings it, and without it nothing
changes. Only the daemon's session asks for it (`logon_when_usable`): a short command gains
nothing and would pay for importing it.

`POSTROOM_EVENT_LOOP=asyncio` keeps the daemon on plain asyncio with uvloop installed (to rule it
out while chasing a problem); `uvloop` insists on it (an error when it is not installed).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable
from enum import StrEnum

from ..mapi.codes import HResult, MAPIError

ENV = "POSTROOM_EVENT_LOOP"


class EventLoopKind(StrEnum):
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


def daemon_loop_kind() -> EventLoopKind:
    """The loop the daemon should run on: POSTROOM_EVENT_LOOP when set, else uvloop if installed."""
    wanted = os.environ.get(ENV, "").strip().lower()
    installed = importlib.util.find_spec("uvloop") is not None
    if wanted == EventLoopKind.ASYNCIO:
        return EventLoopKind.ASYNCIO
    if wanted == EventLoopKind.UVLOOP and not installed:
        raise MAPIError(
            HResult.MAPI_E_NO_SUPPORT,
            f"{ENV}=uvloop, but uvloop is not installed (pip install 'postroom[fast]')",
        )
    if wanted not in ("", EventLoopKind.UVLOOP):
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"{ENV} must be 'asyncio' or 'uvloop', not {wanted!r}")
    return EventLoopKind.UVLOOP if installed else EventLoopKind.ASYNCIO


def loop_factory(kind: EventLoopKind) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What asyncio.Runner(loop_factory=…) takes for `kind` (None: asyncio's own)."""
    if kind is EventLoopKind.UVLOOP:
        import uvloop  # optional: the [fast] extra

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def kind_of(loop: asyncio.AbstractEventLoop) -> EventLoopKind:
    """Which kind `loop` is (uvloop's loops come from its own module)."""
    return EventLoopKind.UVLOOP if type(loop).__module__.startswith("uvloop") else EventLoopKind.ASYNCIO


def running_loop_kind() -> EventLoopKind | None:
    """The kind of the loop running in this thread, or None outside one."""
    try:
        return kind_of(asyncio.get_running_loop())
    except RuntimeError:
        return None
