"""A test transport that takes `seconds` to deliver each message, without holding a thread (kind "sleepy").

`async def` and sleeping on the event loop, so a spooler can hold as many messages in a transport
at once as its concurrency allows (the recording transport's `sleep` runs in the default thread
pool, a handful at a time). STARTED counts its calls by subject; ALL_STARTED is set when `gate`
of them (an option, default 1) are sleeping at once, for a test that watches the store meanwhile."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from postroom import register_transport_kind
from postroom.mapi import tags as T
from postroom.mapi.flags import LogonFlags
from postroom.transports.spi import OutboundMessage, Registration, SubmitResult, TransportLogon, TransportProvider

STARTED: Counter[str] = Counter()
ALL_STARTED = threading.Event()
_sleeping = 0


def reset() -> None:
    global _sleeping
    STARTED.clear()
    ALL_STARTED.clear()
    _sleeping = 0


class SleepyLogon(TransportLogon):
    def address_types(self) -> Registration:
        return Registration.of(*self.options.get("address_types", ["SMTP"]))

    async def submit_message(self, message: OutboundMessage, flags: int) -> SubmitResult:
        global _sleeping
        STARTED[str(message.props.get(T.PR_SUBJECT, ""))] += 1
        _sleeping += 1
        if _sleeping >= int(self.options.get("gate", 1)):
            ALL_STARTED.set()
        try:
            await asyncio.sleep(float(self.options.get("seconds", 1.0)))
        finally:
            _sleeping -= 1
        for r in message.pending():
            r.mark_delivered(report=False)
        return SubmitResult.ok()


class SleepyProvider(TransportProvider):
    display_name = "Sleepy test transport"

    def logon(self, flags: LogonFlags) -> TransportLogon:
        return SleepyLogon(self, flags)


register_transport_kind("sleepy", SleepyProvider)
