"""The SMTP client's pure parts: the message made wire-ready, and replies parsed as they arrive."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from postroom.transports.smtp_client import (
    MAX_LINE,
    ProtocolViolation,
    Reply,
    ServerDisconnected,
    _ReplyReader,
    wire_content,
)


def test_wire_content_doubles_leading_dots_and_ends_with_a_lone_dot() -> None:
    assert wire_content(b"Subject: x\r\n\r\n.hidden\r\nok\r\n..two\r\n") == (
        b"Subject: x\r\n\r\n..hidden\r\nok\r\n...two\r\n.\r\n"
    )
    assert wire_content(b".first line") == b"..first line\r\n.\r\n"


def test_wire_content_makes_every_line_end_crlf() -> None:
    assert wire_content(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n.\r\n"
    assert wire_content(b"a\n.b\n") == b"a\r\n..b\r\n.\r\n"


def test_wire_content_of_an_empty_message_is_the_end_of_data_alone() -> None:
    assert wire_content(b"") == b".\r\n"


def parsed(*chunks: bytes) -> _ReplyReader:
    reader = _ReplyReader()
    for chunk in chunks:
        reader.data_received(chunk)
    return reader


def test_replies_split_anywhere_are_put_together() -> None:
    reader = parsed(b"250-mx.test\r\n250-PIPE", b"LINING\r", b"\n250 SIZE 1000\r\n354 go\r\n25")
    assert list(reader.replies) == [Reply(250, "mx.test\nPIPELINING\nSIZE 1000"), Reply(354, "go")]
    reader.data_received(b"0 2.0.0 Ok\n")  # a bare LF ends a line too
    assert reader.replies[-1] == Reply(250, "2.0.0 Ok") and reader.error is None


def test_a_code_alone_is_a_reply_with_no_text() -> None:
    assert list(parsed(b"250\r\n").replies) == [Reply(250, "")]


@pytest.mark.parametrize(
    "data",
    [b"hello there\r\n", b"25 short\r\n", b"250x what\r\n", b"250-a\r\n251 b\r\n", b"2" * (MAX_LINE + 1)],
    ids=["not a reply", "short code", "bad separator", "code changes", "endless line"],
)
def test_what_is_not_an_smtp_reply_is_a_protocol_violation(data: bytes) -> None:
    reader = parsed(data)
    assert isinstance(reader.error, ProtocolViolation) and not reader.replies


def test_a_waiting_reader_is_woken_by_a_reply_and_by_a_lost_connection() -> None:
    async def scenario() -> tuple[bool, bool]:
        reader = _ReplyReader()
        reader.waiter = asyncio.get_running_loop().create_future()
        reader.data_received(b"250 ok\r\n")
        woken_by_reply = reader.waiter.done()
        reader.waiter = asyncio.get_running_loop().create_future()
        reader.connection_lost(ConnectionResetError("reset"))
        return woken_by_reply, reader.waiter.done() and isinstance(reader.error, ServerDisconnected)

    assert asyncio.run(scenario()) == (True, True)


def test_the_smtp_transport_runs_without_aiosmtplib() -> None:
    """aiosmtplib is only the benchmarks' reference (a test extra): the transport, its pool and
    its client import with it blocked, and none of them pulls it in."""
    code = (
        "import sys; sys.modules['aiosmtplib'] = None\n"
        "import postroom.transports.smtp, postroom.transports.smtp_pool, postroom.transports.smtp_client\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
