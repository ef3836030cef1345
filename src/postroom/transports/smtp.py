"""The `smtp` transport: sends messages to an SMTP server (a smarthost or submission server).

The RFC 5322 form of the message (`mime.to_bytes`, no Bcc header) is made once per message (and
its wire form, dots doubled, once too) and sent to the pending recipients this transport takes,
with the low-level SMTP commands (MAIL, RCPT, DATA) through postroom's own client
(`smtp_client.py`), so every recipient's own reply is seen. When the server offers PIPELINING
(RFC 2920), MAIL, every RCPT and DATA go in one write and the replies are read in order; otherwise
each command waits for its reply. Either way the replies mean the same:

* 250/251 at RCPT and 250 after DATA: delivered, without a delivery report from us (the server
  only relays; a DSN that comes back later becomes the report). When the server offers DSN and
  the sender asked for a report, the request is passed on: the sender's own RFC 3461 parameters
  (RET, ENVID on MAIL; NOTIFY, ORCPT on each RCPT, as the listener or sendmail kept them,
  xtext-encoded again; only while MAIL FROM is that sender's own, since the next hop reports to
  it), else for a MAPI delivery report ``NOTIFY=SUCCESS,FAILURE``, ``ORCPT``,
  ``RET=HDRS`` and ``ENVID`` (the Message-ID). A recipient whose NOTIFY the server took is marked
  `dsn_passed_on`: the next hop reports, so postroom sends no `relayed` report for it.
* 5xx at RCPT: that recipient failed, with the server's reply as the NDR text, its code as
  PR_NDR_STATUS_CODE and reason/diagnostic from the enhanced status code (`mime.status_to_ndr`).
  5xx at MAIL fails every recipient, 5xx after DATA every recipient accepted at RCPT.
* 4xx: a temporary failure. On a non-OK result the spooler discards every mark of the call, so:
  when nothing was marked, the answer is MAPI_E_WAIT (the spooler's backoff) with the
  reply; when some recipients were marked (delivered, or failed for good), the answer is S_OK
  with the temporarily failed recipients left unmarked, and `end_message` answers
  END_RESEND_LATER, so the spooler keeps them for this transport and offers them again later.
  A 452 at RCPT after other recipients were accepted ("too many recipients") sends the rest in
  another transaction at once.
* Network trouble (refused or dropped connection, timeouts, TLS and certificate failures, failed
  AUTH) before any recipient was delivered: MAPI_E_NETWORK_ERROR and the status row says FAILURE;
  the next success clears it. A disconnect after the server answered 250 to DATA is a delivery.
  A connection lost (or a reply timed out) after the message went but before the server's reply
  is an outcome unknown (RFC 1047): the message is sent again later and may arrive twice, and its
  recipients' deferral text and the network error say so. Pipelined, when every RCPT failed the
  server refuses DATA (RFC 2920 §3.1); one that says 354 anyway gets the end of data alone.

Connections are made lazily on the first message (never with LogonFlags.NO_CONNECT: then every
message waits) and kept in a pool (`smtp_pool.py`, which says how idle connections close and how
`connections`, the limit for every spooler process on the store together, is shared). A
connection is replaced after `max_messages_per_connection` messages, after a 421 or ``452 4.5.3``
answer to MAIL (the transaction is then retried once on a fresh connection) or when it dropped.
A failed transaction is reset with RSET; when RSET fails too the connection is dropped. A message
that finds no connection slot free waits `SLOT_RETRY_SECONDS` (MAPI_E_WAIT, not an error) and
whichever spooler has a connection free takes it.

Addresses with CR, LF, NUL, other control characters, white space, ``<`` or ``>`` are never put
on the wire: such recipients fail with MAPI_DIAG_MAIL_ADDRESS_INCORRECT. A message or address that
needs SMTPUTF8 (RFC 6531) uses it when the server offers it; otherwise the recipients fail for good.

Options:

* `host`: the server (required). `port`: default 587 with `security` "starttls" (the default),
  465 with "tls" (TLS from the start), 25 with "none" (plain text).
* `username`, with `password_env` (the name of an environment variable holding the password) or
  `password_file` (a file holding it; relative to the profile directory): AUTH after connecting.
  The password is read at logon and never goes into the profile, a log or the status table;
  a plain `password` option is refused.
* `verify_tls` (default true): check the server's certificate; `ca_file`: a CA bundle (PEM) to
  trust, e.g. a private CA; relative to the profile directory.
* `helo_name`: the name sent in EHLO (default: this host's FQDN). `timeout`: seconds for connecting
  and for each reply (default 30; the reply to the end of DATA may take ten times that).
* `connections` (default 2; the limit for every spooler process on the store together, see below),
  `max_messages_per_connection` (default 100).
* `address_types` (default ["SMTP"]); `domains`: only recipients in these domains are taken, the
  others are left for the next transport (default: every domain).
* `from_address`, `from_name`: the account's identity, the From of the messages it sends that name
  no sender of their own (no PR_SENT_REPRESENTING_*: neither `send --from` nor an --eml From).
  It comes before the profile's identity (postroom.identity gives the whole order) and never adds a
  Sender header.
* `sender`: the envelope sender (default: the address the message goes out from, i.e. the
  account's from_address for a message it gives its From, else PR_SENDER_EMAIL_ADDRESS when it is
  an SMTP address, else the username when it is an address). Reports (REPORT.* classes) are sent
  with the null sender.
* `envelope_from` (issue 18): "message" (the default) or "account". Relayed mail (the SMTP
  listener's, postroom-sendmail's: PR_POSTROOM_SUBMISSION_SOURCE) goes out with the envelope
  sender its client gave (PR_POSTROOM_ENVELOPE_FROM: MAIL FROM, sendmail's -f), as Postfix and
  msmtp pass it on, before `sender` and from_address; with "account" (a smarthost that refuses
  foreign senders) it gets the account's, as any other message. The null sender `<>` (a bounce)
  stays `<>` either way: given the account's address it could bounce back and loop.
* `temporary_failure_wait`: seconds before a message that met a temporary failure is tried again
  (default: none of our own; the spooler backs off, 300 s doubling up to 4000 s).
* `tnef` (issue 20): "never" (the default), "auto" or "always". With "auto" a message goes out
  with its MAPI properties in a `winmail.dat` part (TNEF, `formats/tnef.py`) when every recipient
  it sends to takes rich information, as Outlook decides it (`tnef.wants_rich_info`: PR_SEND_RICH_INFO,
  else a one-off entry ID without MAPI_ONE_OFF_NO_RICH_INFO); with "always", every message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .. import mime
from ..addressing import MAX_SMTP_ADDRESS, NOT_IN_EMAIL_ADDRESS, has_break, longer_than_smtp_allows
from ..formats import tnef
from ..identity import check_address, check_name
from ..mapi import tags as T
from ..mapi.codes import MAPIError
from ..mapi.dsn import MAX_ORCPT, Notify
from ..mapi.dsn import xtext_encode as xtext
from ..mapi.flags import (
    EndMessageFlags,
    LogoffFlags,
    LogonFlags,
    NDRDiag,
    NDRReason,
    RecipientType,
    StatusCode,
    ValidateFlags,
)
from ..mapi.message import MessageData, Recipient
from .oauth import ABORT as _OAUTH_ABORT
from .oauth import OPTION_HELP as _OAUTH_HELP
from .oauth import TokenSource, initial_response, token_options
from .options import Secret, client_tls_context, read_password, refuse_password, resolve_path, setup_problems
from .options import invalid as _invalid
from .options import number as _number
from .options import password_source as _password_source
from .options import server as _server
from .options import string_list as _string_list
from .options import tls_checks as _tls_checks
from .options import token as _token
from .smtp_client import END_OF_DATA, AuthenticationFailed, Reply, ServerDisconnected, SMTPClient, wire_content
from .smtp_pool import Connection, ConnectionPool, NoSlot
from .spi import (
    OutboundMessage,
    OutboundRecipient,
    RecipientScope,
    Registration,
    SubmitResult,
    TransportLogon,
    TransportProvider,
    nonblocking,
    usable_recipients,
)

log = logging.getLogger(__name__)

SECURITY_MODES = ("starttls", "tls", "none")
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECTIONS = 2
DEFAULT_MAX_MESSAGES = 100
DEFAULT_ADDRESS_TYPES = ("SMTP",)
#: The reply to the end of DATA may take this many times `timeout` (RFC 5321 §4.5.3.2: 10 minutes).
DATA_TIMEOUT_FACTOR = 10
#: RFC 3461 §4.4: ENVID is at most 100 characters.
MAX_ENVID = 100
SLOT_RETRY_SECONDS = 1.0

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
#: What an SMTP path never holds: the characters no e-mail address holds, and '<' or '>' (which
#: would end the path early).
_BAD_ADDRESS_CHARS = re.compile(f"[{NOT_IN_EMAIL_ADDRESS}<>]")

_NETWORK_ERRORS = (OSError,)  # smtp_client's errors are OSErrors, as are TLS and socket errors
_CONNECT_ERRORS = (OSError, ValueError)
_DATA = b"DATA\r\n"
_RSET = b"RSET\r\n"
_CRLF = b"\r\n"


@functools.cache
def _default_helo_name() -> str:
    """This host's FQDN, looked up once per process (it may ask the resolver)."""
    name = socket.getfqdn()
    return name if name.isascii() else "localhost"


def envelope_address_problem(address: str) -> str | None:
    """Why `address` cannot go into MAIL FROM / RCPT TO as it is, or None when it can.

    Refuses what could smuggle a command or a header onto the wire (CR, LF, NUL, control
    characters), white space and angle brackets (which would end the path early), and an
    address without a local part and a domain.
    """
    if not address:
        return "the address is empty"
    if has_break(address):
        return "the address contains a line break or a NUL character"
    bad = _BAD_ADDRESS_CHARS.search(address)
    if bad is not None:
        char = bad.group()
        if char in "<>":
            return "the address contains '<' or '>'"
        if char.isspace():
            return "the address contains white space"
        return "the address contains a control character"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "the address is not of the form local-part@domain"
    if longer_than_smtp_allows(address):
        return f"the address is longer than {MAX_SMTP_ADDRESS} octets"
    return None


def reply_text(code: int, message: str) -> str:
    """The server's reply as it was on the wire: `550 5.1.1 <x>: …`, one line per reply line."""
    lines = message.split("\n") if message else [""]
    last = len(lines) - 1
    return "\n".join(f"{code}{' ' if i == last else '-'}{line}".rstrip() for i, line in enumerate(lines))


def reply_to_ndr(message: str) -> tuple[NDRReason, NDRDiag]:
    """Reason and diagnostic from the enhanced status code at the start of a reply's text."""
    match = _ENHANCED.match(message)
    if match is None:
        return NDRReason.TRANSFER_FAILED, NDRDiag.NO_DIAGNOSTIC
    return mime.status_to_ndr(match.group(1))


def _without_bcc_rows(data: MessageData) -> MessageData:
    """The message with its Bcc rows left out, sharing its properties and attachments.

    Bcc rows never reach the header (to_bytes with include_bcc=False), so the bytes are the same;
    but the converter checks every row's address, and a Bcc row this transport has already failed
    (say, one with a line break in its address) must not make the whole message unconvertible.
    The property dictionary is shared, so a Message-ID the converter generates is kept.
    """
    rows = [row for row in data.recipients if _kind(row) != RecipientType.BCC]
    if len(rows) == len(data.recipients):
        return data
    return dataclasses.replace(data, recipients=rows)


def _account_identity(opts: Mapping[str, Any]) -> dict[str, str]:
    """The checked from_address and from_name options (a from_name alone says nothing)."""
    out: dict[str, str] = {}
    try:
        if "from_address" in opts:
            out["from_address"] = check_address(opts["from_address"], "option 'from_address'")
        if "from_name" in opts:
            out["from_name"] = check_name(opts["from_name"], "option 'from_name'")
    except MAPIError as exc:
        raise _invalid(exc.message) from None
    if "from_name" in out and "from_address" not in out:
        raise _invalid("option 'from_name' needs 'from_address': the address the name goes with")
    return out


def _kind(row: Recipient) -> int:
    try:
        return int(row.props.get(T.PR_RECIPIENT_TYPE, RecipientType.TO)) & 0xFFFF
    except (TypeError, ValueError):
        return RecipientType.TO


# --- configuration ------------------------------------------------------------------------------


class EnvelopeFrom(StrEnum):
    """Whose envelope sender relayed mail goes out with (the `envelope_from` option)."""

    MESSAGE = "message"  # the one its client gave (MAIL FROM at the listener, sendmail's -f)
    ACCOUNT = "account"  # the account's own, as for a message composed here


class TnefMode(StrEnum):
    """When a message goes out as TNEF (the `tnef` option)."""

    NEVER = "never"
    AUTO = "auto"
    ALWAYS = "always"


@dataclass(frozen=True)
class SMTPConfig:
    """The validated options of one smtp service (never the password itself)."""

    host: str
    port: int
    security: str
    username: str | None
    password_env: str | None
    password_file: Path | None
    verify_tls: bool
    ca_file: Path | None
    helo_name: str | None
    timeout: float
    connections: int
    max_messages_per_connection: int
    address_types: tuple[str, ...]
    domains: frozenset[str] | None
    sender: str | None
    from_address: str | None
    from_name: str
    temporary_failure_wait: float  # 0: no wait of our own, the spooler backs off
    tnef: TnefMode = TnefMode.NEVER
    envelope_from: EnvelopeFrom = EnvelopeFrom.MESSAGE
    oauth: TokenSource | None = None  # OAuth2 (XOAUTH2 / OAUTHBEARER) instead of a password

    @classmethod
    def from_options(cls, options: Mapping[str, Any], profile_dir: Path) -> SMTPConfig:
        opts = SMTPProvider.validate_options(options)
        domains = opts.get("domains")
        return cls(
            host=opts["host"],
            port=opts["port"],
            security=opts["security"],
            username=opts.get("username"),
            password_env=opts.get("password_env"),
            password_file=resolve_path(opts.get("password_file"), profile_dir),
            verify_tls=opts["verify_tls"],
            ca_file=resolve_path(opts.get("ca_file"), profile_dir),
            helo_name=opts.get("helo_name"),
            timeout=opts["timeout"],
            connections=opts["connections"],
            max_messages_per_connection=opts["max_messages_per_connection"],
            address_types=tuple(opts["address_types"]),
            domains=None if domains is None else frozenset(domains),
            sender=opts.get("sender"),
            from_address=opts.get("from_address"),
            from_name=opts.get("from_name", ""),
            temporary_failure_wait=opts.get("temporary_failure_wait", 0.0),
            tnef=TnefMode(opts.get("tnef", TnefMode.NEVER)),
            envelope_from=EnvelopeFrom(opts.get("envelope_from", EnvelopeFrom.MESSAGE)),
            oauth=TokenSource.from_options(opts, profile_dir),
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def read_password(self) -> str | None:
        """The password from the environment or the password file; MAPI_E_FAILONEPROVIDER when missing."""
        if self.username is None or self.oauth is not None:
            return None
        return read_password(self.password_env, self.password_file)

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context (certificate and host name checks on unless verify_tls is false)."""
        return client_tls_context(self.security, self.ca_file, self.verify_tls)


# --- connections ---------------------------------------------------------------------------------


class _ConnectFailed(Exception):
    """Opening a connection failed; the text is ready for the status row."""


class _Unconfigured(_ConnectFailed):
    """The connection cannot work as configured (no AUTH offered, the password refused, no password)."""


class _Retry(Exception):
    """MAIL met 421, 452 4.5.3 or a dropped reused connection: try once more on a fresh one."""

    def __init__(self, text: str, reply: str | None) -> None:
        super().__init__(text)
        self.text = text
        self.reply = reply  # the server's reply, None for a dropped connection


@dataclass
class _Transaction:
    """What one SMTP transaction left to do."""

    temporary: list[tuple[OutboundRecipient, str]] = field(default_factory=list)
    carry: list[OutboundRecipient] = field(default_factory=list)
    delivered: int = 0


@dataclass(frozen=True, slots=True)
class _Content:
    """The message as it goes on the wire, made once per message and reused by every transaction
    and connection it takes (not rendered or dot-stuffed again per recipient batch or retry)."""

    wire: bytes  # CRLF line ends, dots doubled, the final ".CRLF" (smtp_client.wire_content)
    size: int  # the message's size for MAIL's SIZE= (RFC 1870)
    ascii: bool  # 7-bit: no BODY=8BITMIME needed

    @classmethod
    def of(cls, data: bytes) -> _Content:
        return cls(wire_content(data), len(data), data.isascii())


class _NetworkTrouble(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


# --- the logon ------------------------------------------------------------------------------------


class SMTPLogon(TransportLogon):
    def __init__(self, provider: SMTPProvider, flags: LogonFlags, config: SMTPConfig) -> None:
        super().__init__(provider, flags)
        self.config = config
        # A password or CA file that cannot be read is a configuration problem, not a failed logon:
        # the transport keeps its place in routing, and its messages wait until it is fixed.
        self.unconfigured = ""
        self._password: Secret | None = None
        self._tls: ssl.SSLContext | None = None
        try:
            password = config.read_password()
            self._password = None if password is None else Secret(password)
            self._tls = config.tls_context()
        except MAPIError as exc:
            self.unconfigured = exc.message
            self.status.failed(exc.message)
        scope = None if config.domains is None else RecipientScope.for_domains(config.domains)
        self.registration = Registration.of(*config.address_types, scope=scope)
        self.offline = bool(flags & LogonFlags.NO_CONNECT)
        self.status.identity = f"{config.username}@{config.where}" if config.username else config.where
        self._tls_note = ""
        if config.security != "none" and not config.verify_tls:
            self._tls_note = " (TLS certificate not verified)"
            self.status.extra["verify_tls"] = False
            log.warning("%s: TLS certificate checks are disabled for %s (verify_tls = false)", self.name, config.where)
        if config.security == "none" and config.username:
            log.warning("%s: AUTH to %s without TLS sends the password in plain text", self.name, config.where)
        self.status.status_string = (
            "offline (no connect)" if self.offline else f"not connected yet to {config.where}{self._tls_note}"
        )
        self._resend_later: set[int] = set()
        self._connected_text = f"connected to {config.where}{self._tls_note}"
        self._connected_code: StatusCode | None = None
        self.pool = ConnectionPool(
            limit=config.connections,
            max_messages=config.max_messages_per_connection,
            where=config.where,
            opener=self._open_connection,
            support=lambda: self.provider.context.support,
        )

    @property
    def connections_opened(self) -> int:
        return self.pool.opened

    def address_types(self) -> Registration:
        return self.registration

    def _is_mine(self, rcpt: OutboundRecipient) -> bool:
        if rcpt.address_type.upper() not in self.config.address_types:
            return False
        return self.registration.takes(rcpt.address_type, rcpt.email_address)

    # --- submit --------------------------------------------------------------------------------

    async def submit_message(self, message: OutboundMessage, flags: int) -> SubmitResult:
        taken = [r for r in message.pending() if self._is_mine(r)]
        if not taken:
            return SubmitResult.not_me()
        wait = self.config.temporary_failure_wait
        if self.offline:
            return SubmitResult.wait(wait, "offline (no connect)")
        if self.unconfigured:
            self.status.failed(self.unconfigured)
            return SubmitResult.unconfigured(self.unconfigured)

        sendable = usable_recipients(taken, envelope_address_problem, "Cannot send to {address}")
        if not sendable:
            return SubmitResult.ok()

        sender = self._envelope_sender(message)
        problem = envelope_address_problem(sender) if sender else None
        if problem is not None:
            for rcpt in sendable:
                rcpt.mark_failed(
                    f"Cannot send with the envelope sender {sender!r}: {problem}.",
                    reason=NDRReason.TRANSFER_IMPOSSIBLE,
                    diag=NDRDiag.MAIL_ADDRESS_INCORRECT,
                )
            return SubmitResult.ok()

        try:
            content = _without_bcc_rows(message.data)
            if self.config.tnef is TnefMode.ALWAYS or (
                self.config.tnef is TnefMode.AUTO and all(tnef.wants_rich_info(r.row) for r in sendable)
            ):
                content = tnef.with_tnef(content)
            data, headers_need_utf8 = mime.to_bytes_with_flags(
                content, sender=self._account_author(message), include_bcc=False
            )
        except MAPIError as exc:  # the message itself is malformed: no retry can help
            for rcpt in sendable:
                rcpt.mark_failed(
                    f"The message cannot be converted to Internet format: {exc.message}",
                    reason=NDRReason.CONVERSION_NOT_PERFORMED,
                    diag=NDRDiag.CONTENT_SYNTAX_IN_ERROR,
                )
            return SubmitResult.ok()
        except OSError as exc:  # an attachment could not be read
            return SubmitResult.wait(wait, f"cannot read the message: {exc}")
        needs_utf8 = headers_need_utf8 or not sender.isascii()

        async with self.pool.bind_loop():
            return await self._deliver(message, sendable, sender, _Content.of(data), needs_utf8)

    def _account_author(self, message: OutboundMessage) -> Recipient | None:
        """The account's identity as the From, for a message that names no sender of its own."""
        if not self.config.from_address or message.props.get(T.PR_SENT_REPRESENTING_EMAIL_ADDRESS):
            return None
        return Recipient(
            props={
                T.PR_DISPLAY_NAME: self.config.from_name,
                T.PR_ADDRTYPE: "SMTP",
                T.PR_EMAIL_ADDRESS: self.config.from_address,
            }
        )

    def _envelope_sender(self, message: OutboundMessage) -> str:
        if message.data.message_class.upper().startswith("REPORT."):
            return ""  # reports go out with the null reverse-path, so they never bounce (RFC 3461, 8098)
        relayed = self._relayed_sender(message)
        if relayed is not None:
            return relayed
        if self.config.sender:
            return self.config.sender
        author = self._account_author(message)
        if author is not None:
            return author.email_address
        if str(message.props.get(T.PR_SENDER_ADDRTYPE) or "").upper() == "SMTP":
            address = str(message.props.get(T.PR_SENDER_EMAIL_ADDRESS) or "")
            if address:
                return address
        if self.config.username and "@" in self.config.username:
            return self.config.username
        return ""

    def _relayed_sender(self, message: OutboundMessage) -> str | None:
        """The envelope sender a relayed message's client gave, when this account passes it on
        (`envelope_from`); "" (the null sender) always. None for a message composed here."""
        if not message.props.get(T.PR_POSTROOM_SUBMISSION_SOURCE):
            return None
        given = message.props.get(T.PR_POSTROOM_ENVELOPE_FROM)
        if not isinstance(given, str):
            return None
        address = given.strip().removeprefix("<").removesuffix(">")
        if not address:
            return ""
        return address if self.config.envelope_from is EnvelopeFrom.MESSAGE else None

    async def _deliver(
        self,
        message: OutboundMessage,
        recipients: list[OutboundRecipient],
        sender: str,
        content: _Content,
        needs_utf8: bool,
    ) -> SubmitResult:
        temporary: list[tuple[OutboundRecipient, str]] = []
        delivered = 0
        queue = recipients
        retried = False
        fresh = False
        network_error: str | None = None
        while queue:
            try:
                conn = await self.pool.checkout(fresh=fresh)
            except _Unconfigured as exc:
                self.status.failed(str(exc))
                log.warning("%s: %s", self.name, exc)
                if delivered == 0 and not any(r.mark is not None for r in message.recipients):
                    return SubmitResult.unconfigured(str(exc))
                temporary += [(r, str(exc)) for r in queue if not r.responsibility]
                break
            except _ConnectFailed as exc:
                network_error = str(exc)
                break
            except NoSlot as exc:
                if delivered == 0 and not any(r.mark is not None for r in message.recipients):
                    return SubmitResult.wait(SLOT_RETRY_SECONDS, str(exc))
                temporary += [(r, str(exc)) for r in queue if not r.responsibility]
                break
            fresh = False
            try:
                tx = await self._transaction(conn, message, queue, sender, content, needs_utf8)
            except _Retry as exc:
                conn.broken = True
                await self.pool.checkin(conn)
                if not retried:
                    retried, fresh = True, True
                    continue
                if exc.reply is None:
                    network_error = exc.text
                else:
                    temporary += [(r, exc.reply) for r in queue if not r.responsibility]
                break
            except _NetworkTrouble as exc:
                conn.broken = True
                await self.pool.checkin(conn)
                network_error = exc.text
                break
            except BaseException:
                # A bug or a cancellation mid-transaction: never leave a transaction open.
                conn.broken = True
                await self.pool.checkin(conn)
                raise
            await self.pool.checkin(conn)
            self._connected()
            delivered += tx.delivered
            temporary += tx.temporary
            queue = tx.carry

        if network_error is not None:
            log.warning("%s: %s", self.name, network_error)
            self.status.failed(network_error)
            if delivered == 0:
                # The spooler drops every mark of this call: the whole message is tried again.
                return SubmitResult.network_error(self.config.temporary_failure_wait, network_error)
        pending = [r for r in recipients if not r.responsibility]
        if not pending:
            return SubmitResult.ok()
        for rcpt, reply in temporary:
            if not rcpt.responsibility:
                rcpt.defer(reply)  # the server's own words, shown while the recipient waits
        if any(r.mark is not None for r in message.recipients):
            # Some were marked in this call; keeping those marks needs S_OK, so the rest are
            # left unmarked and end_message asks the spooler to offer them again later.
            self._resend_later.add(message.ref)
            return SubmitResult.ok()
        reason = temporary[-1][1] if temporary else (network_error or "temporary failure")
        return SubmitResult.wait(self.config.temporary_failure_wait, reason)

    async def _transaction(
        self,
        conn: Connection,
        message: OutboundMessage,
        recipients: Sequence[OutboundRecipient],
        sender: str,
        content: _Content,
        needs_utf8: bool,
    ) -> _Transaction:
        """One MAIL/RCPT…/DATA transaction; marks recipients; raises _Retry/_NetworkTrouble."""
        smtp = conn.smtp
        tx = _Transaction()
        where = self.config.where
        utf8_ok = smtp.supports("smtputf8")
        batch: list[OutboundRecipient] = []
        for rcpt in recipients:
            if rcpt.responsibility:
                continue
            if not rcpt.email_address.isascii() and not utf8_ok:
                rcpt.mark_failed(
                    f"Cannot send to {rcpt.email_address!r}: the server {where} does not support SMTPUTF8, "
                    "which this address needs.",
                    reason=NDRReason.TRANSFER_IMPOSSIBLE,
                    diag=NDRDiag.MAIL_ADDRESS_INCORRECT,
                )
            elif needs_utf8 and not utf8_ok:
                rcpt.mark_failed(
                    f"The server {where} does not support SMTPUTF8, which this message needs "
                    "(an address in its header or its sender is not ASCII).",
                    reason=NDRReason.CONVERSION_NOT_PERFORMED,
                    diag=NDRDiag.DOWNGRADING_IMPOSSIBLE,
                )
            else:
                batch.append(rcpt)
        if not batch:
            return tx
        use_utf8 = utf8_ok and (needs_utf8 or any(not r.email_address.isascii() for r in batch))
        encoding = "utf-8" if use_utf8 else "ascii"

        # MAIL FROM, with the extensions the server offers.
        mail = [b"MAIL FROM:<", sender.encode(encoding), b">"]
        if smtp.supports("size"):
            mail.append(b" SIZE=%d" % content.size)
        if use_utf8:
            mail.append(b" SMTPUTF8")
        if (use_utf8 or not content.ascii) and smtp.supports("8bitmime"):
            mail.append(b" BODY=8BITMIME")
        # DSN (RFC 3461), when the server offers it: the sender's own request (the listener's or
        # sendmail's RET/ENVID/NOTIFY/ORCPT) is passed on as given; without one, the MAPI report
        # request becomes NOTIFY (and RET=HDRS, ENVID=the Message-ID).
        # The next hop reports to MAIL FROM: the sender's own request goes on only when MAIL FROM
        # is still the sender who made it (not when envelope_from = "account" replaced it).
        dsn = smtp.supports("dsn")
        own = dsn and bool(sender) and sender == self._relayed_sender(message)
        default_notify = self._dsn_notify(message) if dsn else None
        notify = {id(r): self._recipient_notify(r, default_notify, own) for r in batch} if dsn else {}
        if dsn:
            mail.append(self._dsn_mail_parameters(message, default_notify, any(notify.values()), own))
        mail.append(_CRLF)
        rcpt_lines = [self._rcpt_line(rcpt, notify.get(id(rcpt)), encoding, own) for rcpt in batch]
        mail_line = b"".join(mail)
        conn.messages += 1

        # With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go in one write and the replies are
        # read in order; without it, each command waits for its reply (lock-step).
        pipelined = smtp.supports("pipelining")
        try:
            if pipelined:
                await smtp.pipeline([mail_line, *rcpt_lines, _DATA])
                reply = await smtp.read_reply()
            else:
                reply = await smtp.command(mail_line)
        except _NETWORK_ERRORS as exc:
            text = f"connection to {where} lost at MAIL FROM: {exc}"
            if conn.reused and isinstance(exc, ServerDisconnected):
                raise _Retry(text, None) from exc
            raise _NetworkTrouble(text) from exc
        text = reply_text(reply.code, reply.message)
        if reply.code == 421 or (reply.code == 452 and reply.message.startswith("4.5.3")):
            raise _Retry(text, text)
        if not reply.ok:
            self._refused(batch, reply.code, reply.message, tx)
            if pipelined:  # the RCPTs' and DATA's replies (503: no MAIL) are still to come
                await self._skip_replies(conn, len(batch) + 1)
            await self._rset(conn)
            return tx

        # RCPT TO: every recipient gets its own answer.
        accepted: list[OutboundRecipient] = []
        too_many: list[tuple[OutboundRecipient, Reply]] = []
        for index, rcpt in enumerate(batch):
            try:
                reply = await (smtp.read_reply() if pipelined else smtp.command(rcpt_lines[index]))
            except _NETWORK_ERRORS as exc:
                raise _NetworkTrouble(f"connection to {where} lost at RCPT TO: {exc}") from exc
            if reply.ok:  # 250, or 251 "will forward"
                accepted.append(rcpt)
            elif reply.code == 421:  # the server is closing the connection: no DATA
                conn.broken = True
                text = reply_text(reply.code, reply.message)
                tx.temporary += [(r, text) for r in [*accepted, *batch[index:]]]
                return tx
            elif reply.code == 452 and pipelined:  # decided once every reply is in, below
                too_many.append((rcpt, reply))
            elif reply.code == 452 and accepted:  # too many recipients: the rest in another transaction
                tx.carry = list(batch[index:])
                break
            else:
                self._refused([rcpt], reply.code, reply.message, tx)
        for rcpt, reply in too_many:
            if accepted:  # too many recipients: those in another transaction
                tx.carry.append(rcpt)
            else:
                self._refused([rcpt], reply.code, reply.message, tx)

        # DATA. Pipelined, it was sent already: when no recipient was accepted the server refuses
        # it (RFC 2920 §3.1: 503 or 554); one that says 354 anyway gets an empty message that it
        # cannot deliver to anyone, then RSET.
        try:
            if pipelined:
                reply = await smtp.read_reply()
                if not accepted:
                    if reply.code == 354:
                        await smtp.send_content(END_OF_DATA, self.config.timeout)
                    await self._rset(conn)
                    return tx
            elif not accepted:
                await self._rset(conn)
                return tx
            else:
                reply = await smtp.command(_DATA)
        except _NETWORK_ERRORS as exc:
            raise _NetworkTrouble(f"connection to {where} lost at DATA: {exc}") from exc
        if reply.code != 354:
            self._refused(accepted, reply.code, reply.message, tx)
            await self._rset(conn)
            return tx
        try:
            reply = await smtp.send_content(content.wire, self.config.timeout * DATA_TIMEOUT_FACTOR)
        except _NETWORK_ERRORS as exc:
            # The message went (or was going) out; whether the server took it is unknown
            # (RFC 1047). It is sent again later, so it may arrive twice: the recipients say so.
            text = (
                f"outcome unknown: connection to {where} lost after the message was sent, before the "
                f"server's reply ({exc}); it will be sent again and may arrive twice"
            )
            for rcpt in accepted:
                rcpt.defer(text)
            raise _NetworkTrouble(text) from exc
        if reply.code == 250:
            for rcpt in accepted:
                # Relayed: the server cannot confirm final delivery; a DSN may come back later.
                # When it took the DSN request (NOTIFY) it reports itself, so we say nothing.
                rcpt.mark_delivered(report=False, dsn_passed_on=notify.get(id(rcpt)) is not None)
            tx.delivered += len(accepted)
            return tx
        self._refused(accepted, reply.code, reply.message, tx)
        await self._rset(conn)
        return tx

    @staticmethod
    def _rcpt_line(rcpt: OutboundRecipient, notify: str | None, encoding: str, own: bool) -> bytes:
        line = b"RCPT TO:<" + rcpt.email_address.encode(encoding) + b">"
        if notify is not None:
            line += f" NOTIFY={notify}".encode("ascii")
            orcpt = rcpt.row.props.get(T.PR_POSTROOM_DSN_ORCPT) if own else None
            if isinstance(orcpt, str) and orcpt:  # the sender's own, "type;address" decoded
                kind, _, address = orcpt.partition(";")
                given = f"{kind};{xtext(address)}"
                if len(given) <= MAX_ORCPT:
                    line += f" ORCPT={given}".encode("ascii")
            elif rcpt.email_address.isascii():
                line += f" ORCPT=rfc822;{xtext(rcpt.email_address)}".encode("ascii")
        return line + _CRLF

    @staticmethod
    def _recipient_notify(rcpt: OutboundRecipient, default: str | None, own: bool) -> str | None:
        """The NOTIFY value for this recipient's RCPT: the sender's own (RFC 3461, kept by the
        listener or sendmail), else the one the MAPI report request gives, else None (none sent)."""
        given = rcpt.row.props.get(T.PR_POSTROOM_DSN_NOTIFY) if own else None
        if isinstance(given, str) and given:
            words = {w.strip().upper() for w in given.split(",")}
            ordered = [n for n in Notify if n in words]  # the order dsn.RecipientDsn writes them
            if ordered:
                return ",".join(ordered)
        return default

    @staticmethod
    def _dsn_mail_parameters(
        message: OutboundMessage, default_notify: str | None, any_notify: bool, own: bool
    ) -> bytes:
        """RET and ENVID for MAIL FROM: the sender's own when given; else RET=HDRS and the
        Message-ID as ENVID when some recipient asks for a report; else nothing."""
        out = b""
        ret = message.props.get(T.PR_POSTROOM_DSN_RET) if own else None
        if isinstance(ret, str) and ret.upper() in ("FULL", "HDRS"):
            out += f" RET={ret.upper()}".encode("ascii")
        elif default_notify is not None or any_notify:
            out += b" RET=HDRS"
        envid = message.props.get(T.PR_POSTROOM_DSN_ENVID) if own else None
        if not (isinstance(envid, str) and envid):
            envid = str(message.props.get(T.PR_INTERNET_MESSAGE_ID) or "") if default_notify or any_notify else ""
        if envid and len(xtext(envid)) <= MAX_ENVID:
            out += f" ENVID={xtext(envid)}".encode("ascii")
        return out

    @staticmethod
    def _dsn_notify(message: OutboundMessage) -> str | None:
        """The NOTIFY value for RCPT, or None when the server's defaults are what the sender wants."""
        dr = bool(message.props.get(T.PR_ORIGINATOR_DELIVERY_REPORT_REQUESTED, False))
        ndr = bool(message.props.get(T.PR_ORIGINATOR_NON_DELIVERY_REPORT_REQUESTED, True))
        if not dr and ndr:
            return None
        wanted = [word for word, on in (("SUCCESS", dr), ("FAILURE", ndr)) if on]
        return ",".join(wanted) or "NEVER"

    @staticmethod
    def _refused(recipients: Sequence[OutboundRecipient], code: int, message: str, tx: _Transaction) -> None:
        """A non-2xx reply for these recipients: 5xx fails them, anything else is temporary."""
        text = reply_text(code, message)
        if 500 <= code < 600:
            reason, diag = reply_to_ndr(message)
            for rcpt in recipients:
                rcpt.mark_failed(text, reason=reason, diag=diag, status_code=code)
        else:
            tx.temporary += [(r, text) for r in recipients]

    async def _skip_replies(self, conn: Connection, count: int) -> None:
        """Read and drop the replies to commands sent in a pipelined group that no longer matter
        (the last is DATA's: a server that says 354 to it anyway gets the end of data at once)."""
        try:
            for _ in range(count):
                reply = await conn.smtp.read_reply()
            if reply.code == 354:
                await conn.smtp.send_content(END_OF_DATA, self.config.timeout)
        except _NETWORK_ERRORS:
            conn.broken = True

    async def _rset(self, conn: Connection) -> None:
        """End a failed transaction; a connection that cannot even do RSET is dropped."""
        if conn.broken or not conn.smtp.is_connected:
            conn.broken = True
            return
        try:
            reply = await conn.smtp.command(_RSET)
        except Exception:
            conn.broken = True
            return
        if reply.code != 250:
            conn.broken = True

    async def _open_connection(self) -> SMTPClient:
        """Connect, EHLO (STARTTLS, EHLO) and AUTH: a connection ready for a transaction (the pool keeps it)."""
        cfg = self.config
        helo_name = cfg.helo_name
        if helo_name is None:
            helo_name = await asyncio.get_running_loop().run_in_executor(None, _default_helo_name)
        step = "connect"
        smtp: SMTPClient | None = None
        try:
            smtp = await SMTPClient.open(
                cfg.host,
                cfg.port,
                timeout=cfg.timeout,
                helo_name=helo_name,
                tls=self._tls,
                starttls=cfg.security == "starttls",  # must succeed: never falls back to plain text
            )
            if cfg.username is not None:
                step = "AUTH"
                if not smtp.supports("auth"):
                    raise _Unconfigured(
                        f"the SMTP server {cfg.where} offers no AUTH, but the option 'username' is set"
                        + (" (it may offer AUTH only after TLS: security starttls or tls)" if self._tls is None else "")
                    )
                if cfg.oauth is not None:
                    await self._oauth_login(smtp, cfg.username, cfg.oauth)
                else:
                    await smtp.login(cfg.username, self._password_now().reveal())
        except BaseException as exc:
            if smtp is not None:
                smtp.close()
            if isinstance(exc, AuthenticationFailed):
                code = exc.reply.code
                text = f"authentication as {cfg.username} at {cfg.where} failed: {reply_text(code, exc.reply.message)}"
                if 500 <= code < 600:  # refused for good (wrong password); 4xx is the server's own trouble
                    raise _Unconfigured(text) from None
                raise _ConnectFailed(text) from None
            if isinstance(exc, _CONNECT_ERRORS):
                raise _ConnectFailed(f"cannot connect to SMTP server {cfg.where} ({step}): {exc}") from None
            raise
        self._connected()
        return smtp

    async def _oauth_login(self, smtp: SMTPClient, user: str, source: TokenSource) -> None:
        """AUTH with an OAuth2 access token; a refused token is fetched again once (it has most
        likely expired) before the refusal counts. A token that cannot be had is unconfigured.

        The inbound transports' `InboundLogon._token_login` keeps the same rule ("a refused token
        is fetched once more") but is not this function, and differs on purpose: it runs in a
        worker thread (`TokenSource.token_now`, not `token`); it tells "could not check the token
        now" by the answer's response code (IMAP `[UNAVAILABLE]`, POP3 `[SYS/TEMP]`) where SMTP
        tells it by a 4xx reply; and every failure there, a token that cannot be had included, is
        a lost connection that the next poll tries again, where here a token that cannot be had
        and a token refused twice (5xx) are unconfigured (the message waits for the profile to
        change) and only a 4xx is a network error. It also logs the refetch; this does not."""
        reply: Reply | None = None
        for _attempt in range(2):
            try:
                token = await source.token()
            except MAPIError as exc:
                raise _Unconfigured(exc.message) from None
            answer = initial_response(source.mechanism, user, token, self.config.host, self.config.port)
            reply = await smtp.auth_initial(source.mechanism.value, answer, _OAUTH_ABORT[source.mechanism])
            if reply.code == 235:
                return
            if not 500 <= reply.code < 600:
                break  # the server's own trouble (4xx): a fresh token would not help
        assert reply is not None
        raise AuthenticationFailed(f"{reply.code} {reply.message}", reply)

    def _password_now(self) -> Secret:
        if self._password is None:  # read_password() raised at logon; unconfigured says why
            raise _Unconfigured(self.unconfigured or "no password")
        return self._password

    def _connected(self) -> None:
        """The status row says "connected" (after every transaction: set only when it said otherwise)."""
        status = self.status
        if status.status_string == self._connected_text and status.status_code == self._connected_code:
            return
        status.connected(self._connected_text)
        self._connected_code = status.status_code

    # --- the rest of IXPLogon ------------------------------------------------------------------

    @nonblocking
    def end_message(self, ref: int) -> EndMessageFlags:
        if ref in self._resend_later:
            self._resend_later.discard(ref)
            return EndMessageFlags.RESEND_LATER
        return EndMessageFlags.NONE

    async def validate_state(self, flags: ValidateFlags) -> None:
        if flags & ValidateFlags.FORCE_XP_DISCONNECT and self.pool.loop is asyncio.get_running_loop():
            await self.pool.close_all()

    async def logoff(self, flags: LogoffFlags = LogoffFlags.NORMAL) -> None:
        if self.pool.loop is asyncio.get_running_loop():
            await self.pool.close_all()
        else:
            self.pool.abort_all()


# --- the provider ------------------------------------------------------------------------------------


class SMTPProvider(TransportProvider):
    """Sends mail to an SMTP server."""

    display_name = "SMTP"
    option_help: Mapping[str, str] = {
        "host": "the SMTP server's host name or address (required)",
        "port": "the server's port (default 587 for starttls, 465 for tls, 25 for none)",
        "security": "'starttls' (default), 'tls' (TLS from the start) or 'none' (plain text)",
        "username": "the user name for AUTH (needs password_env or password_file)",
        "password_env": "the name of an environment variable holding the password",
        "password_file": "a file holding the password; relative to the profile directory",
        "verify_tls": "check the server's TLS certificate and host name (default true)",
        "ca_file": "a CA bundle (PEM) to trust, e.g. a private CA; relative to the profile directory",
        "helo_name": "the name sent in EHLO (default: this host's FQDN)",
        "timeout": f"seconds for connecting and for each reply (default {DEFAULT_TIMEOUT:g})",
        "connections": (
            "connections to the server at once, all spooler processes on the store together "
            f"(default {DEFAULT_CONNECTIONS})"
        ),
        "max_messages_per_connection": f"messages sent over one connection (default {DEFAULT_MAX_MESSAGES})",
        "address_types": "address types taken by this transport (default ['SMTP'])",
        "domains": "only recipients in these domains are taken (default: every domain)",
        "from_address": (
            "the From of messages this account sends that name no sender of their own "
            "(default: the profile's identity, `postroom identity`)"
        ),
        "from_name": "the display name that goes with from_address",
        "sender": "the envelope sender (default: the address the message goes out from, else the username)",
        "envelope_from": (
            "'message' (default: relayed mail keeps the envelope sender its client gave, MAIL FROM or "
            "sendmail -f) or 'account' (it gets this account's, for a smarthost that refuses foreign senders)"
        ),
        **_OAUTH_HELP,
        "temporary_failure_wait": (
            "seconds before retrying after a temporary failure (default: the spooler's backoff, "
            "300 s doubling up to 4000 s, see `postroom service set --policy`)"
        ),
        "tnef": (
            "'never' (default), 'auto' (send the MAPI properties in a winmail.dat part when every "
            "recipient takes rich information) or 'always'"
        ),
    }

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        refuse_password(options)
        opts = super().validate_options(options)
        out = _server(
            opts,
            security_modes=SECURITY_MODES,
            default_security="starttls",
            default_ports=DEFAULT_PORTS,
            host_missing="option 'host' is required: the SMTP server to send to",
        )
        security = out["security"]

        if "username" in opts:
            out["username"] = _token("username", opts["username"])
        out.update(_password_source(opts))
        out.update(token_options(opts))
        has_password = "password_env" in out or "password_file" in out
        has_token = "token_command" in out or "token_file" in out
        if has_password and has_token:
            raise _invalid("a password ('password_env', 'password_file') and an OAuth2 token exclude each other")
        if "username" in out and not (has_password or has_token):
            raise _invalid(
                "option 'username' needs 'password_env' or 'password_file' to say where the password is "
                "(or 'token_command' or 'token_file' for OAuth2)"
            )
        if (has_password or has_token) and "username" not in out:
            what = "an OAuth2 token ('token_command' or 'token_file')" if has_token else "a password"
            raise _invalid(f"{what} needs the option 'username'")

        out.update(_tls_checks(opts, security, SECURITY_MODES))
        if "helo_name" in opts:
            out["helo_name"] = _token("helo_name", opts["helo_name"])
            if not out["helo_name"].isascii():
                raise _invalid(f"option 'helo_name' must be ASCII (an A-label), not {out['helo_name']!r}")
        out["timeout"] = _number("timeout", opts.get("timeout", DEFAULT_TIMEOUT))
        out["connections"] = int(_number("connections", opts.get("connections", DEFAULT_CONNECTIONS), integer=True))
        out["max_messages_per_connection"] = int(
            _number(
                "max_messages_per_connection",
                opts.get("max_messages_per_connection", DEFAULT_MAX_MESSAGES),
                integer=True,
            )
        )
        types = _string_list("address_types", opts.get("address_types", list(DEFAULT_ADDRESS_TYPES)))
        for adrtype in types:
            if adrtype == "*" or any(c == ":" or c.isspace() or not c.isprintable() for c in adrtype):
                raise _invalid(f"option 'address_types': {adrtype!r} is not an address type")
        out["address_types"] = list(dict.fromkeys(a.upper() for a in types))
        if "domains" in opts:
            domains = [_token("domains", d).lower() for d in _string_list("domains", opts["domains"])]
            for domain in domains:
                if "@" in domain or domain.startswith(".") or ".." in domain:
                    raise _invalid(f"option 'domains': {domain!r} is not a domain name")
            out["domains"] = list(dict.fromkeys(domains))
        if "sender" in opts:
            sender = opts["sender"]
            if not isinstance(sender, str):
                raise _invalid(f"option 'sender' must be an e-mail address, not {sender!r}")
            problem = envelope_address_problem(sender.strip())
            if problem is not None:
                raise _invalid(f"option 'sender': {problem}")
            out["sender"] = sender.strip()
        out.update(_account_identity(opts))
        if "temporary_failure_wait" in opts:
            out["temporary_failure_wait"] = _number("temporary_failure_wait", opts["temporary_failure_wait"])
        if "envelope_from" in opts:
            if opts["envelope_from"] not in {m.value for m in EnvelopeFrom}:
                raise _invalid(f"option 'envelope_from' must be 'message' or 'account', not {opts['envelope_from']!r}")
            out["envelope_from"] = str(opts["envelope_from"])
        if "tnef" in opts:
            if opts["tnef"] not in {m.value for m in TnefMode}:
                raise _invalid(f"option 'tnef' must be 'never', 'auto' or 'always', not {opts['tnef']!r}")
            out["tnef"] = str(opts["tnef"])
        return out

    @classmethod
    def setup_problems(cls, options: Mapping[str, Any], profile_dir: Path) -> list[str]:
        return setup_problems(cls.validate_options(options), profile_dir)

    def logon(self, flags: LogonFlags) -> SMTPLogon:
        config = SMTPConfig.from_options(self.context.options, self.context.profile_dir)
        return SMTPLogon(self, flags, config)
