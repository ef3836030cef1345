"""A message fetched over IMAP or POP3 keeps the bytes the server gave (issue 16, item 7)."""

from __future__ import annotations

from postroom import mime
from postroom.transports.inbound import fill
from postroom.transports.spi import InboundMessage

RAW = b"From: a@sender.test\r\nTo: b@rcpt.test\r\nSubject: kept\r\nX-Trace: 1\r\n\r\nbody\r\n"


def test_the_spoolers_new_message_gets_the_original_bytes_of_the_fetched_one() -> None:
    message = InboundMessage(ref=1)
    fill(message, mime.from_mime(RAW))
    assert message.data.original is not None
    assert message.data.original.read_all() == RAW
