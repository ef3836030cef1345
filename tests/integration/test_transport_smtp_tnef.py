"""The smtp transport's `tnef` option (issue 20): a message goes out with its MAPI properties in a
winmail.dat part when the option says so, to a real SMTP server on loopback, and postroom reads
what arrived back into the message that was sent."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

import postroom
from postroom import Session
from postroom.formats import tnef
from postroom.mapi import tags as T
from postroom.mime import from_mime

from support.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration
CUSTOM = T.prop_tag(T.PT_LONG, 0x6123)  # a property no MIME header carries


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def send(tmp_path: Path, sink: SmtpSink, mode: str | None, rich: bool) -> EmailMessage:
    postroom.Profile.create(tmp_path / "p", with_defaults=False)
    options = {"host": "127.0.0.1", "port": sink.port, "security": "none", **({"tnef": mode} if mode else {})}
    session: Session
    with postroom.logon(tmp_path / "p") as session:
        session.add_service("smtp", "out", options)
        draft = session.create_message("rich text", "the body")
        row = draft.add_recipient("bob@example.test")
        if rich:
            row.props[T.PR_SEND_RICH_INFO] = True
        draft.set(CUSTOM, 7)
        draft.attach_bytes("report.bin", b"\x00binary\xff")
        draft.submit()
        assert session.deliver().delivered == 1
    (raw,) = sink.handler.messages
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def tnef_parts(message: EmailMessage) -> list[bytes]:
    out = []
    for part in message.walk():
        if part.get_content_type() == "application/ms-tnef":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out.append(payload)
    return out


def test_with_tnef_auto_a_recipient_that_takes_rich_info_gets_a_winmail_dat(tmp_path: Path, sink: SmtpSink) -> None:
    message = send(tmp_path, sink, "auto", rich=True)
    (winmail,) = tnef_parts(message)
    inner = tnef.read_tnef(winmail)
    assert inner.props[CUSTOM] == 7
    assert [(a.filename, a.read_all()) for a in inner.attachments] == [("report.bin", b"\x00binary\xff")]
    assert inner.recipients == []  # the recipient table never travels in the body
    back = from_mime(message.as_bytes())
    assert back.props[CUSTOM] == 7 and [a.filename for a in back.attachments] == ["report.bin"]


def test_with_tnef_auto_an_internet_recipient_gets_plain_mime(tmp_path: Path, sink: SmtpSink) -> None:
    message = send(tmp_path, sink, "auto", rich=False)
    assert tnef_parts(message) == []
    assert [p.get_filename() for p in message.walk() if p.get_filename()] == ["report.bin"]


def test_with_tnef_always_even_an_internet_recipient_gets_a_winmail_dat(tmp_path: Path, sink: SmtpSink) -> None:
    (winmail,) = tnef_parts(send(tmp_path, sink, "always", rich=False))
    assert tnef.read_tnef(winmail).props[CUSTOM] == 7


def test_without_the_option_no_message_goes_out_as_tnef(tmp_path: Path, sink: SmtpSink) -> None:
    assert tnef_parts(send(tmp_path, sink, None, rich=True)) == []


def test_a_tnef_option_that_is_no_mode_is_refused_in_one_line(tmp_path: Path) -> None:
    postroom.Profile.create(tmp_path / "p", with_defaults=False)
    with postroom.logon(tmp_path / "p") as session, pytest.raises(postroom.MAPIError, match="'tnef' must be"):
        session.add_service("smtp", "out", {"host": "127.0.0.1", "tnef": "sometimes"})
