"""postroom's own SMTP client protocol layer: the words said on one connection, and nothing else.

The smtp transport sends through this module rather than aiosmtplib because the send path is
where the daemon spends its CPU, and two things aiosmtplib cannot give were measured to matter
(benchmarks/smtp_client.py, README "A faster SMTP path"): PIPELINING (RFC 2920: MAIL, every RCPT
and DATA go out in one write and their replies are read in order, one round trip per message
instead of 3 + recipients) and a cheap reply path (an `asyncio.Protocol` that parses replies as
they arrive and hands them to one waiting future, with no stream reader, no per-command
`wait_for` task and no lock).

What it owns: connecting (plain, implicit TLS, STARTTLS with the caller's context, so certificate
checks stay on by default), EHLO (HELO when EHLO is refused) and the extensions offered, AUTH
(CRAM-MD5, PLAIN, LOGIN: the mechanisms the transport supported through aiosmtplib, in its order
of preference; and one-message mechanisms with an initial response, XOAUTH2 and OAUTHBEARER, whose
token `smtp.py` fetches), single commands, a pipelined group of commands, the message content (already
dot-stuffed once per message by `wire_content`) and QUIT. What it does not own: what a reply means
for a recipient (`smtp.py`) and when a connection is opened or reused (`smtp_pool.py`).

Every reply is awaited with a deadline (`timeout` seconds for the whole reply, so a server that
trickles a byte at a time cannot hold a connection for ever); a missed deadline closes the
connection, because a late reply would be taken for the next command's.

The exceptions subclass the builtins the callers already catch (`OSError`, `TimeoutError`,
`ConnectionError`), and carry the reply when there was one:

    SMTPClientError(OSError)
     ├── ServerDisconnected(ConnectionError)   the connection closed or broke
     ├── ReplyTimeout(TimeoutError)            no complete reply within the deadline
     ├── ProtocolViolation                     a reply that is not SMTP (the connection is closed)
     └── ReplyError                            a refusal where the dialogue cannot go on (.reply)
          └── AuthenticationFailed             AUTH refused (.reply.code tells 4xx from 5xx)
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

#: Longest reply line we accept (RFC 5321 §4.5.3.1.5 says 512 octets; servers exceed it in text).
MAX_LINE = 8192
#: At most this many lines in one reply (an EHLO reply has a few dozen at most).
MAX_REPLY_LINES = 256
#: The mechanisms used for AUTH, in order of preference (those aiosmtplib used before).
AUTH_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)
_CRLF = b"\r\n"
END_OF_DATA = b".\r\n"


# --- values and errors -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: its code and its text, the text lines joined with LF (without the codes)."""

    code: int
    message: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


class SMTPClientError(OSError):
    """Something went wrong on the connection; `str()` says what, for the status row."""


class ServerDisconnected(SMTPClientError, ConnectionError):
    """The server closed the connection, or it broke."""


class ReplyTimeout(SMTPClientError, TimeoutError):
    """No complete reply within the deadline; the connection is closed."""


class ProtocolViolation(SMTPClientError):
    """The server said something that is not an SMTP reply; the connection is closed."""


class ReplyError(SMTPClientError):
    """A refusal after which the dialogue cannot go on as planned (greeting, EHLO, STARTTLS)."""

    def __init__(self, text: str, reply: Reply) -> None:
        super().__init__(text)
        self.reply = reply


class AuthenticationFailed(ReplyError):
    """AUTH was refused; `reply.code` tells the server's trouble (4xx) from a wrong password (5xx)."""


def wire_content(data: bytes) -> bytes:
    """The message as it goes after DATA: CRLF line ends, leading dots doubled, and the final
    ``.CRLF`` (RFC 5321 §4.5.2). Computed once per message; every transaction reuses it."""
    crlf = data.count(_CRLF)  # counting allocates nothing: most messages are CRLF already
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LINE_ENDS.sub(_CRLF, data)
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    if data and not data.endswith(_CRLF):
        data += _CRLF
    return data + END_OF_DATA


# --- the protocol (reply parsing) ----------------------------------------------------------------


class _ReplyReader(asyncio.Protocol):
    """Parses the bytes the server sends into replies and hands each to the one waiting reader.

    Replies that arrive before anyone waits (a pipelined group's) queue up in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.replies: collections.deque[Reply] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.error: SMTPClientError | None = None
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._code = 0
        self._can_write: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            self._line(bytes(buffer[start:end]))
            start = end + 1
            if self.error is not None:
                return
        if start:
            del buffer[:start]
        if len(buffer) > MAX_LINE:
            self._fail(ProtocolViolation(f"the server sent a reply line longer than {MAX_LINE} octets"))

    def eof_received(self) -> bool | None:
        self._fail(ServerDisconnected("the server closed the connection"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            text = f"the connection was lost: {exc}" if exc else "the server closed the connection"
            self.error = ServerDisconnected(text)
        self._wake()
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    def pause_writing(self) -> None:
        if self._can_write is None or self._can_write.done():
            self._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    # parsing

    def _line(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r").decode("utf-8", "surrogateescape")
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
            self._fail(ProtocolViolation(f"the server sent something that is not an SMTP reply: {line[:80]!r}"))
            return
        code = int(line[:3])
        if self._lines and code != self._code:
            self._fail(ProtocolViolation(f"the server changed the reply code within one reply: {line[:80]!r}"))
            return
        self._code = code
        self._lines.append(line[4:])
        if len(line) > 3 and line[3] == "-":
            if len(self._lines) > MAX_REPLY_LINES:
                self._fail(ProtocolViolation(f"the server sent a reply of more than {MAX_REPLY_LINES} lines"))
            return
        lines, self._lines = self._lines, []
        self.replies.append(Reply(code, lines[0] if len(lines) == 1 else "\n".join(lines)))
        self._wake()

    def _fail(self, error: SMTPClientError) -> None:
        if self.error is None:
            self.error = error
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def writing_paused(self) -> bool:
        return self._can_write is not None and not self._can_write.done()

    async def drain(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            await self._can_write


def _timed_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ReplyTimeout("no reply from the server in time"))


# --- the client -------------------------------------------------------------------------------------


class SMTPClient:
    """One SMTP connection: connect with `open`, then commands; `close` or `quit` at the end.

    Not safe for two tasks at once: the pool hands a connection to one transaction at a time.
    """

    def __init__(self, protocol: _ReplyReader, timeout: float, where: str) -> None:
        self._protocol = protocol
        self.timeout = timeout
        self.where = where
        self.extensions: dict[str, str] = {}  # EHLO keyword (lower case) -> its parameters

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        timeout: float,
        helo_name: str,
        tls: ssl.SSLContext | None = None,
        starttls: bool = False,
    ) -> SMTPClient:
        """Connect, read the greeting, EHLO, and STARTTLS when `starttls` (then EHLO again).

        With `tls` and not `starttls`, TLS starts at once (port 465). STARTTLS must succeed: a
        server that does not offer it is an error, never a fall-back to plain text."""
        loop = asyncio.get_running_loop()
        where = f"{host}:{port}"
        implicit = tls if tls is not None and not starttls else None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    _ReplyReader, host, port, ssl=implicit, server_hostname=host if implicit else None
                ),
                timeout,
            )
        except TimeoutError:
            raise ReplyTimeout(f"no connection within {timeout:g} s") from None
        client = cls(protocol, timeout, where)
        try:
            greeting = await client.read_reply()
            if greeting.code != 220:
                raise ReplyError(f"the server refused the connection: {greeting.code} {greeting.message}", greeting)
            await client.ehlo(helo_name)
            if starttls:
                if tls is None:
                    raise ValueError("STARTTLS needs a TLS context")
                await client.starttls(tls, host)
                await client.ehlo(helo_name)
        except BaseException:
            client.close()
            raise
        return client

    async def ehlo(self, name: str) -> None:
        """EHLO, and HELO when the server refuses EHLO; remembers the extensions offered."""
        reply = await self.command(b"EHLO " + name.encode("ascii") + _CRLF)
        if reply.code == 250:
            extensions: dict[str, str] = {}
            for line in reply.message.split("\n")[1:]:
                keyword, _, params = line.strip().partition(" ")
                keyword = keyword.lower()
                if keyword.startswith("auth="):  # the pre-RFC 2554 form some servers still send
                    keyword, params = "auth", f"{keyword[5:]} {params}"
                    params = f"{extensions.get('auth', '')} {params}"
                if keyword:
                    extensions[keyword] = params.strip()
            self.extensions = extensions
            return
        if reply.code == 421:
            raise ReplyError(f"the server refused EHLO: {reply.code} {reply.message}", reply)
        reply = await self.command(b"HELO " + name.encode("ascii") + _CRLF)
        if reply.code != 250:
            raise ReplyError(f"the server refused EHLO and HELO: {reply.code} {reply.message}", reply)
        self.extensions = {}

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """STARTTLS (RFC 3207) with `context`: its certificate checks are the caller's."""
        if not self.supports("starttls"):
            raise SMTPClientError(f"the SMTP server {self.where} does not offer STARTTLS")
        reply = await self.command(b"STARTTLS\r\n")
        if reply.code != 220:
            raise ReplyError(f"the server refused STARTTLS: {reply.code} {reply.message}", reply)
        protocol = self._protocol
        assert protocol.transport is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                protocol.transport,
                protocol,
                context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=self.timeout,
            )
        except BaseException:
            protocol.transport.abort()
            raise
        if transport is None:  # the connection closed during the handshake
            raise ServerDisconnected("the connection closed during the TLS handshake")
        protocol.transport = transport
        self.extensions = {}  # RFC 3207 §4.2: forget what was offered before TLS

    async def login(self, username: str, password: str) -> None:
        """AUTH with the first mechanism of AUTH_MECHANISMS the server offers."""
        offered = set(self.extensions.get("auth", "").upper().split())
        for mechanism in AUTH_MECHANISMS:
            if mechanism in offered:
                break
        else:
            raise SMTPClientError(
                f"the SMTP server {self.where} offers none of the AUTH mechanisms {', '.join(AUTH_MECHANISMS)}"
            )
        user, secret = username.encode("utf-8"), password.encode("utf-8")
        if mechanism == "PLAIN":
            reply = await self.command(b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + secret) + _CRLF)
        elif mechanism == "LOGIN":
            reply = await self.command(b"AUTH LOGIN " + base64.b64encode(user) + _CRLF)
            if reply.code == 334:
                reply = await self.command(base64.b64encode(secret) + _CRLF)
        else:  # CRAM-MD5 (RFC 2195)
            reply = await self.command(b"AUTH CRAM-MD5\r\n")
            if reply.code == 334:
                try:
                    challenge = base64.b64decode(reply.message.encode("ascii"), validate=True)
                except ValueError:
                    self.close()
                    raise ProtocolViolation("the server sent a CRAM-MD5 challenge that is not base64") from None
                digest = hmac.new(secret, challenge, "md5").hexdigest().encode("ascii")
                reply = await self.command(base64.b64encode(user + b" " + digest) + _CRLF)
        if reply.code == 334:  # a server that asks for more than the mechanism needs: cancel
            reply = await self.command(b"*\r\n")
        if reply.code != 235:
            raise AuthenticationFailed(f"{reply.code} {reply.message}", reply)

    async def auth_initial(self, mechanism: str, response: bytes, abort: bytes) -> Reply:
        """AUTH `mechanism` with the base64 initial `response` (RFC 4954), for a mechanism of one
        message such as XOAUTH2 or OAUTHBEARER; a challenge (an error challenge, RFC 7628 §3.2.3)
        is answered with `abort` to get the final reply, which is returned (235: logged in)."""
        reply = await self.command(b"AUTH " + mechanism.encode("ascii") + b" " + response + _CRLF)
        if reply.code == 334:
            reply = await self.command(abort + _CRLF)
        return reply

    # --- commands -----------------------------------------------------------------------------------

    def supports(self, extension: str) -> bool:
        """Whether EHLO offered `extension` (lower case, e.g. "pipelining")."""
        return extension in self.extensions

    @property
    def is_connected(self) -> bool:
        transport = self._protocol.transport
        return self._protocol.error is None and transport is not None and not transport.is_closing()

    def write(self, data: bytes) -> None:
        """Queue bytes for the server (the event loop sends them); raises when disconnected."""
        protocol = self._protocol
        if protocol.error is not None:
            raise protocol.error
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise ServerDisconnected("the connection is closed")
        transport.write(data)

    async def read_reply(self, timeout: float | None = None) -> Reply:
        """The next reply, waiting at most `timeout` (default: the client's) for all of it."""
        protocol = self._protocol
        if protocol.replies:
            return protocol.replies.popleft()
        if protocol.error is not None:
            raise protocol.error
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        protocol.waiter = waiter
        timer = loop.call_later(self.timeout if timeout is None else timeout, _timed_out, waiter)
        try:
            await waiter
        except ReplyTimeout:
            self.close()
            raise ReplyTimeout(
                f"no reply from the SMTP server {self.where} within {self.timeout if timeout is None else timeout:g} s"
            ) from None
        finally:
            timer.cancel()
            protocol.waiter = None
        if protocol.replies:
            return protocol.replies.popleft()
        assert protocol.error is not None
        raise protocol.error

    async def command(self, line: bytes) -> Reply:
        """Send one command line (with its CRLF) and read its reply."""
        self.write(line)
        return await self.read_reply()

    async def pipeline(self, lines: Sequence[bytes]) -> None:
        """Send a group of command lines in one write (RFC 2920); read their replies with
        `read_reply`, one per line, in order."""
        self.write(b"".join(lines))
        await self._drain(self.timeout)

    async def send_content(self, content: bytes, timeout: float) -> Reply:
        """After a 354: the message from `wire_content`, then the reply to its end (`timeout`)."""
        self.write(content)
        await self._drain(timeout)
        return await self.read_reply(timeout)

    async def _drain(self, timeout: float) -> None:
        """Wait while the socket's buffer is full (rare: a large message, or a server that stopped
        reading), at most `timeout` seconds; then the connection is closed."""
        if not self._protocol.writing_paused:
            return
        try:
            await asyncio.wait_for(self._protocol.drain(), timeout)
        except TimeoutError:
            self.close()
            raise ReplyTimeout(f"the SMTP server {self.where} took nothing for {timeout:g} s") from None
        if self._protocol.error is not None:
            raise self._protocol.error

    async def quit(self, timeout: float) -> None:
        """QUIT politely, then close, whatever the server says."""
        try:
            self.write(b"QUIT\r\n")
            await self.read_reply(timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Close the socket at once (nothing is awaited)."""
        transport = self._protocol.transport
        if transport is not None:
            transport.abort()
