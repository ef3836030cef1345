"""The SMTP submission listener: programs hand mail to postroom as to any mail server on localhost.

One aiosmtpd protocol per connection, with postroom's policy in the handler's hooks, one per verb:

* MAIL: AUTH is required when the profile has listener users and the client is not on loopback;
  a queue over `max_queued` messages is `452 4.3.1` (try later).
* RCPT: checked against routing at once, as Postfix checks its `relay_domains`: an address no
  transport takes is `550 5.1.1`, so the client learns it while it can still tell its user,
  rather than from an NDR later. More than `max_recipients` is `452 4.5.3`.
* DATA: the message's exact bytes and its envelope (envelope.py) go into the Outbox and are
  submitted; `250` is sent only once that write is durable. Concurrent connections share each
  durable commit, run off the event loop (intake.py). A store that cannot take the write is `451 4.3.0`; a full
  disk `452 4.3.1`: the client keeps the message and tries again, nothing is lost.

DSN (RFC 3461) is offered in EHLO: MAIL takes `RET=FULL|HDRS` and `ENVID=xtext`, RCPT takes
`NOTIFY=…` and `ORCPT=type;xtext` (mapi/dsn.py); they are kept on the message and its rows, and the
reports to the envelope sender obey them. A bad value is `501 5.5.4`, a parameter on the wrong
verb `555 5.5.4`. aiosmtpd knows none of them and upper-cases every parameter it reads, so
`_Protocol` takes them out of the path, as written, before aiosmtpd sees it.

Limits: the message size (`552`, announced in EHLO as SIZE), recipients per message, concurrent
connections (`421 4.7.0` to one more), and an idle timeout after which a silent client is cut off
(`421`). AUTH (PLAIN, LOGIN) is offered only over TLS (STARTTLS), except on a loopback address,
where nobody can listen in.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword
from aiosmtpd.smtp import Session as SMTPSession

from ..envelope import SubmissionSource, envelope_message
from ..mapi.codes import HResult, MAPIError, StoreDiskTrouble, StoreUnavailable
from ..mapi.dsn import (
    DsnParameterError,
    DsnUnknownParameter,
    MessageDsn,
    RecipientDsn,
    read_mail_parameters,
    read_rcpt_parameters,
    split_dsn_parameters,
)
from ..mapi.hostport import is_loopback
from ..mapi.message import MessageData
from .intake import IntakeCommit
from .listener_settings import ListenerSettings
from .listener_users import listener_users, verify_password
from .protocol import ProtocolManager

log = logging.getLogger("postroom.listener")

#: `<address>` and then nothing or blank-separated parameters, with no comment or quoting anywhere:
#: a path whose parse can be remembered (aiosmtpd reads it with the email package's parser, the
#: dearest step of MAIL and RCPT).
_PLAIN_PATH = re.compile(r"\s*(<[^<>()\"\\\s]*>)(?:\s+([^()\"]*))?\Z")
#: How many parsed paths a listener remembers.
_PATHS_KEPT = 1024


def _say(transport: asyncio.BaseTransport, line: bytes) -> None:
    """Write a last reply. uvloop's transports are not asyncio.WriteTransport subclasses (the
    daemon runs on uvloop when it is installed), so the method is asked for, not the class."""
    write = getattr(transport, "write", None)
    if write is not None:
        write(line)


class _DsnEnvelope(Envelope):
    """aiosmtpd's per-transaction record (new at MAIL, RSET and after DATA), with what MAIL and
    each accepted RCPT asked of DSNs."""

    def __init__(self) -> None:
        super().__init__()
        self.dsn: MessageDsn | None = None
        self.rcpt_dsn: dict[str, RecipientDsn] = {}


class _Protocol(SMTP):
    """aiosmtpd's protocol, with a limit on concurrent connections and on a connection's length
    (aiosmtpd's own timeout is per line: a client that drips a line now and then would stay)."""

    def __init__(self, listener: SubmissionListener, **kw: Any) -> None:
        super().__init__(listener, **kw)
        self.listener = listener
        self.counted = False
        self.deadline: asyncio.TimerHandle | None = None
        self.dsn_given: list[tuple[str, str | None]] = []  # the last MAIL or RCPT's DSN parameters
        # RFC 3461 §5: DSN lengthens MAIL by up to 110 characters (RET, ENVID) and RCPT by up to
        # 530 (NOTIFY, ORCPT). aiosmtpd's limits live in one dict on its class, which every new
        # connection clears; these are this connection's own.
        base = SMTP.command_size_limit
        self.command_size_limits = defaultdict(lambda: base, {"MAIL": base + 110, "RCPT": base + 530})

    def _create_envelope(self) -> Envelope:
        return _DsnEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # a new connection (not the TLS layer after STARTTLS)
            if self.listener.connections >= self.listener.settings.max_connections:
                peer = transport.get_extra_info("peername")
                count = self.listener.connections
                log.warning("connection from %s refused: %d connections already", _peer(peer), count)
                _say(transport, b"421 4.7.0 Too many connections, try again later\r\n")
                transport.close()
                return
            self.counted = True
            self.listener.connections += 1
            limit = self.listener.settings.max_session_seconds
            self.deadline = asyncio.get_running_loop().call_later(limit, self._too_long, transport)
        super().connection_made(transport)

    def _too_long(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        limit = self.listener.settings.max_session_seconds
        log.warning("connection from %s cut off: open longer than %g s", _peer(peer), limit)
        if self.transport is not None:
            _say(self.transport, b"421 4.4.2 Connection open too long, closing\r\n")
        (self.transport or transport).close()

    def _timeout_cb(self) -> None:
        peer = self.session.peer if self.session is not None else None
        log.warning(
            "connection from %s timed out: silent for %g s", _peer(peer), self.listener.settings.timeout_seconds
        )
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """A MAIL or RCPT path and its parameters, without the DSN ones (kept in `dsn_given`)."""
        self.dsn_given = []
        address, params = self._read_path(arg)
        if address is None or not params:
            return address, params
        self.dsn_given, params = split_dsn_parameters(params)
        return address, params

    def _read_path(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's reading of a MAIL or RCPT path, remembered per listener for a plain
        `<address> PARAMS`: the programs that hand mail over send the same paths again and again."""
        plain = _PLAIN_PATH.match(arg)
        if plain is None:
            return super()._getaddr(arg)
        path, params = plain.group(1), (plain.group(2) or "").strip()
        paths = self.listener.paths
        address = paths.get(path)
        if address is None:
            address, _ = super()._getaddr(path)
            if address is None:
                return None, None
            if len(paths) >= _PATHS_KEPT:
                paths.clear()
            paths[path] = address
        return address, params

    def connection_lost(self, error: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.counted:
            self.counted = False
            self.listener.connections -= 1
        if self.session is not None:
            super().connection_lost(error)


def _dsn_given(server: SMTP, session: SMTPSession) -> list[tuple[str, str | None]]:
    """The DSN parameters of the command being handled; DsnUnknownParameter after HELO (without
    EHLO a client has not seen DSN offered)."""
    given = server.dsn_given if isinstance(server, _Protocol) else []
    if given and not session.extended_smtp:
        raise DsnUnknownParameter("DSN parameters need EHLO")
    return given


def _dsn_refusal(exc: DsnParameterError) -> str:
    if isinstance(exc, DsnUnknownParameter):
        return f"555 5.5.4 {exc}"
    return f"501 5.5.4 {exc}"


def _peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class SubmissionListener:
    """The listener over one protocol manager's runtime: its servers and its hooks."""

    def __init__(
        self, protocol: ProtocolManager, settings: ListenerSettings, prepare: Callable[[MessageData], None]
    ) -> None:
        self.protocol = protocol
        self.runtime = protocol.runtime
        self.settings = settings
        self.prepare = prepare  # what submission adds (the face's sender and Message-ID stamp)
        self.commit = IntakeCommit(self.runtime.store, self.runtime.clock)
        self.connections = 0
        self.accepted = 0
        self.servers: list[asyncio.Server] = []
        self.paths: dict[str, str] = {}  # MAIL and RCPT paths read (_Protocol._getaddr)
        self._queued_seen: tuple[float, int] = (0.0, 0)

    # --- the servers -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on every address; MAPI_E_NETWORK_ERROR naming the address when one cannot be bound."""
        loop = asyncio.get_running_loop()
        tls = self.settings.tls_context()
        await self.protocol.ensure_logged_on()
        try:
            for host, port in self.settings.listen:

                def factory(host: str = host) -> _Protocol:
                    return _Protocol(
                        self,
                        data_size_limit=self.settings.max_message_bytes,
                        enable_SMTPUTF8=True,
                        hostname=self.settings.hostname,
                        ident="postroom ESMTP",
                        tls_context=tls,
                        timeout=self.settings.timeout_seconds,
                        auth_require_tls=not is_loopback(host),
                        authenticator=self.authenticate,
                        loop=loop,
                    )

                reuse = self.settings.reuse_port or None
                server = await loop.create_server(factory, host=host, port=port, reuse_port=reuse)
                self.servers.append(server)
                log.info("listening on %s:%d (SMTP submission)", host, self.port_of(server) or port)
        except OSError as exc:
            await self.close()
            where = ", ".join(f"{h}:{p}" for h, p in self.settings.listen)
            raise MAPIError(HResult.MAPI_E_NETWORK_ERROR, f"cannot listen on {where}: {exc.strerror or exc}") from exc

    @staticmethod
    def port_of(server: asyncio.Server) -> int | None:
        for sock in server.sockets:
            return int(sock.getsockname()[1])
        return None

    @property
    def ports(self) -> list[int]:
        return [p for p in (self.port_of(s) for s in self.servers) if p is not None]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers = []
        await asyncio.get_running_loop().run_in_executor(None, self.commit.close)

    # --- policy --------------------------------------------------------------------------------------
    async def handle_EHLO(
        self, server: SMTP, session: SMTPSession, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when there is no EHLO hook
        return [*responses[:-1], "250-DSN", responses[-1]]

    def authenticate(
        self, server: SMTP, session: SMTPSession, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        name = auth_data.login.decode("utf-8", "replace")
        stored = listener_users(self.runtime.profile).get(name)
        ok = stored is not None and verify_password(auth_data.password, stored)
        if not ok:
            log.warning("AUTH %s failed for user %r from %s", mechanism, name, _peer(session.peer))
        return AuthResult(success=ok, handled=False, auth_data=name if ok else None)

    def _auth_needed(self, session: SMTPSession) -> bool:
        if session.authenticated or not listener_users(self.runtime.profile):
            return False
        peer: object = session.peer  # (host, port), whatever aiosmtpd's annotation says
        return not (isinstance(peer, tuple) and is_loopback(str(peer[0])))

    def _queue_full(self) -> bool:
        limit = self.settings.max_queued
        if limit is None:
            return False
        now = time.monotonic()
        seen_at, count = self._queued_seen
        if now - seen_at > 1.0:  # counting the queue costs a query: once a second is enough
            count = len(self.runtime.store.queue())
            self._queued_seen = (now, count)
        return count >= limit

    async def handle_MAIL(
        self, server: SMTP, session: SMTPSession, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self._auth_needed(session):
            return "530 5.7.0 Authentication required"
        try:
            full = self._queue_full()
        except StoreUnavailable:
            return "451 4.3.0 Mail system temporarily unavailable, try again later"
        if full:
            log.warning("MAIL from %s refused: the queue is full", _peer(session.peer))
            return "452 4.3.1 Insufficient system storage: the queue is full, try again later"
        try:
            dsn = read_mail_parameters(_dsn_given(server, session))
        except DsnParameterError as exc:
            return _dsn_refusal(exc)
        if isinstance(envelope, _DsnEnvelope):
            envelope.dsn = dsn
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: SMTPSession, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        try:
            dsn = read_rcpt_parameters(_dsn_given(server, session))
        except DsnParameterError as exc:
            return _dsn_refusal(exc)
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return "452 4.5.3 Too many recipients"
        if not address or "@" not in address:
            return f"553 5.1.3 <{address}>: a recipient must be a full address (user@domain)"
        # The routing as logged on now: a daemon logs on again when the profile changes (and on SIGHUP).
        plan = self.runtime.transports.router().route("SMTP", None, address)
        if not plan.offers:
            return f"550 5.1.1 <{address}>: recipient address rejected: no transport takes it"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        if isinstance(envelope, _DsnEnvelope) and address not in envelope.rcpt_dsn:
            envelope.rcpt_dsn[address] = dsn  # a path given twice is one recipient: its first RCPT says
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        dsn, rcpt_dsn = (envelope.dsn, envelope.rcpt_dsn) if isinstance(envelope, _DsnEnvelope) else (None, None)
        message = envelope_message(
            raw, envelope.mail_from or "", envelope.rcpt_tos, SubmissionSource.SMTP, dsn, rcpt_dsn
        )
        try:
            self.prepare(message)
        except MAPIError as exc:  # the profile, re-read after the start, has a bad setting
            log.error("message from %s not taken: %s", _peer(session.peer), exc.message)
            return "451 4.3.5 System incorrectly configured, try again later"
        try:
            mid = await self.commit.submit(message)
        except StoreDiskTrouble as exc:
            log.warning("message from %s not taken: %s", _peer(session.peer), exc.message)
            return "452 4.3.1 Insufficient system storage, try again later"
        except StoreUnavailable as exc:
            log.warning("message from %s not taken: %s", _peer(session.peer), exc.message)
            return "451 4.3.0 Mail system temporarily unavailable, try again later"
        except MAPIError as exc:
            log.warning("message from %s refused: %s", _peer(session.peer), exc.message)
            return f"554 5.6.0 Message refused: {exc.message}"
        self.accepted += 1
        seen_at, count = self._queued_seen
        self._queued_seen = (seen_at, count + 1)  # counted until the next look at the queue
        log.info(
            "id=%d from=<%s> size=%d nrcpt=%d client=%s user=%s accepted",
            mid,
            envelope.mail_from or "",
            len(raw),
            len(envelope.rcpt_tos),
            _peer(session.peer),
            session.auth_data or "-",
        )
        return f"250 2.0.0 OK: queued as {mid}"
