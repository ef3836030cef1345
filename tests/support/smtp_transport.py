"""Driving the smtp transport through the SPI directly: a logon on a test server, messages, marks."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from postroom.mapi import tags as T
from postroom.mapi.codes import HResult
from postroom.mapi.flags import EndMessageFlags, LogonFlags, RecipientType
from postroom.mapi.message import MessageData, Recipient
from postroom.transports.smtp import SMTPLogon, SMTPProvider
from postroom.transports.spi import OutboundMessage, OutboundRecipient, SubmitResult

from .spi import provider_context

try:
    import uvloop
except ImportError:  # the [fast] extra is not installed: the uvloop runs are skipped
    uvloop = None

SENDER = "sam@sender.test"
R = TypeVar("R")

#: For a test or a parameter that runs the transport on uvloop.
needs_uvloop = pytest.mark.skipif(uvloop is None, reason="uvloop not installed")


def run(coro: Coroutine[Any, Any, R], loop: str = "asyncio") -> R:
    """Run `coro` on plain asyncio, or on uvloop with loop "uvloop"."""
    if loop == "uvloop":
        assert uvloop is not None
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def make_logon(tmp_path: Path, port: int, flags: LogonFlags = LogonFlags.NONE, **options: Any) -> SMTPLogon:
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", port)
    options.setdefault("security", "none")
    options.setdefault("helo_name", "client.test")
    options.setdefault("timeout", 5)
    logon = SMTPProvider(provider_context("smtp", "smarthost", options, tmp_path)).logon(flags)
    assert isinstance(logon, SMTPLogon)
    return logon


_refs = itertools.count(1)


def rcpt(address: str, *, adrtype: str = "SMTP", kind: RecipientType = RecipientType.TO) -> Recipient:
    return Recipient(
        props={
            T.PR_DISPLAY_NAME: address.partition("@")[0].title() or address,
            T.PR_ADDRTYPE: adrtype,
            T.PR_EMAIL_ADDRESS: address,
            T.PR_RECIPIENT_TYPE: int(kind),
        }
    )


def make_message(*recipients: Recipient, subject: str = "Hello there", **props: Any) -> OutboundMessage:
    for i, row in enumerate(recipients):
        row.row_id = i
    data = MessageData(
        props={
            T.PR_MESSAGE_CLASS: "IPM.Note",
            T.PR_SUBJECT: subject,
            T.PR_BODY: "Body text\n.leading dot\n",
            T.PR_SENDER_NAME: "Sam Sender",
            T.PR_SENDER_ADDRTYPE: "SMTP",
            T.PR_SENDER_EMAIL_ADDRESS: SENDER,
            **{getattr(T, name): value for name, value in props.items()},
        },
        recipients=list(recipients),
    )
    views = [OutboundRecipient(r, responsibility=False) for r in recipients]
    return OutboundMessage(data, views, ref=next(_refs), deferred=False)


def by_address(message: OutboundMessage) -> dict[str, OutboundRecipient]:
    return {r.email_address: r for r in message.recipients}


async def submit(logon: SMTPLogon, message: OutboundMessage) -> tuple[SubmitResult, EndMessageFlags]:
    result = await logon.submit_message(message, 0)
    end = logon.end_message(message.ref) if result.code == HResult.S_OK else EndMessageFlags.NONE
    return result, end
