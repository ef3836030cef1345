"""The transport's status row says OUTBOUND_ACTIVE while any of its calls is in flight: one
message finishing must not clear the bit while another is still being sent (the spooler holds
up to spooler_concurrency messages in one transport at once)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import postroom
from postroom import register_transport_kind
from postroom.mapi import tags as T
from postroom.mapi.flags import LogonFlags, StatusCode
from postroom.transports.spi import OutboundMessage, Registration, SubmitResult, TransportLogon, TransportProvider

from support.profiles import make_profile

pytestmark = [pytest.mark.integration]

SEEN: dict[str, bool] = {}


class StaggeredLogon(TransportLogon):
    """'short' returns at once; 'long' waits until 'short' has been answered, then looks at its row."""

    short_done: asyncio.Event | None = None

    def address_types(self) -> Registration:
        return Registration.of("SMTP")

    async def submit_message(self, message: OutboundMessage, flags: int) -> SubmitResult:
        done = type(self).short_done
        assert done is not None
        if message.props.get(T.PR_SUBJECT) == "short":
            done.set()
        else:
            await asyncio.wait_for(done.wait(), 10)
            await asyncio.sleep(0.2)  # the spooler records the short one's answer meanwhile
            SEEN["active while long sends"] = bool(self.status.status_code & StatusCode.OUTBOUND_ACTIVE)
        for r in message.pending():
            r.mark_delivered(report=False)
        return SubmitResult.ok()


class StaggeredProvider(TransportProvider):
    display_name = "Staggered test transport"

    def logon(self, flags: LogonFlags) -> TransportLogon:
        StaggeredLogon.short_done = asyncio.Event()
        return StaggeredLogon(self, flags)


register_transport_kind("staggered", StaggeredProvider)


def test_outbound_active_stays_set_while_another_message_is_still_being_sent(tmp_path: Path) -> None:
    SEEN.clear()
    profile = make_profile(tmp_path / "p", ("staggered", {}), kind="staggered")
    profile.settings["spooler_concurrency"] = 4
    profile.save()
    with postroom.logon(profile) as s:
        s.submit_many([s.create_message("long", "b").to("a@x.test"), s.create_message("short", "b").to("b@x.test")])
        summary = s.deliver()
        row = next(r for r in s.status() if r.display_name == "staggered")
    assert summary.delivered == 2
    assert SEEN == {"active while long sends": True}
    assert not row.status_code & StatusCode.OUTBOUND_ACTIVE  # cleared once nothing is in flight
