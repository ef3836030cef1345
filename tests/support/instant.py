"""A test transport that delivers every recipient at once, on the event loop (kind "instant").

The recording transport runs in worker threads, so how many messages finish in one loop turn
depends on the threads; this one is `async def` and never waits, so a spooler's batches (how
many messages a claim, a read and a commit cover) are the same on every run. Each call is
counted in CALLS by subject, so a test sees a message sent twice."""

from __future__ import annotations

from collections import Counter

from postroom import register_transport_kind
from postroom.mapi import tags as T
from postroom.mapi.flags import LogonFlags
from postroom.transports.spi import OutboundMessage, Registration, SubmitResult, TransportLogon, TransportProvider

CALLS: Counter[str] = Counter()


class InstantLogon(TransportLogon):
    def address_types(self) -> Registration:
        return Registration.of(*self.options.get("address_types", ["SMTP"]))

    async def submit_message(self, message: OutboundMessage, flags: int) -> SubmitResult:
        CALLS[str(message.props.get(T.PR_SUBJECT, ""))] += 1
        for r in message.pending():
            r.mark_delivered(report=False)
        return SubmitResult.ok()


class InstantProvider(TransportProvider):
    display_name = "Instant test transport"

    def logon(self, flags: LogonFlags) -> TransportLogon:
        return InstantLogon(self, flags)


register_transport_kind("instant", InstantProvider)
