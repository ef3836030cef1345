"""The smtp transport, driven directly through the transport SPI against aiosmtpd on loopback."""

from __future__ import annotations

import asyncio
import email
import email.policy
import functools
import logging
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.flags import EndMessageFlags, LogonFlags, NDRDiag, NDRReason, RecipientType, StatusCode
from postroom.transports.smtp import SMTPLogon, SMTPProvider, envelope_address_problem, reply_text
from postroom.transports.spi import Registration, SubmitResult

from support.prerequisites import unavailable
from support.smtp_sink import DsnController
from support.smtp_transport import SENDER, by_address, make_logon, make_message, needs_uvloop, rcpt, run, submit
from support.spi import FakeSupport

pytestmark = pytest.mark.integration

# --- a scriptable SMTP server ------------------------------------------------------------------------


@dataclass
class Received:
    peer: Any
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    rcpt_options: list[list[str]]

    def parse(self) -> email.message.EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg


@dataclass
class Handler:
    """Accepts everything unless told otherwise; records what it got."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    mail_replies_once: list[str] = field(default_factory=list)
    data_reply: str | None = None
    #: OpenSMTPD-like: 452 4.5.3 at MAIL after this many messages on one connection.
    max_messages_per_session: int | None = None
    #: Postfix-like: 452 4.5.3 at RCPT after this many recipients in one transaction.
    max_rcpts: int | None = None
    #: Recipients at whose RCPT the server drops the connection.
    drop_at_rcpt: set[str] = field(default_factory=set)
    extra_ehlo: list[str] = field(default_factory=list)
    ehlo: list[str] = field(default_factory=list)
    quits: int = 0
    rsets: int = 0
    mails_per_peer: dict[Any, int] = field(default_factory=dict)
    rcpt_opts: list[list[str]] = field(default_factory=list)
    #: MAIL and RCPT arguments as the client wrote them (support.smtp_sink.DsnSMTP only: aiosmtpd upper-cases values).
    lines: list[str] = field(default_factory=list)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> Any:
        session.host_name = hostname
        self.ehlo.append(hostname)
        return [*responses[:-1], *self.extra_ehlo, responses[-1]]

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        count = self.mails_per_peer.get(session.peer, 0)
        if self.max_messages_per_session is not None and count >= self.max_messages_per_session:
            return "452 4.5.3 Too many messages on this connection"
        if self.mail_replies_once:
            return self.mail_replies_once.pop(0)
        if self.mail_reply is not None:
            return self.mail_reply
        self.mails_per_peer[session.peer] = count + 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self.rcpt_opts = []
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address in self.drop_at_rcpt:
            server.transport.close()
            return "250 OK"
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        if self.max_rcpts is not None and len(envelope.rcpt_tos) >= self.max_rcpts:
            return "452 4.5.3 Error: too many recipients"
        envelope.rcpt_tos.append(address)
        self.rcpt_opts.append(list(options))
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply is not None:
            return self.data_reply
        self.received.append(
            Received(
                session.peer,
                envelope.mail_from,
                list(envelope.rcpt_tos),
                bytes(envelope.original_content or envelope.content),
                list(envelope.mail_options),
                list(self.rcpt_opts),
            )
        )
        return "250 2.0.0 Ok: queued"

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.rsets += 1
        return "250 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(
    params=[
        "lock-step",
        "pipelined",
        pytest.param("pipelined on uvloop", marks=needs_uvloop),
    ]
)
def start_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Handler, int]]]:
    """Starts scriptable servers; every test that uses it runs three times: against a server that
    does not offer PIPELINING (the client waits for each reply), one that does (RFC 2920), and that
    one with the transport on uvloop (the tests' `asyncio.run` runs on a uvloop loop; the servers
    keep their own asyncio loops)."""
    if request.param == "pipelined on uvloop":
        monkeypatch.setattr(asyncio, "run", functools.partial(run, loop="uvloop"))
    controllers: list[Controller] = []

    def start(
        handler: Handler | None = None, *, port: int | None = None, dsn: bool = False, **kwargs: Any
    ) -> tuple[Handler, int]:
        handler = handler or Handler()
        if request.param != "lock-step":
            handler.extra_ehlo.append("250-PIPELINING")
        port = port or free_port()
        kwargs.setdefault("server_hostname", "mx.test")
        cls = DsnController if dsn else Controller
        controller = cls(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return handler, port

    yield start
    for controller in controllers:
        controller.stop()


# --- the transport side ------------------------------------------------------------------------------


def status_text(logon: SMTPLogon) -> str:
    return repr(logon.status) + repr(vars(logon))


# --- options ---------------------------------------------------------------------------------------


def test_validate_options_defaults_and_ports() -> None:
    opts = SMTPProvider.validate_options({"host": "mail.example.test"})
    assert opts["port"] == 587 and opts["security"] == "starttls" and opts["verify_tls"] is True
    assert opts["timeout"] == 30 and opts["connections"] == 2 and opts["max_messages_per_connection"] == 100
    assert opts["address_types"] == ["SMTP"] and "temporary_failure_wait" not in opts  # the spooler backs off
    assert "domains" not in opts and "sender" not in opts
    assert SMTPProvider.validate_options({"host": "h", "security": "TLS"})["port"] == 465
    assert SMTPProvider.validate_options({"host": "h", "security": "none"})["port"] == 25
    opts = SMTPProvider.validate_options(
        {"host": "h", "port": "2525", "domains": "Example.TEST, b.test", "verify_tls": "false"}
    )
    assert opts["port"] == 2525 and opts["domains"] == ["example.test", "b.test"] and opts["verify_tls"] is False


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"host": "h", "username": "u", "password": "hunter2"}, ["password_env", "password_file"]),
        ({}, ["host", "required"]),
        ({"host": "h", "security": "ssl"}, ["security"]),
        ({"host": "h", "port": 0}, ["port"]),
        ({"host": "h", "username": "u"}, ["password_env", "password_file"]),
        ({"host": "h", "password_env": "X"}, ["username"]),
        ({"host": "h", "username": "u", "password_env": "X", "password_file": "f"}, ["exclude"]),
        ({"host": "h", "connections": 0}, ["connections"]),
        ({"host": "h", "timeout": "soon"}, ["timeout"]),
        ({"host": "h", "sender": "a b@c.test"}, ["sender", "white space"]),
        ({"host": "h", "address_types": "*"}, ["address_types"]),
        ({"host": "h", "security": "none", "ca_file": "ca.pem"}, ["ca_file"]),
        ({"host": "h", "colour": "red"}, ["unknown option"]),
    ],
)
def test_validate_options_refuses(options: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(MAPIError) as info:
        SMTPProvider.validate_options(options)
    assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER
    for word in words:
        assert word in info.value.message
    assert "hunter2" not in info.value.message


def test_a_missing_password_env_is_a_configuration_error_its_messages_wait_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transport keeps its place in routing (its mail is not bounced as "no transport"), its
    status row says what is wrong, and each message waits until the profile is fixed."""
    monkeypatch.delenv("POSTROOM_TEST_NO_SUCH_VAR", raising=False)
    logon = make_logon(tmp_path, 25, username="u", password_env="POSTROOM_TEST_NO_SUCH_VAR")
    assert logon.status.status_code & StatusCode.FAILURE and "POSTROOM_TEST_NO_SUCH_VAR" in logon.status.last_error
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result.code == HResult.MAPI_E_UNCONFIGURED and "is not set" in result.reason


def test_envelope_address_problems() -> None:
    assert envelope_address_problem("alice@example.test") is None
    assert envelope_address_problem("jöran@exämple.test") is None
    for bad in ("a\r\nRCPT TO:<x@y>@z.test", "a b@c.test", "a>@c.test", "<a@c.test", "a\0@c.test", "nobody", ""):
        assert envelope_address_problem(bad) is not None, bad
    assert reply_text(550, "5.1.1 first\nsecond") == "550-5.1.1 first\n550 second"


# --- delivery ----------------------------------------------------------------------------------------


def test_logon_registers_and_does_not_connect(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server()
    logon = make_logon(tmp_path, port, address_types=["smtp", "X-Mail"])
    assert logon.address_types() == Registration.of("SMTP", "X-MAIL")
    assert handler.ehlo == [] and logon.connections_opened == 0


def test_no_connect_logon_never_connects(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server()
    logon = make_logon(tmp_path, port, LogonFlags.NO_CONNECT, temporary_failure_wait=42)
    message = make_message(rcpt("alice@example.test"))
    result, _ = asyncio.run(submit(logon, message))
    assert result.code == HResult.MAPI_E_WAIT and result.wait_seconds == 42 and "offline" in result.reason
    assert handler.ehlo == [] and logon.connections_opened == 0
    assert all(r.mark is None for r in message.recipients)
    assert logon.status.status_code & StatusCode.OFFLINE


def test_one_recipient_refused_at_rcpt(tmp_path: Path, start_server: Any) -> None:
    refusal = "550 5.1.1 <carol@example.test>: Recipient address rejected: User unknown"
    handler, port = start_server(Handler(rcpt_replies={"carol@example.test": refusal}))
    logon = make_logon(tmp_path, port)
    message = make_message(
        rcpt("alice@example.test"),
        rcpt("carol@example.test", kind=RecipientType.CC),
        rcpt("dave@example.test", kind=RecipientType.BCC),
    )
    result, end = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok() and end == EndMessageFlags.NONE
    rcpts = by_address(message)
    for address in ("alice@example.test", "dave@example.test"):
        mark = rcpts[address].mark
        assert mark is not None and mark.delivered and mark.report is False
    mark = rcpts["carol@example.test"].mark
    assert mark is not None and not mark.delivered
    assert mark.text == refusal
    assert mark.status_code == 550
    assert mark.diag == NDRDiag.MAIL_RECIPIENT_UNKNOWN and mark.reason == NDRReason.TRANSFER_IMPOSSIBLE

    # The server got one message with the right envelope and no Bcc header.
    [got] = handler.received
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ["alice@example.test", "dave@example.test"]
    parsed = got.parse()
    assert parsed["Bcc"] is None and b"dave@example.test" not in got.data
    assert parsed["Subject"] == "Hello there" and "carol@example.test" in str(parsed["Cc"])
    assert ".leading dot" in parsed.get_content()  # dot stuffing undone by the server
    assert handler.ehlo == ["client.test"]
    assert logon.status.status_string == f"connected to 127.0.0.1:{port}"


def test_temporary_failure_for_all_recipients_waits(tmp_path: Path, start_server: Any) -> None:
    later = "451 4.3.0 Try again later"
    handler, port = start_server(Handler(rcpt_replies={"alice@example.test": later, "bob@example.test": later}))
    logon = make_logon(tmp_path, port, temporary_failure_wait=77)
    message = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))

    async def refused_then_accepted() -> tuple[SubmitResult, SubmitResult]:
        first = await logon.submit_message(message, 0)
        handler.rcpt_replies.clear()
        return first, await logon.submit_message(make_message(rcpt("alice@example.test")), 0)

    result, second = asyncio.run(refused_then_accepted())
    assert result.code == HResult.MAPI_E_WAIT and result.wait_seconds == 77
    assert result.reason == later
    assert all(r.mark is None for r in message.recipients)
    # The open transaction was reset, so the same connection carried the next message.
    assert handler.rsets == 1 and second == SubmitResult.ok()
    assert len(handler.received) == 1 and len(handler.ehlo) == 1


def test_temporary_failure_for_one_recipient_resends_later(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(Handler(rcpt_replies={"bob@example.test": "451 4.3.0 Mailbox busy"}))
    logon = make_logon(tmp_path, port)
    message = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"), rcpt("carol@example.test"))
    result, end = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok()
    assert end == EndMessageFlags.RESEND_LATER
    rcpts = by_address(message)
    assert rcpts["bob@example.test"].mark is None and not rcpts["bob@example.test"].responsibility
    marks = [rcpts[a].mark for a in ("alice@example.test", "carol@example.test")]
    assert all(m is not None and m.delivered for m in marks)
    assert handler.received[0].rcpt_tos == ["alice@example.test", "carol@example.test"]
    assert logon.end_message(message.ref) == EndMessageFlags.NONE  # asked once only


def test_rejection_after_data_fails_every_accepted_recipient(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(Handler(data_reply="554 5.6.0 Message content rejected"))
    logon = make_logon(tmp_path, port)
    message = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
    result, end = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok() and end == EndMessageFlags.NONE
    for r in message.recipients:
        assert r.mark is not None and not r.mark.delivered
        assert r.mark.text == "554 5.6.0 Message content rejected" and r.mark.status_code == 554
    assert handler.received == []


def test_refused_sender_fails_every_recipient(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(Handler(mail_reply="553 5.7.1 <sam@sender.test>: Sender address rejected"))
    logon = make_logon(tmp_path, port)
    message = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
    result, _ = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok()
    for r in message.recipients:
        assert r.mark is not None and not r.mark.delivered and r.mark.status_code == 553
        assert r.mark.text.startswith("553 5.7.1")

    # The failed transaction was reset (RSET): the same connection carries the next message.
    logon = make_logon(tmp_path, port)

    async def refused_then_accepted() -> SubmitResult:
        await logon.submit_message(make_message(rcpt("alice@example.test")), 0)
        handler.mail_reply = None
        return await logon.submit_message(make_message(rcpt("alice@example.test")), 0)

    ehlos = len(handler.ehlo)
    assert asyncio.run(refused_then_accepted()) == SubmitResult.ok()
    assert len(handler.received) == 1 and len(handler.ehlo) == ehlos + 1


def test_connection_refused_is_a_network_error_until_the_server_is_back(tmp_path: Path, start_server: Any) -> None:
    port = free_port()  # nothing listens there yet
    logon = make_logon(tmp_path, port, temporary_failure_wait=33)
    message = make_message(rcpt("alice@example.test"))
    result, _ = asyncio.run(submit(logon, message))
    assert result.code == HResult.MAPI_E_NETWORK_ERROR and result.wait_seconds == 33
    assert str(port) in result.reason
    assert logon.status.status_code & StatusCode.FAILURE
    assert logon.status.last_error == result.reason and logon.status.last_error_time is not None
    assert message.recipients[0].mark is None

    handler, _ = start_server(port=port)
    message = make_message(rcpt("alice@example.test"))
    result, _ = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok() and len(handler.received) == 1
    assert not logon.status.status_code & StatusCode.FAILURE
    assert logon.status.status_string == f"connected to 127.0.0.1:{port}"


def test_connection_dropped_before_data_is_a_network_error(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(Handler(drop_at_rcpt={"bob@example.test"}))
    logon = make_logon(tmp_path, port)
    message = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
    result, _ = asyncio.run(submit(logon, message))
    assert result.code == HResult.MAPI_E_NETWORK_ERROR
    assert handler.received == [] and logon.status.status_code & StatusCode.FAILURE


def test_connections_are_reused_and_renewed(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server()
    logon = make_logon(tmp_path, port)

    async def send(n: int) -> None:
        for _ in range(n):
            result, _ = await submit(logon, make_message(rcpt("alice@example.test")))
            assert result == SubmitResult.ok()
        await logon.logoff()

    asyncio.run(send(5))
    assert len(handler.received) == 5
    assert len(handler.ehlo) == 1 and len({r.peer for r in handler.received}) == 1
    assert handler.quits == 1  # logoff said goodbye

    handler, port = start_server()
    logon = make_logon(tmp_path, port, max_messages_per_connection=2)
    asyncio.run(send(5))
    assert len(handler.received) == 5 and len(handler.ehlo) == 3
    assert handler.quits == 3


def test_parallel_submissions_use_at_most_the_configured_connections(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server()
    logon = make_logon(tmp_path, port, connections=2)

    async def send() -> list[SubmitResult]:
        results = await asyncio.gather(
            *(logon.submit_message(make_message(rcpt(f"u{i}@example.test")), 0) for i in range(6))
        )
        await logon.logoff()
        return list(results)

    assert asyncio.run(send()) == [SubmitResult.ok()] * 6
    assert len(handler.received) == 6 and 1 <= logon.connections_opened <= 2


def support_of(logon: SMTPLogon) -> FakeSupport:
    support = logon.provider.context.support
    assert isinstance(support, FakeSupport)
    return support


def test_each_connection_holds_a_slot_until_it_closes(tmp_path: Path, start_server: Any) -> None:
    _, port = start_server()
    logon = make_logon(tmp_path, port, connections=2)
    slots = support_of(logon).slots

    async def send() -> tuple[int, int]:
        await asyncio.gather(*(logon.submit_message(make_message(rcpt(f"u{i}@example.test")), 0) for i in range(6)))
        during = slots.held("transport")
        await logon.logoff()
        return during, slots.held("transport")

    during, after = asyncio.run(send())
    assert during == logon.connections_opened and 1 <= during <= 2
    assert after == 0


def test_idle_connections_close_and_give_their_slot_back(
    tmp_path: Path, start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import postroom.transports.smtp_pool as smtp_pool

    monkeypatch.setattr(smtp_pool, "IDLE_SECONDS", 0.2)
    handler, port = start_server()
    logon = make_logon(tmp_path, port)
    slots = support_of(logon).slots

    async def send() -> list[int]:
        held = []
        for _ in range(2):
            assert (await submit(logon, make_message(rcpt("alice@example.test"))))[0] == SubmitResult.ok()
            held.append(slots.held("transport"))
            await asyncio.sleep(0.6)
            held.append(slots.held("transport"))
        await logon.logoff()
        return held

    assert asyncio.run(send()) == [1, 0, 1, 0]
    assert len(handler.ehlo) == 2 and handler.quits == 2  # closed politely, and opened again when needed


def test_slots_taken_elsewhere_make_the_message_wait(
    tmp_path: Path, start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import postroom.transports.smtp as smtp
    import postroom.transports.smtp_pool as smtp_pool

    monkeypatch.setattr(smtp_pool, "SLOT_WAIT_SECONDS", 0.3)
    handler, port = start_server()
    logon = make_logon(tmp_path, port, connections=1)
    slots = support_of(logon).slots
    assert slots.try_acquire("transport", 1) == 0  # "another process" holds the only connection

    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result.code == HResult.MAPI_E_WAIT and result.wait_seconds == smtp.SLOT_RETRY_SECONDS
    assert "all 1 connection(s)" in result.reason and "other spooler processes" in result.reason
    assert handler.received == [] and logon.connections_opened == 0
    assert not logon.status.status_code & StatusCode.FAILURE  # waiting for a slot is not a failure

    slots.release("transport", 0)
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result == SubmitResult.ok() and len(handler.received) == 1
    asyncio.run(logon.logoff())


def test_452_at_mail_reconnects_and_retries(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(Handler(max_messages_per_session=2))
    logon = make_logon(tmp_path, port)

    async def send() -> list[SubmitResult]:
        return [await logon.submit_message(make_message(rcpt("alice@example.test")), 0) for _ in range(5)]

    assert asyncio.run(send()) == [SubmitResult.ok()] * 5
    assert len(handler.received) == 5 and logon.connections_opened == 3


def test_421_at_mail_retries_once_on_a_fresh_connection(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(Handler(mail_replies_once=["421 4.3.2 Service shutting down"]))
    logon = make_logon(tmp_path, port)
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result == SubmitResult.ok() and len(handler.received) == 1 and len(handler.ehlo) == 2

    # Twice in a row: a temporary failure, nothing marked.
    handler.mail_replies_once = ["421 4.3.2 Service shutting down"] * 2
    message = make_message(rcpt("alice@example.test"))
    result, _ = asyncio.run(submit(logon, message))
    assert result.code == HResult.MAPI_E_WAIT and result.reason == "421 4.3.2 Service shutting down"
    assert message.recipients[0].mark is None and len(handler.received) == 1


def test_421_at_rcpt_sends_no_data(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(Handler(rcpt_replies={"bob@example.test": "421 4.3.2 Closing"}))
    logon = make_logon(tmp_path, port)
    message = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"), rcpt("carol@example.test"))
    result, _ = asyncio.run(submit(logon, message))
    assert result.code == HResult.MAPI_E_WAIT and result.reason == "421 4.3.2 Closing"
    assert all(r.mark is None for r in message.recipients) and handler.received == []


def test_too_many_recipients_go_in_another_transaction(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(Handler(max_rcpts=2))
    logon = make_logon(tmp_path, port)
    message = make_message(*(rcpt(f"u{i}@example.test") for i in range(5)))
    result, end = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok() and end == EndMessageFlags.NONE
    assert all(r.mark is not None and r.mark.delivered for r in message.recipients)
    assert [r.rcpt_tos for r in handler.received] == [
        ["u0@example.test", "u1@example.test"],
        ["u2@example.test", "u3@example.test"],
        ["u4@example.test"],
    ]
    assert len(handler.ehlo) == 1


def test_connection_closed_by_the_server_is_replaced(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(timeout=0.3)  # aiosmtpd drops idle connections after 0.3 s

    async def send() -> list[SubmitResult]:
        first = await logon.submit_message(make_message(rcpt("alice@example.test")), 0)
        await asyncio.sleep(0.7)
        second = await logon.submit_message(make_message(rcpt("bob@example.test")), 0)
        return [first, second]

    logon = make_logon(tmp_path, port)
    assert asyncio.run(send()) == [SubmitResult.ok()] * 2
    assert len(handler.received) == 2 and len(handler.ehlo) == 2


# --- choosing recipients -------------------------------------------------------------------------------


def test_domains_and_address_types_leave_others_pending(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server()
    logon = make_logon(tmp_path, port, domains=["example.test"])
    message = make_message(rcpt("alice@Example.Test"), rcpt("bob@elsewhere.test"), rcpt("+4930123", adrtype="FAX"))
    result, _ = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok()
    rcpts = by_address(message)
    assert rcpts["alice@Example.Test"].mark is not None
    assert rcpts["bob@elsewhere.test"].mark is None and rcpts["+4930123"].mark is None
    assert handler.received[0].rcpt_tos == ["alice@Example.Test"]

    message = make_message(rcpt("bob@elsewhere.test"))
    result, _ = asyncio.run(submit(logon, message))
    assert result.code == HResult.MAPI_E_NOT_ME and len(handler.received) == 1


def test_injection_addresses_fail_and_are_never_sent(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server()
    logon = make_logon(tmp_path, port)
    evil = [
        "x@example.test>\r\nRCPT TO:<victim@example.test",
        "a b@example.test",
        "<c@example.test>",
        "d\0@example.test",
    ]
    message = make_message(rcpt("alice@example.test"), *(rcpt(a, kind=RecipientType.BCC) for a in evil))
    result, _ = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok()
    rcpts = by_address(message)
    for address in evil:
        mark = rcpts[address].mark
        assert mark is not None and not mark.delivered and mark.diag == NDRDiag.MAIL_ADDRESS_INCORRECT
    assert [r.rcpt_tos for r in handler.received] == [["alice@example.test"]]
    assert b"example.test>\r\nRCPT" not in handler.received[0].data

    # In To or Cc such an address cannot be written into the header: nobody gets the message.
    message = make_message(rcpt("alice@example.test"), rcpt("a b@example.test", kind=RecipientType.CC))
    result, _ = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok() and len(handler.received) == 1
    rcpts = by_address(message)
    assert rcpts["a b@example.test"].mark.diag == NDRDiag.MAIL_ADDRESS_INCORRECT  # type: ignore[union-attr]
    mark = rcpts["alice@example.test"].mark
    assert mark is not None and not mark.delivered and mark.reason == NDRReason.CONVERSION_NOT_PERFORMED


def test_smtputf8_used_when_offered_else_refused(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(enable_SMTPUTF8=False)
    logon = make_logon(tmp_path, port)
    message = make_message(rcpt("alice@example.test"), rcpt("jöran@example.test", kind=RecipientType.BCC))
    result, _ = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok()
    rcpts = by_address(message)
    mark = rcpts["jöran@example.test"].mark
    assert mark is not None and not mark.delivered and mark.diag == NDRDiag.MAIL_ADDRESS_INCORRECT
    assert "does not support SMTPUTF8" in mark.text
    assert rcpts["alice@example.test"].mark is not None and rcpts["alice@example.test"].mark.delivered
    assert "SMTPUTF8" not in handler.received[0].mail_options

    handler, port = start_server(enable_SMTPUTF8=True)
    logon = make_logon(tmp_path, port)
    message = make_message(rcpt("alice@example.test"), rcpt("jöran@example.test"))
    result, _ = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok()
    assert all(r.mark is not None and r.mark.delivered for r in message.recipients)
    [got] = handler.received
    assert "SMTPUTF8" in got.mail_options and got.rcpt_tos == ["alice@example.test", "jöran@example.test"]
    assert "jöran@example.test" in str(got.parse()["To"])


def test_dsn_parameters_when_a_delivery_report_is_requested(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server(Handler(extra_ehlo=["250-DSN"]), dsn=True)
    logon = make_logon(tmp_path, port)
    message = make_message(
        rcpt("alice@example.test"), PR_ORIGINATOR_DELIVERY_REPORT_REQUESTED=True, PR_INTERNET_MESSAGE_ID="<m1@x.test>"
    )
    result, _ = asyncio.run(submit(logon, message))
    assert result == SubmitResult.ok()
    mark = message.recipients[0].mark
    assert mark is not None and mark.delivered and mark.report is False
    [got] = handler.received
    assert "RET=HDRS" in got.mail_options and "ENVID=<M1@X.TEST>" in got.mail_options  # aiosmtpd upper-cases
    assert got.rcpt_options == [["NOTIFY=SUCCESS,FAILURE", "ORCPT=RFC822;ALICE@EXAMPLE.TEST"]]

    # Without a report request no DSN parameters are sent.
    asyncio.run(submit(logon, make_message(rcpt("bob@example.test"))))
    assert handler.received[1].rcpt_options == [[]] and "RET=HDRS" not in handler.received[1].mail_options


def dsn_request() -> Any:
    """A message as the listener keeps it from cron@host.example with an RFC 3461 request: RET and
    ENVID on it, NOTIFY and ORCPT (decoded) on alice; bob asked nothing."""
    alice, bob = rcpt("alice@example.test"), rcpt("bob@example.test")
    alice.props[T.PR_POSTROOM_DSN_NOTIFY] = "FAILURE,DELAY"
    alice.props[T.PR_POSTROOM_DSN_ORCPT] = "rfc822;Alice=old@example.test"
    return make_message(
        alice, bob, PR_POSTROOM_SUBMISSION_SOURCE="smtp", PR_POSTROOM_ENVELOPE_FROM="cron@host.example",
        PR_POSTROOM_DSN_RET="FULL", PR_POSTROOM_DSN_ENVID="Nightly 7+x",
    )  # fmt: skip


@pytest.mark.parametrize("offered", [True, False], ids=["DSN offered", "no DSN"])
def test_the_senders_own_dsn_request_is_passed_on_xtext_encoded_only_when_the_server_offers_dsn(
    tmp_path: Path, start_server: Any, offered: bool
) -> None:
    handler, port = start_server(Handler(extra_ehlo=["250-DSN"] if offered else []), dsn=True)
    message = dsn_request()
    result, _ = asyncio.run(submit(make_logon(tmp_path, port), message))
    assert result == SubmitResult.ok()
    mail, to_alice, to_bob = handler.lines
    size = mail.removeprefix("MAIL FROM:<cron@host.example> ").split()[0]
    assert size.startswith("SIZE=")
    rcpts = by_address(message)
    alice, bob = rcpts["alice@example.test"].mark, rcpts["bob@example.test"].mark
    assert alice is not None and bob is not None and alice.delivered and bob.delivered
    assert bob.dsn_passed_on is False and to_bob == "RCPT TO:<bob@example.test>"
    if offered:
        assert mail == f"MAIL FROM:<cron@host.example> {size} RET=FULL ENVID=Nightly+207+2Bx"
        assert to_alice == "RCPT TO:<alice@example.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;Alice+3Dold@example.test"
        assert alice.dsn_passed_on is True  # the next hop reports: no "relayed" from us
    else:
        assert mail == f"MAIL FROM:<cron@host.example> {size}" and to_alice == "RCPT TO:<alice@example.test>"
        assert alice.dsn_passed_on is False


def test_the_senders_dsn_request_stays_here_when_mail_from_is_the_accounts(tmp_path: Path, start_server: Any) -> None:
    # The next hop would report to the account, not to the sender who asked: postroom keeps the
    # request and reports itself ("relayed").
    handler, port = start_server(Handler(extra_ehlo=["250-DSN"]), dsn=True)
    logon = make_logon(tmp_path, port, envelope_from="account", from_address="account@sender.test")
    message = dsn_request()
    assert asyncio.run(submit(logon, message))[0] == SubmitResult.ok()
    mail, to_alice, to_bob = handler.lines
    assert mail.startswith("MAIL FROM:<account@sender.test> SIZE=") and "RET=" not in mail
    assert (to_alice, to_bob) == ("RCPT TO:<alice@example.test>", "RCPT TO:<bob@example.test>")
    assert all(r.mark is not None and r.mark.dsn_passed_on is False for r in message.recipients)


def test_sender_option_and_reports_use_their_envelope_sender(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server()
    logon = make_logon(tmp_path, port, sender="bounces@sender.test")
    asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert handler.received[0].mail_from == "bounces@sender.test"


def relayed(envelope_from: str, source: str = "smtp") -> Any:
    """A message as the listener (or postroom-sendmail) hands it over, with its client's MAIL FROM."""
    return make_message(
        rcpt("alice@example.test"), PR_POSTROOM_SUBMISSION_SOURCE=source, PR_POSTROOM_ENVELOPE_FROM=envelope_from
    )


def test_relayed_mail_goes_out_with_the_envelope_sender_its_client_gave(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server()
    logon = make_logon(tmp_path, port, sender="bounces@sender.test", from_address="account@sender.test")
    for message in (relayed("cron@host.example"), relayed("git@host.example", "sendmail"), relayed("")):
        asyncio.run(submit(logon, message))
    asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))  # composed here: the account's
    senders = [got.mail_from for got in handler.received]
    assert senders == ["cron@host.example", "git@host.example", "<>", "bounces@sender.test"]


def test_with_envelope_from_account_relayed_mail_gets_the_accounts_sender_but_a_bounce_stays_null(
    tmp_path: Path, start_server: Any
) -> None:
    handler, port = start_server()
    logon = make_logon(tmp_path, port, envelope_from="account", from_address="account@sender.test")
    for message in (relayed("cron@host.example"), relayed("")):
        asyncio.run(submit(logon, message))
    assert [got.mail_from for got in handler.received] == ["account@sender.test", "<>"]


def test_envelope_from_takes_only_message_or_account(tmp_path: Path) -> None:
    with pytest.raises(MAPIError) as caught:
        make_logon(tmp_path, 25, envelope_from="header")
    assert caught.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert "'envelope_from' must be 'message' or 'account'" in caught.value.message


# --- authentication and TLS ------------------------------------------------------------------------


class Authenticator:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()
        self.attempts: list[tuple[str, bytes]] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.attempts.append((mechanism, data.login))
        ok = data.login == self.user and data.password == self.password
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 235/535 reply


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_auth_with_password_from_environment(
    tmp_path: Path, start_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Pa55word"
    monkeypatch.setenv("POSTROOM_TEST_SMTP_PASSWORD", secret)
    auth = Authenticator("sam", secret)
    handler, port = start_server(authenticator=auth, auth_require_tls=False, auth_required=True)
    logon = make_logon(tmp_path, port, username="sam", password_env="POSTROOM_TEST_SMTP_PASSWORD")
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result == SubmitResult.ok() and len(handler.received) == 1
    assert auth.attempts and auth.attempts[0][1] == b"sam"
    assert secret not in status_text(logon) and secret not in caplog.text
    assert logon.status.identity == f"sam@127.0.0.1:{port}"

    # A refused password: a configuration error (retrying cannot help) that names the user, never
    # the password; the messages wait until the profile or the password is fixed.
    monkeypatch.setenv("POSTROOM_TEST_SMTP_PASSWORD", "wrong-Pa55word")
    logon = make_logon(tmp_path, port, username="sam", password_env="POSTROOM_TEST_SMTP_PASSWORD")
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result.code == HResult.MAPI_E_UNCONFIGURED and "authentication as sam" in result.reason
    assert "wrong-Pa55word" not in status_text(logon) and "wrong-Pa55word" not in result.reason
    assert logon.status.status_code & StatusCode.FAILURE


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_auth_with_password_file(tmp_path: Path, start_server: Any) -> None:
    (tmp_path / "smtp.pw").write_text("file-Pa55word\n", encoding="utf-8")
    auth = Authenticator("sam", "file-Pa55word")
    handler, port = start_server(authenticator=auth, auth_require_tls=False, auth_required=True)
    logon = make_logon(tmp_path, port, username="sam", password_file="smtp.pw")
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result == SubmitResult.ok() and len(handler.received) == 1

    missing = make_logon(tmp_path, port, username="sam", password_file="missing.pw")
    result, _ = asyncio.run(submit(missing, make_message(rcpt("alice@example.test"))))
    assert result.code == HResult.MAPI_E_UNCONFIGURED and "cannot read the password file" in result.reason
    assert len(handler.received) == 1  # nothing sent without the password


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        unavailable("openssl is needed to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


def test_starttls_checks_the_certificate(tmp_path: Path, start_server: Any, certificate: tuple[Path, Path]) -> None:
    handler, port = start_server(tls_context=server_tls(certificate), require_starttls=True)

    logon = make_logon(tmp_path, port, security="starttls")
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result.code == HResult.MAPI_E_NETWORK_ERROR
    assert "certificate verify failed" in result.reason
    assert logon.status.status_code & StatusCode.FAILURE and handler.received == []

    logon = make_logon(tmp_path, port, security="starttls", ca_file=str(certificate[0]))
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result == SubmitResult.ok() and len(handler.received) == 1

    logon = make_logon(tmp_path, port, security="starttls", verify_tls=False)
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result == SubmitResult.ok() and len(handler.received) == 2
    assert "not verified" in logon.status.status_string


def test_starttls_is_never_skipped(tmp_path: Path, start_server: Any) -> None:
    handler, port = start_server()  # no STARTTLS offered
    logon = make_logon(tmp_path, port, security="starttls")
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result.code == HResult.MAPI_E_NETWORK_ERROR and "STARTTLS" in result.reason
    assert handler.received == []


def test_implicit_tls(tmp_path: Path, start_server: Any, certificate: tuple[Path, Path]) -> None:
    handler, port = start_server(ssl_context=server_tls(certificate))
    untrusted = make_logon(tmp_path, port, security="tls")  # a self-signed certificate, not in the trust store
    result, _ = asyncio.run(submit(untrusted, make_message(rcpt("alice@example.test"))))
    assert result.code == HResult.MAPI_E_NETWORK_ERROR and "certificate verify failed" in result.reason
    assert handler.received == [] and handler.ehlo == []  # refused before a word of SMTP

    logon = make_logon(tmp_path, port, security="tls", ca_file=str(certificate[0]))
    result, _ = asyncio.run(submit(logon, make_message(rcpt("alice@example.test"))))
    assert result == SubmitResult.ok() and len(handler.received) == 1
