"""The smtp transport's own client on the wire: PIPELINING (RFC 2920), per-recipient replies in a
pipelined group, servers that hang, trickle or drop mid-group, and real Postfix on loopback.

The well-behaved cases run against aiosmtpd in test_transport_smtp.py (each lock-step and
pipelined); the servers here are scripted byte for byte (tests/support/scripted_smtp.py).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from peers import Peers, wait_until

import postroom
from postroom.mapi.codes import HResult
from postroom.mapi.flags import EndMessageFlags, NDRDiag, NDRReason, StatusCode
from postroom.transports.smtp_client import ReplyTimeout, SMTPClient, wire_content
from postroom.transports.spi import SubmitResult

from support.scripted_smtp import EHLO_LOCK_STEP, EHLO_PIPELINING, Peer, ScriptedServer
from support.smtp_transport import by_address, make_logon, make_message, needs_uvloop, rcpt, run, submit

pytestmark = pytest.mark.integration

LOOPS = ["asyncio", pytest.param("uvloop", marks=needs_uvloop)]


# --- pipelining ---------------------------------------------------------------------------------------


async def answers_only_whole_groups(peer: Peer) -> None:
    """A server that replies to MAIL only once RCPT and DATA arrived too: a client that waits for
    each reply before its next command never gets one."""
    await peer.greet(EHLO_PIPELINING)
    await whole_groups(peer)


async def whole_groups(peer: Peer) -> None:
    """After the greeting (and AUTH): each group answered once all of it arrived, until the client stops."""
    while True:
        group = await peer.commands_until("DATA")
        if not group or group[-1] != "DATA":
            return
        rcpts = len(group) - 2
        await peer.reply(b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n" * rcpts, b"354 End data with <CR><LF>.<CR><LF>\r\n")
        await peer.content()
        await peer.reply(b"250 2.0.0 Ok: queued\r\n")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_pipelined_message_goes_in_one_round_trip(tmp_path: Path, loop: str) -> None:
    with ScriptedServer(answers_only_whole_groups) as server:
        logon = make_logon(tmp_path, server.port, timeout=2)

        async def two() -> list[SubmitResult]:
            first = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
            second = make_message(rcpt("carol@example.test"))
            return [(await submit(logon, m))[0] for m in (first, second)]

        assert run(two(), loop) == [SubmitResult.ok(), SubmitResult.ok()]
        assert len(server.peers) == 1  # the second message reused the connection
        assert server.commands[1:] == [
            "MAIL FROM:<sam@sender.test> SIZE=" + server.commands[1].rpartition("=")[2],
            "RCPT TO:<alice@example.test>",
            "RCPT TO:<bob@example.test>",
            "DATA",
            "MAIL FROM:<sam@sender.test> SIZE=" + server.commands[5].rpartition("=")[2],
            "RCPT TO:<carol@example.test>",
            "DATA",
        ]
        assert all(b"\r\n..leading dot\r\n" in content for content in server.contents)  # dot-stuffed


async def mixed_replies(peer: Peer) -> None:
    await peer.greet(EHLO_PIPELINING)
    await peer.group(
        b"250 2.1.0 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
        b"550-5.1.1 <bob@example.test>: Recipient address rejected:\r\n550 5.1.1 User unknown in virtual mailbox table\r\n",
        b"450 4.2.1 <carol@example.test>: mailbox busy\r\n",
        b"251 2.1.5 will forward to <dave@elsewhere.test>\r\n",
        b"354 go ahead\r\n",
    )
    await peer.content()
    await peer.reply(b"250 2.0.0 Ok: queued as 42\r\n")
    await peer.until_closed()


def test_each_recipient_gets_its_own_reply_from_a_pipelined_group(tmp_path: Path) -> None:
    with ScriptedServer(mixed_replies) as server:
        logon = make_logon(tmp_path, server.port)
        message = make_message(*(rcpt(f"{who}@example.test") for who in ("alice", "bob", "carol", "dave")))
        result, end = run(submit(logon, message))
        assert result == SubmitResult.ok() and end == EndMessageFlags.RESEND_LATER
        got = by_address(message)
        assert got["alice@example.test"].mark is not None and got["alice@example.test"].mark.delivered
        assert got["dave@example.test"].mark is not None and got["dave@example.test"].mark.delivered
        bob = got["bob@example.test"].mark
        assert bob is not None and not bob.delivered and bob.status_code == 550
        assert bob.text == (
            "550-5.1.1 <bob@example.test>: Recipient address rejected:\n550 5.1.1 User unknown in virtual mailbox table"
        )
        assert (bob.reason, bob.diag) == (NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.MAIL_RECIPIENT_UNKNOWN)  # from 5.1.1
        carol = got["carol@example.test"]
        assert carol.mark is None and carol.temporary == "450 4.2.1 <carol@example.test>: mailbox busy"
        assert len(server.contents) == 1


def every_rcpt_refused(*, data_reply: bytes) -> Callable[[Peer], Coroutine[Any, Any, None]]:
    async def script(peer: Peer) -> None:
        await peer.greet(EHLO_PIPELINING)
        await peer.group(
            b"250 2.1.0 Ok\r\n",
            b"550 5.1.1 <alice@example.test>: User unknown\r\n",
            b"550 5.7.1 <bob@example.test>: Relay access denied\r\n",
            data_reply,
        )
        if data_reply.startswith(b"354"):
            await peer.content()
            await peer.reply(b"554 5.5.1 Error: no valid recipients\r\n")
        await peer.rset_and_quit()

    return script


@pytest.mark.parametrize(
    "data_reply",
    [b"554 5.5.1 Error: no valid recipients\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n"],
    ids=["DATA refused", "DATA accepted anyway"],
)
def test_data_after_every_rcpt_failed_sends_no_message(tmp_path: Path, data_reply: bytes) -> None:
    """RFC 2920 §3.1: with no recipient accepted the server refuses DATA; a server that says 354
    anyway gets the end of data at once, never the message; either way the transaction is reset
    and each recipient fails with its own RCPT reply, not DATA's."""
    with ScriptedServer(every_rcpt_refused(data_reply=data_reply)) as server:
        logon = make_logon(tmp_path, server.port)
        message = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
        result, _ = run(submit(logon, message))
        assert result == SubmitResult.ok()
        got = by_address(message)
        alice, bob = got["alice@example.test"].mark, got["bob@example.test"].mark
        assert alice is not None and alice.text == "550 5.1.1 <alice@example.test>: User unknown"
        assert bob is not None and bob.text == "550 5.7.1 <bob@example.test>: Relay access denied"
        assert server.contents in ([], [b""])  # nothing of the message went
        assert "RSET" in server.commands
        run(logon.logoff())


def test_a_pipelined_452_sends_the_rest_in_another_transaction(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.greet(EHLO_PIPELINING)
        group = await peer.commands_until("DATA")
        await peer.reply(b"250 Ok\r\n", b"250 Ok\r\n", b"452 4.5.3 Error: too many recipients\r\n", b"354 go\r\n")
        await peer.content()
        await peer.reply(b"250 Ok\r\n")
        group = await peer.commands_until("DATA")
        await peer.reply(b"250 Ok\r\n" * (len(group) - 1), b"354 go\r\n")
        await peer.content()
        await peer.reply(b"250 Ok\r\n")
        await peer.until_closed()

    with ScriptedServer(script) as server:
        logon = make_logon(tmp_path, server.port)
        message = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
        result, _ = run(submit(logon, message))
        assert result == SubmitResult.ok()
        assert all(r.mark is not None and r.mark.delivered for r in message.recipients)
        rcpts = [line for line in server.commands if line.startswith("RCPT")]
        assert rcpts == ["RCPT TO:<alice@example.test>", "RCPT TO:<bob@example.test>", "RCPT TO:<bob@example.test>"]
        assert len(server.contents) == 2


# --- servers that hang, trickle or drop -----------------------------------------------------------------


def hangs_after_rcpt(ehlo: bytes) -> Callable[[Peer], Coroutine[Any, Any, None]]:
    async def script(peer: Peer) -> None:
        await peer.greet(ehlo)
        await peer.command()
        await peer.reply(b"250 2.1.0 Ok\r\n")
        await peer.command()
        await peer.reply(b"250 2.1.5 Ok\r\n")
        await peer.until_closed()  # and never another word

    return script


@pytest.mark.parametrize("ehlo", [EHLO_PIPELINING, EHLO_LOCK_STEP], ids=["pipelined", "lock-step"])
def test_a_server_that_hangs_after_rcpt_is_a_network_error_after_the_timeout(tmp_path: Path, ehlo: bytes) -> None:
    with ScriptedServer(hangs_after_rcpt(ehlo)) as server:
        logon = make_logon(tmp_path, server.port, timeout=0.3, temporary_failure_wait=7)
        message = make_message(rcpt("alice@example.test"))
        result, _ = run(submit(logon, message))
        assert result.code == HResult.MAPI_E_NETWORK_ERROR and result.wait_seconds == 7
        assert "no reply from the SMTP server" in result.reason and "outcome unknown" not in result.reason
        assert message.recipients[0].mark is None and server.contents == []
        assert logon.status.status_code & StatusCode.FAILURE


async def trickles(peer: Peer) -> None:
    """Greets, then answers EHLO one byte every 50 ms, for ever."""
    await peer.reply(b"220 scripted.test ESMTP\r\n")
    await peer.command()
    while True:
        await peer.reply(b"2")
        await asyncio.sleep(0.05)


def test_a_server_that_trickles_its_reply_cannot_hold_the_connection(tmp_path: Path) -> None:
    """The timeout is for the whole reply, not for each byte of it."""
    with ScriptedServer(trickles) as server:
        logon = make_logon(tmp_path, server.port, timeout=0.3)
        result, _ = run(submit(logon, make_message(rcpt("alice@example.test"))))
        assert result.code == HResult.MAPI_E_NETWORK_ERROR and "no reply from the SMTP server" in result.reason


async def drops_mid_group(peer: Peer) -> None:
    await peer.greet(EHLO_PIPELINING)
    await peer.group(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")  # MAIL and the first RCPT, then gone


def test_a_drop_in_the_middle_of_a_pipelined_group_is_a_network_error_with_nothing_sent(tmp_path: Path) -> None:
    with ScriptedServer(drops_mid_group) as server:
        logon = make_logon(tmp_path, server.port)
        message = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
        result, _ = run(submit(logon, message))
        assert result.code == HResult.MAPI_E_NETWORK_ERROR and "lost at RCPT TO" in result.reason
        assert "outcome unknown" not in result.reason  # the message never went: sending again is safe
        assert all(r.mark is None and not r.temporary for r in message.recipients)
        assert server.contents == []


async def drops_after_the_message(peer: Peer) -> None:
    await peer.greet(EHLO_PIPELINING)
    group = await peer.commands_until("DATA")
    await peer.reply(b"250 2.1.5 Ok\r\n" * (len(group) - 1), b"354 go ahead\r\n")
    await peer.content()  # took the whole message, then gone without a reply


def test_a_drop_after_the_message_went_says_outcome_unknown(tmp_path: Path) -> None:
    """RFC 1047: the message may have been delivered; it is sent again, so the recipients and the
    network error (which the spooler records in the store's WAIT event) say it may arrive twice."""
    with ScriptedServer(drops_after_the_message) as server:
        logon = make_logon(tmp_path, server.port)
        message = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
        result, _ = run(submit(logon, message))
        assert result.code == HResult.MAPI_E_NETWORK_ERROR and result.reason.startswith("outcome unknown")
        assert "may arrive twice" in result.reason
        assert all(r.mark is None and (r.temporary or "").startswith("outcome unknown") for r in message.recipients)
        assert len(server.contents) == 1


# --- AUTH ---------------------------------------------------------------------------------------------


async def cram_md5_only(peer: Peer) -> None:
    await peer.greet(b"250-scripted.test\r\n250-PIPELINING\r\n250 AUTH CRAM-MD5\r\n")
    assert await peer.command() == "AUTH CRAM-MD5"
    challenge = b"<1896.697170952@scripted.test>"
    await peer.reply(b"334 " + base64.b64encode(challenge) + b"\r\n")
    user, _, digest = base64.b64decode(await peer.command()).partition(b" ")
    expected = hmac.new(b"cr4m-Pa55word", challenge, "md5").hexdigest().encode()
    if (user, digest) != (b"sam", expected):
        await peer.reply(b"535 5.7.8 Authentication credentials invalid\r\n")
        return
    await peer.reply(b"235 2.7.0 Authentication successful\r\n")
    await whole_groups(peer)


def test_auth_cram_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTROOM_TEST_SMTP_PASSWORD", "cr4m-Pa55word")
    with ScriptedServer(cram_md5_only) as server:
        logon = make_logon(tmp_path, server.port, username="sam", password_env="POSTROOM_TEST_SMTP_PASSWORD")
        result, _ = run(submit(logon, make_message(rcpt("alice@example.test"))))
        assert result == SubmitResult.ok() and len(server.contents) == 1
        assert not any("cr4m" in line for line in server.commands)


# --- real Postfix -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listener", "loop"),
    [
        ("pipelined", "asyncio"),
        ("lock-step", "asyncio"),
        pytest.param("pipelined", "uvloop", marks=needs_uvloop),
    ],
)
def test_postfix_with_mixed_recipients(peers: Peers, tmp_path: Path, listener: str, loop: str) -> None:
    """Postfix: one delivered, one unknown user (550 5.1.1), one deferred (450), on its listener
    that offers PIPELINING and on the one that does not."""
    port = peers.smtp_port if listener == "pipelined" else peers.lockstep_smtp_port
    user = peers.new_postfix_user()
    logon = make_logon(tmp_path, port, timeout=30)
    message = make_message(rcpt(user), rcpt("nobody-here@example.test"), rcpt("later@defer.test"))

    async def send() -> tuple[SubmitResult, EndMessageFlags, bool]:
        result, end = await submit(logon, message)
        conn = logon.pool._idle[0] if logon.pool._idle else None
        assert conn is not None
        pipelined = conn.smtp.supports("pipelining")
        await logon.logoff()
        return result, end, pipelined

    result, end, pipelined = run(send(), loop)
    assert pipelined == (listener == "pipelined")
    assert result == SubmitResult.ok() and end == EndMessageFlags.RESEND_LATER
    got = by_address(message)
    delivered = got[user].mark
    assert delivered is not None and delivered.delivered
    unknown = got["nobody-here@example.test"].mark
    assert unknown is not None and unknown.status_code == 550 and unknown.text.startswith("550 5.1.1 ")
    deferred = got["later@defer.test"]
    assert deferred.mark is None and (deferred.temporary or "").startswith("450 4.")
    assert wait_until(lambda: bool(peers.maildir_files(user)), 30)  # Postfix delivers from its queue


async def refuses_the_sender(peer: Peer) -> None:
    """MAIL refused; then a careless server answers the pipelined DATA with 354 all the same."""
    await peer.greet(EHLO_PIPELINING)
    await peer.group(
        b"553 5.7.1 <sam@sender.test>: Sender address rejected\r\n", b"503 5.5.1 need MAIL\r\n", b"354 go\r\n"
    )
    await peer.content()
    await peer.reply(b"554 5.5.1 no valid recipients\r\n")
    await peer.rset_and_quit()


def test_a_refused_sender_fails_every_recipient_and_the_pipelined_rest_is_wound_up(tmp_path: Path) -> None:
    with ScriptedServer(refuses_the_sender) as server:
        logon = make_logon(tmp_path, server.port)
        message = make_message(rcpt("alice@example.test"))
        result, _ = run(submit(logon, message))
        assert result == SubmitResult.ok()
        mark = message.recipients[0].mark
        assert mark is not None and mark.text == "553 5.7.1 <sam@sender.test>: Sender address rejected"
        assert server.contents == [b""]  # the end of data alone, never the message
        assert server.commands[-1] == "RSET"
        assert logon.pool._idle  # the connection is still good for the next message
        run(logon.logoff())


async def stops_reading(peer: Peer) -> None:
    await peer.greet(EHLO_PIPELINING)
    await asyncio.sleep(30)  # reads nothing more: the client's socket buffer fills up


def test_a_server_that_stops_reading_the_message_cannot_hold_the_connection() -> None:
    async def send() -> str:
        client = await SMTPClient.open("127.0.0.1", server.port, timeout=2, helo_name="client.test")
        try:
            await client.send_content(
                wire_content(b"x" * 1000 + b"\r\n") * 16_000, 0.3
            )  # ~16 MB, more than the socket buffers hold
        except ReplyTimeout as exc:
            return str(exc)
        finally:
            client.close()
        return "sent"

    with ScriptedServer(stops_reading) as server:
        assert "took nothing for 0.3 s" in run(send())


def test_an_outcome_unknown_is_kept_in_the_store(profile: Path) -> None:
    """Through the face: the drop after the message went is kept in the store (the queue's last
    error, the recipient's "why" and the WAIT event) while the message waits to go again."""
    with ScriptedServer(drops_after_the_message) as flaky, postroom.logon(profile) as session:
        session.add_service("smtp", "relay", {"host": "127.0.0.1", "port": flaky.port, "security": "none"})
        mid = session.create_message("Twice?", "Maybe").to("alice@example.test").submit()
        session.deliver()
        [entry] = session.queue()
        assert entry.last_error is not None and "outcome unknown" in entry.last_error
        [report] = session.recipient_report(mid)
        assert report.state == "waiting" and "may arrive twice" in (report.why or "")
        assert any("outcome unknown" in event.detail for event in session.events(mid))
        assert len(flaky.contents) == 1


async def login_only_in_the_old_form(peer: Peer) -> None:
    """Offers AUTH only as `AUTH=LOGIN` (before RFC 2554), and takes the user name as an initial response."""
    await peer.greet(b"250-scripted.test\r\n250-AUTH=LOGIN\r\n250 PIPELINING\r\n")
    verb, _, user = (await peer.command()).rpartition(" ")
    await peer.reply(b"334 UGFzc3dvcmQ6\r\n")
    password = base64.b64decode(await peer.command())
    if (verb, base64.b64decode(user), password) != ("AUTH LOGIN", b"sam", b"l0gin-Pa55word"):
        await peer.reply(b"535 5.7.8 Authentication credentials invalid\r\n")
        return
    await peer.reply(b"235 2.7.0 Authentication successful\r\n")
    await whole_groups(peer)


def test_auth_login_offered_in_the_old_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTROOM_TEST_SMTP_PASSWORD", "l0gin-Pa55word")
    with ScriptedServer(login_only_in_the_old_form) as server:
        logon = make_logon(tmp_path, server.port, username="sam", password_env="POSTROOM_TEST_SMTP_PASSWORD")
        result, _ = run(submit(logon, make_message(rcpt("alice@example.test"))))
        assert result == SubmitResult.ok() and len(server.contents) == 1
