"""What the inbound mail-access transports (`imap`, `pop3`) share: options, the state file, the
receive loop that never acknowledges what it did not store, and the notes standing in for messages.

Each transport keeps what it delivered in a small JSON file in the profile directory (it never
sees the store): ``.<kind>-<service>.json``, mode 0600, replaced atomically (written to a
temporary file, fsync'ed, renamed, the directory fsync'ed). The file names the account (user,
host, port): pointing the service at another account starts afresh. A damaged file stops the
provider at logon (MAPI_E_FAILONEPROVIDER, the reason in its status row) rather than fetching
everything again; remove it to start afresh. A lock file beside it (flock) lets only one session
of the profile receive for the service at a time; another one waits (its status row says so) and
takes over when the first logs off.

Acknowledging, at least once: a message is recorded as delivered, and only then acknowledged on
the server (IMAP `after_download`, POP3 DELE), once the spooler has stored it. `start_message`
saves the message it fills, but the spooler stores it only after the call returns, and asks for
the next one only after that worked. So the message handed over is recorded at the start of the
*next* `start_message` call of the same run: the spooler numbers the calls of one receive run 1,
2, 3 … (`InboundMessage.ref`), and a call with a higher ref than the one handed over confirms it.
A message the spooler never confirmed (the store failed, the process died, the session logged off
between the two calls) is not recorded and is fetched again: a crash can duplicate a message,
never lose one. And what the spooler stores always holds the message's exact bytes whenever it is
acknowledged: `mime.from_mime` attaches them whenever it cannot convert them exactly, and a
message that cannot be converted at all arrives as a note with them attached.

What is never acknowledged, because nothing of it was stored:

* A message the server would not return (an IMAP NO or ``BODY[] NIL``, a POP3 -ERR, no complete
  answer within `read_timeout`): it is skipped for this run, the run goes on with the next one,
  the status row says how many could not be fetched (FAILURE), and the next run tries it again
  (the IMAP transport keeps its UID in the state file: a later UID delivered must not hide it).
* A message larger than `max_message_bytes`, by the size the server gives before it is fetched
  (IMAP RFC822.SIZE, POP3 LIST) or by what it sends: a short note saying so is delivered once
  instead (acknowledging the note never touches the message), the message stays on the server
  untouched, and later runs pass over it without a word until the limit is raised. The status row
  counts them.

Bounds: every exchange with the server (connecting and logging in, a scan, one message's
download, one `after_download` step; IMAP IDLE gets `idle_seconds` more) must be through within
`read_timeout` seconds in all (`exchange.ExchangeGuard`), however slowly the server trickles, and
may read at most `max_message_bytes` plus 1 MiB: a server announcing or sending more (a hostile
IMAP literal size, an endless POP3 message) is cut off before anything is allocated for it. The
per-read `timeout` still bounds each wait for data.

Connection trouble (refused, dropped, timeouts, TLS, a failed login) drops the connection and puts
the reason in the status row (FAILURE); the next poll or receive connects again (at once, one
retry, when a connection that had been working breaks under a command) and a successful
connection clears FAILURE, as does a run in which every message came. With LogonFlags.NO_CONNECT
(or NO_INBOUND) a transport never connects: poll() answers False and start_message() delivers
nothing.

Options every mail-access transport takes (each transport adds its own, and its default ports):

* `host` (required); `port`; `security`: "tls" (the default, TLS from the start), "starttls"
  (never falling back to plain text) or "none" (plain text).
* `username` (required), with `password_env` (the name of an environment variable holding the
  password) or `password_file` (a file holding it; relative to the profile directory). The password
  is read at logon and never goes into the profile, a log or the status table; a plain `password`
  option is refused. Or, for OAuth2 (Gmail, Microsoft 365), `token_command` or `token_file` with
  `oauth_mechanism` (`oauth.py`): the transport logs in with AUTHENTICATE / AUTH XOAUTH2 or
  OAUTHBEARER, fetching the token for each connection and once more when the server refuses it
  (`InboundLogon._token_login`).
* `verify_tls` (default true), `ca_file` (a PEM bundle to trust; relative to the profile directory).
* `timeout`: seconds for connecting and for each wait for data (default 30); `read_timeout`:
  seconds one exchange may take in all (default 120); `max_message_bytes` (default 50 MiB).
"""

from __future__ import annotations

import abc
import ast
import contextlib
import errno
import json
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from .. import mime
from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from ..mapi.flags import LogoffFlags, LogonFlags, LogonResultFlags, StatusCode, ValidateFlags
from ..mapi.message import MessageData
from .exchange import ExchangeGuard, ReplyTooLarge
from .oauth import OPTION_HELP as _OAUTH_HELP
from .oauth import TokenSource, token_options
from .options import (
    Secret,
    client_tls_context,
    password_source,
    read_password,
    refuse_password,
    resolve_path,
    server,
    setup_problems,
    tls_checks,
)
from .options import invalid as _invalid
from .options import number as _number
from .options import token as _token
from .spi import InboundMessage, Registration, TransportLogon, TransportProvider

try:  # POSIX; elsewhere sessions of one profile are not kept from receiving at the same time
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

K = TypeVar("K")
R = TypeVar("R")

SECURITY_MODES = ("tls", "starttls", "none")
DEFAULT_TIMEOUT = 30.0
DEFAULT_READ_TIMEOUT = 120.0
DEFAULT_MAX_MESSAGE_BYTES = 50 * 1024 * 1024
#: Below this a limit is surely a slip (megabytes meant), not a wish to receive nothing.
MIN_MESSAGE_BYTES = 1024
#: What one exchange may read beyond max_message_bytes: protocol framing, a scan's listing.
REPLY_SLACK = 1024 * 1024
STATE_VERSION = 1
RAW_ATTACHMENT_NAME = mime.RAW_ATTACHMENT_NAME


# --- options (their parsing is shared with the other transports: options.py) ------------------------


def validate_server_options(
    options: Mapping[str, Any], *, default_ports: Mapping[str, int], protocol: str
) -> dict[str, Any]:
    """The options every mail-access transport shares: host, port, security, credentials, TLS,
    timeouts, the size limit.

    `options` has been checked for unknown names already; the transport-specific ones are copied
    through unchanged for the caller to check.
    """
    refuse_password(options)
    out: dict[str, Any] = dict(options)
    address = server(
        options,
        security_modes=SECURITY_MODES,
        default_security="tls",
        default_ports=default_ports,
        host_missing=f"option 'host' is required: the {protocol} server to fetch mail from",
    )
    out.update(address)

    if "username" not in options:
        raise _invalid(f"option 'username' is required: the {protocol} account to log in as")
    out["username"] = _token("username", options["username"])
    password = password_source(options)
    token = token_options(options)
    if password and token:
        raise _invalid("a password ('password_env', 'password_file') and an OAuth2 token exclude each other")
    if not password and not token:
        raise _invalid(
            "give 'password_env' or 'password_file' to say where the password is "
            "(or 'token_command' or 'token_file' for OAuth2)"
        )
    out.update(password)
    out.update(token)

    out.update(tls_checks(options, address["security"], SECURITY_MODES))
    out["timeout"] = _number("timeout", options.get("timeout", DEFAULT_TIMEOUT))
    out["read_timeout"] = _number("read_timeout", options.get("read_timeout", DEFAULT_READ_TIMEOUT))
    limit = options.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
    if _number("max_message_bytes", limit, integer=True) < MIN_MESSAGE_BYTES:
        raise _invalid(
            f"option 'max_message_bytes' is a number of bytes, at least {MIN_MESSAGE_BYTES} "
            f"(the default, 50 MiB, is {DEFAULT_MAX_MESSAGE_BYTES}), not {limit!r}"
        )
    out["max_message_bytes"] = int(limit)
    return out


SERVER_OPTION_HELP: Mapping[str, str] = {
    "host": "the server's host name or address (required)",
    "security": "'tls' (default, TLS from the start), 'starttls' or 'none' (plain text)",
    "username": "the account to log in as (required)",
    "password_env": "the name of an environment variable holding the password",
    "password_file": "a file holding the password; relative to the profile directory",
    **_OAUTH_HELP,
    "verify_tls": "check the server's TLS certificate and host name (default true)",
    "ca_file": "a CA bundle (PEM) to trust, e.g. a private CA; relative to the profile directory",
    "timeout": f"seconds for connecting and for each wait for data (default {DEFAULT_TIMEOUT:g})",
    "read_timeout": "seconds one exchange with the server may take in all, however slowly it sends, "
    f"e.g. downloading one message (default {DEFAULT_READ_TIMEOUT:g}); raise it for large messages on slow links",
    "max_message_bytes": "larger messages are left on the server and reported with a note "
    f"(default {DEFAULT_MAX_MESSAGE_BYTES}, 50 MiB)",
}


@dataclass(frozen=True)
class ServerConfig:
    """The validated connection options of a mail-access service (never the password itself)."""

    host: str
    port: int
    security: str
    username: str
    password_env: str | None
    password_file: Path | None
    oauth: TokenSource | None  # OAuth2 (XOAUTH2 / OAUTHBEARER) instead of a password
    verify_tls: bool
    ca_file: Path | None
    timeout: float
    read_timeout: float
    max_message_bytes: int

    @staticmethod
    def server_fields(opts: Mapping[str, Any], profile_dir: Path) -> dict[str, Any]:
        return {
            "host": opts["host"],
            "port": opts["port"],
            "security": opts["security"],
            "username": opts["username"],
            "password_env": opts.get("password_env"),
            "password_file": resolve_path(opts.get("password_file"), profile_dir),
            "oauth": TokenSource.from_options(opts, profile_dir),
            "verify_tls": opts["verify_tls"],
            "ca_file": resolve_path(opts.get("ca_file"), profile_dir),
            "timeout": opts["timeout"],
            "read_timeout": opts["read_timeout"],
            "max_message_bytes": opts["max_message_bytes"],
        }

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def account(self) -> str:
        """What the state file is about: the user at the server."""
        return f"{self.username}@{self.where}"

    def read_password(self) -> Secret | None:
        """The password from the environment or the password file; MAPI_E_FAILONEPROVIDER when missing.
        None with OAuth2 (the token is fetched for each connection instead)."""
        if self.oauth is not None:
            return None
        return Secret(read_password(self.password_env, self.password_file))

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context (certificate and host name checks on unless verify_tls is false)."""
        return client_tls_context(self.security, self.ca_file, self.verify_tls)


# --- the state file ---------------------------------------------------------------------------------


class StateFile:
    """A small JSON document in the profile directory, replaced atomically, plus a lock beside it.

    The document is ``{"version": 1, "account": "<user>@<host>:<port>", ...}``; a file about
    another account is treated as empty. An unreadable file is an error (MAPI_E_CORRUPT_DATA):
    starting afresh would fetch every message again.
    """

    def __init__(self, path: Path, account: str) -> None:
        self.path = path
        self.account = account
        self.data: dict[str, Any] = {}
        self._lock: IO[bytes] | None = None

    def load(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = b""
        except OSError as exc:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"cannot read {self.path}: {exc.strerror}") from None
        loaded: Any = {}
        if raw.strip():
            try:
                loaded = json.loads(raw)
            except ValueError as exc:
                raise MAPIError(
                    HResult.MAPI_E_CORRUPT_DATA,
                    f"the state file {self.path} is damaged ({exc}); remove it to fetch every message again",
                ) from None
        data: dict[str, Any] = {}
        if (
            isinstance(loaded, dict)
            and loaded.get("version") == STATE_VERSION
            and loaded.get("account") == self.account
        ):
            data = loaded
        data["version"] = STATE_VERSION
        data["account"] = self.account
        self.data = data
        return data

    def save(self) -> None:
        """Write the document atomically: temporary file, fsync, rename, fsync of the directory.

        MAPI_E_CALL_FAILED when that fails (a full disk, say): never mistaken for network trouble.
        """
        directory = self.path.parent
        payload = json.dumps(self.data, indent=1, sort_keys=True).encode("utf-8") + b"\n"
        try:
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise MAPIError(HResult.MAPI_E_CALL_FAILED, f"cannot write {self.path}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise MAPIError(HResult.MAPI_E_CALL_FAILED, f"cannot write {self.path}: {exc.strerror}") from None
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def try_lock(self) -> bool:
        """Take the lock (without waiting); True when this logon holds it."""
        if self._lock is not None:
            return True
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "r+b")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.close()
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return False
                raise
        self._lock = handle
        return True

    def unlock(self) -> None:
        handle, self._lock = self._lock, None
        if handle is not None:
            handle.close()  # closing drops the flock


def state_path(profile_dir: Path, kind: str, service_name: str) -> Path:
    return profile_dir / f".{kind}-{service_name}.json"


# --- notes standing in for messages that cannot be delivered as they are ----------------------------


def _note(subject: str, body: str) -> MessageData:
    return MessageData(
        props={
            T.PR_MESSAGE_CLASS: "IPM.Note",
            T.PR_SUBJECT: subject,
            T.PR_BODY: body,
            T.PR_MESSAGE_DELIVERY_TIME: datetime.now(UTC),
            T.PR_IMPORTANCE: 1,
            T.PR_PRIORITY: 0,
            T.PR_HASATTACH: False,
        }
    )


def conversion_failed(raw: bytes, where: str, error: str) -> MessageData:
    """A note saying the message could not be converted, with the message as received attached."""
    note = _note(
        f"(message could not be converted: {where})",
        f"postroom could not convert the message {where} into a MAPI message:\n\n    {error}\n\n"
        f"The message as it was received ({len(raw)} bytes) is attached as {RAW_ATTACHMENT_NAME}.\n",
    )
    note.attachments.append(mime.raw_attachment(raw, 0))
    note.props[T.PR_HASATTACH] = True
    return note


def too_large(where: str, size: int | None, limit: int) -> MessageData:
    """A note saying a message is over max_message_bytes and was left on the server."""
    how_big = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return _note(
        f"(message too large: {where})",
        f"The message {where} is {how_big}, more than this service allows (max_message_bytes = {limit}),\n"
        "so postroom did not download it. It is still on the server, untouched, and will not be\n"
        "reported again. To receive it, raise max_message_bytes for this service\n"
        "(postroom service set SERVICE --set max_message_bytes=BYTES) or fetch it with another mail program.\n",
    )


def fill(message: InboundMessage, data: MessageData) -> None:
    """Copy a converted message into the spooler's new message."""
    message.data.props.clear()
    message.data.props.update(data.props)
    message.data.recipients = list(data.recipients)
    message.data.attachments = list(data.attachments)
    message.data.original = data.original  # the bytes as the server gave them (`export --eml`)


def server_answer(exc: BaseException) -> str:
    """The server's answer inside an imaplib/imapclient/poplib error, as text.

    These libraries put the server's reply in as bytes (or as the repr of bytes): show the text.
    """
    arg = exc.args[0] if len(exc.args) == 1 else None
    if isinstance(arg, bytes):
        return arg.decode("utf-8", "replace").strip()
    text = (str(exc) or type(exc).__name__).strip()
    if len(text) >= 3 and text[0] == "b" and text[1] in "'\"" and text[-1] == text[1]:
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(text)  # a literal only, never code
            if isinstance(value, bytes):
                return value.decode("utf-8", "replace").strip()
    return text


# --- the receive loop --------------------------------------------------------------------------------


class ConnectionLost(Exception):
    """A connection could not be made or broke; the text is ready for the status row."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class TokenRefused(Exception):
    """The server refused the OAuth2 access token (an IMAP NO, a POP3 -ERR); the text is its answer."""


class MessageFailed(Exception):
    """The server would not return one message (its answer in the text); the others are fine."""


class MessageTooLarge(Exception):
    """The server announced or sent more of one message than max_message_bytes allows."""

    def __init__(self, size: int | None) -> None:
        super().__init__(f"{size} bytes" if size is not None else "too large")
        self.size = size


class _DownloadAgain(Exception):
    """The connection broke under a download: connect again and download the same message."""


class Outcome(StrEnum):
    """What a message handed to the spooler stands for, and so what may happen on the server."""

    STORED = "stored"  # the message, its exact bytes included: acknowledge it on the server
    TOO_LARGE = "too large"  # a note that it is too large: it stays on the server untouched


@dataclass(frozen=True)
class Candidate(Generic[K]):
    """A message not delivered yet, as a scan found it."""

    key: K
    size: int | None  # what the server says before it is fetched; None: it did not say
    noted: bool = False  # over max_message_bytes and reported already: passed over without a word


@dataclass(frozen=True)
class Handover(Generic[K]):
    """What the last start_message handed to the spooler, until the next call confirms it stored it."""

    ref: int
    key: K
    outcome: Outcome
    size: int | None


@dataclass(frozen=True)
class Step(Generic[K]):
    """What one start_message call hands over (`raw`: the bytes the message was converted from)."""

    key: K
    data: MessageData
    outcome: Outcome
    size: int | None
    raw: bytes | None = None


class InboundLogon(TransportLogon, Generic[K]):
    """The receive loop of a mail-access transport (see the module docstring); subclasses speak the
    protocol.

    Keys (`K`) name one message on the server (an IMAP UID with its UIDVALIDITY, a POP3 UIDL).
    """

    protocol = "mail"
    #: The response code in a refusal of the access token that means the server could not check
    #: it now (its own trouble, not the token's): IMAP's [UNAVAILABLE] (RFC 5530), POP3's
    #: [SYS/TEMP] (RFC 3206).
    token_unchecked = ""

    def __init__(
        self,
        provider: TransportProvider,
        flags: LogonFlags,
        config: ServerConfig,
        password: Secret | None,
        state: StateFile,
    ) -> None:
        super().__init__(provider, flags)
        self.config = config
        self._password = password
        self._tls = config.tls_context()
        self.state = state
        self.result_flags = LogonResultFlags.SP_POLL
        self.offline = bool(flags & (LogonFlags.NO_CONNECT | LogonFlags.NO_INBOUND))
        self.status.identity = config.account
        self._tls_note = ""
        if config.security != "none" and not config.verify_tls:
            self._tls_note = " (TLS certificate not verified)"
            self.status.extra["verify_tls"] = False
            log.warning("%s: TLS certificate checks are disabled for %s (verify_tls = false)", self.name, config.where)
        if config.security == "none":
            what = "access token" if config.oauth is not None else "password"
            log.info("%s: logging in to %s without TLS sends the %s in plain text", self.name, config.where, what)
        if flags & LogonFlags.NO_CONNECT:
            self.status.status_string = "offline (no connect)"
        elif self.offline:
            self.status.status_string = "inbound disabled for this logon (no inbound)"
        else:
            self.status.status_string = f"not connected yet to {config.where}{self._tls_note}"
        self._guard = ExchangeGuard(config.max_message_bytes + REPLY_SLACK)
        self._pending: Handover[K] | None = None
        self._queue: list[Candidate[K]] = []
        self._need_scan = True
        self._waiting_for_lock = False
        # This receive run: what was tried (a failure is not tried again in the same run), what
        # could not be fetched, what else went wrong, how many messages were too large.
        self._tried: set[K] = set()
        self._broke: set[K] = set()
        self._failures: list[str] = []
        self._troubles: list[str] = []
        self._too_large = 0
        self.connections_opened = 0
        self.received = 0
        self._client: Any = None  # the protocol's connection while there is one

    def address_types(self) -> Registration:
        return Registration.none()

    @property
    def connected(self) -> bool:
        return self._client is not None

    # --- what a protocol implements ------------------------------------------------------------

    @abc.abstractmethod
    def _open(self) -> None:
        """Connect and log in (and whatever else a fresh connection needs); raise on failure.

        The client must hand its socket to `self._guard.attach` as soon as it is connected."""

    @abc.abstractmethod
    def _disconnect(self, polite: bool) -> None:
        """Close the connection (politely: LOGOUT/QUIT first); never raises."""

    @abc.abstractmethod
    def _scan(self) -> list[Candidate[K]]:
        """The messages not delivered yet, oldest first, with the sizes the server gives (connected)."""

    @abc.abstractmethod
    def _fetch(self, key: K) -> bytes | None:
        """The message's exact bytes; None when it is gone; MessageFailed when the server refuses it."""

    @abc.abstractmethod
    def _record(self, key: K, outcome: Outcome, size: int | None) -> None:
        """Record in the state file (no network) that `key` was stored, or reported as too large."""

    def _retry_later(self, key: K) -> None:
        """`key` could not be fetched: make sure a later run tries it again."""

    def _after_record(self) -> None:
        """Server-side work owed for recorded messages (after_download, DELE); connected."""

    def _end_run(self) -> None:
        """Every new message was handed over."""

    @abc.abstractmethod
    def _check(self) -> bool:
        """poll(): is there anything new? (connected)"""

    @abc.abstractmethod
    def _describe(self, key: K) -> str:
        """Where a message is, for notes and logs: 'UID 7 in INBOX at host:993'."""

    @abc.abstractmethod
    def _connection_error(self, exc: Exception) -> bool:
        """Whether `exc` means the connection is unusable (rather than a refusal of one command)."""

    @abc.abstractmethod
    def _refusal(self, exc: Exception) -> bool:
        """Whether `exc` is the server refusing a command (an IMAP NO/BAD, a POP3 -ERR)."""

    def _exchange(self, extra_seconds: float = 0.0) -> None:
        """A new exchange with the server begins: its deadline and byte budget start now."""
        self._guard.arm(self.config.read_timeout + extra_seconds)

    def _deadline_text(self) -> str:
        return f"no complete answer within {self._guard.seconds:g} s (read_timeout)"

    def _explain(self, exc: Exception) -> str:
        if self._guard.expired:
            return self._deadline_text()
        text = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            text = f"timed out after {self.config.timeout:g} s"
        return f"{type(exc).__name__}: {text}" if isinstance(exc, ssl.SSLError) else text

    # --- connection handling ---------------------------------------------------------------------
    def _password_now(self) -> str:
        """The password for a LOGIN / USER-PASS (there is one whenever the service has no OAuth2)."""
        assert self._password is not None, "a service with a password has it read at logon"
        return self._password.reveal()

    def _token_login(self, login: Callable[[Secret], None]) -> None:
        """Log in with an OAuth2 access token: `login` sends it and raises TokenRefused when the
        server refuses it. A refused token has most likely expired, so a fresh one is fetched and
        tried once more before the refusal counts; a token that cannot be had, or a server that
        could not check it now (`token_unchecked`), stops at once.
        The texts raised name the user and the server's answer, never the token.

        The smtp transport's `SMTPLogon._oauth_login` keeps the same rule but is not this function,
        and differs on purpose: it is a coroutine on the event loop (`TokenSource.token`); it tells
        "could not check the token now" by a 4xx reply, not by a response code; and there a token
        that cannot be had, or one refused twice (5xx), makes the message wait as unconfigured
        until the profile changes, where here every failure is a lost connection (status FAILURE)
        that the next poll or receive tries again. Only this one logs the refetch."""
        cfg = self.config
        assert cfg.oauth is not None
        mechanism = cfg.oauth.mechanism.value
        for attempt in (1, 2):
            try:
                token = cfg.oauth.token_now()
            except MAPIError as exc:
                raise ConnectionLost(
                    f"no OAuth2 access token for {cfg.username} at {cfg.where}: {exc.message}"
                ) from None
            try:
                login(token)
                return
            except TokenRefused as refused:
                if self.token_unchecked and self.token_unchecked in str(refused):
                    raise ConnectionLost(
                        f"{self.protocol} server {cfg.where} could not check the access token now: {refused}"
                    ) from None
                if attempt == 2:
                    raise ConnectionLost(
                        f"OAuth2 login ({mechanism}) as {cfg.username} at {cfg.where} failed: {refused}; "
                        "a freshly fetched token was refused too (check token_command / token_file)"
                    ) from None
                log.info("%s: %s refused the access token (%s); fetching a fresh one", self.name, cfg.where, refused)
        raise AssertionError("unreachable")

    def _connect(self) -> None:
        self._exchange()
        try:
            self._open()
        except ConnectionLost:
            self._close(polite=False)
            raise
        except Exception as exc:
            self._close(polite=False)
            if self._connection_error(exc) or isinstance(exc, ValueError):
                raise ConnectionLost(
                    f"cannot connect to {self.protocol} server {self.config.where}: {self._explain(exc)}"
                ) from None
            raise
        self.connections_opened += 1
        self._need_scan = True
        self.status.connected(f"connected to {self.config.where}{self._tls_note}")

    def _close(self, polite: bool) -> None:
        """Close the connection (a polite goodbye gets `timeout` seconds); never raises."""
        if polite and self.connected:
            self._guard.arm(self.config.timeout)
        try:
            self._disconnect(polite)
        finally:
            self._guard.release()

    def _session(self, work: Callable[[], R]) -> R:
        """Run `work` on a connection; a broken reused connection is replaced once, at once."""
        try:
            for attempt in (1, 2):
                reused = self.connected
                self._exchange()
                try:
                    if not reused:
                        self._connect()
                    return work()
                except ConnectionLost:
                    self._close(polite=False)
                    raise
                except Exception as exc:
                    if not self._connection_error(exc):
                        if self._refusal(exc):  # the conversation is off track: start afresh next time
                            raise ConnectionLost(
                                f"{self.protocol} server {self.config.where} refused a command: {server_answer(exc)}"
                            ) from None
                        raise
                    explained = self._explain(exc)
                    self._close(polite=False)
                    if self._guard.expired or not reused or attempt == 2:
                        raise ConnectionLost(
                            f"connection to {self.protocol} server {self.config.where} lost: {explained}"
                        ) from None
                    log.info("%s: connection to %s broke (%s); connecting again", self.name, self.config.where, exc)
            raise AssertionError("unreachable")
        finally:
            self._guard.disarm()

    def _failed(self, text: str) -> None:
        self._close(polite=False)
        self._need_scan = True
        self.status.failed(text)
        log.warning("%s: %s", self.name, text)

    def _trouble(self, text: str) -> None:
        """Something went wrong that does not stop the run; the status row shows it at the end."""
        self._troubles.append(text)
        self.status.failed(text)
        log.warning("%s: %s", self.name, text)

    def _may_receive(self) -> bool:
        if self.offline:
            return False
        if self.state.locked:
            return True
        try:
            got = self.state.try_lock()
        except OSError as exc:
            self.status.failed(f"cannot lock {self.state.path}: {exc.strerror}")
            return False
        if not got:
            if not self._waiting_for_lock:
                self._waiting_for_lock = True
                self.status.set(text="another session of this profile is receiving for this service; waiting")
            return False
        self._waiting_for_lock = False
        try:
            self.state.load()  # what the previous holder of the lock recorded
        except MAPIError as exc:
            self.state.unlock()
            self.status.failed(str(exc))
            return False
        self._queue.clear()
        self._need_scan = True
        return True

    # --- IXPLogon ---------------------------------------------------------------------------------
    def poll(self) -> bool:
        if not self._may_receive():
            return False
        try:
            return self._session(self._check)
        except ConnectionLost as lost:
            self._failed(lost.text)
            return False
        except MAPIError as exc:
            self._failed(str(exc))
            return False

    def start_message(self, message: InboundMessage) -> None:
        if self.offline:
            return
        confirmed = self._confirm(message.ref)
        if not self._may_receive():
            return
        if confirmed is not None:
            try:
                self._record(confirmed.key, confirmed.outcome, confirmed.size)
            except MAPIError as exc:
                # Stored but not recorded: it will come again (at least once). Stop this run here.
                self._failed(str(exc))
                return
            if confirmed.outcome is Outcome.STORED:
                self.received += 1
        try:
            step = self._session(self._next)
        except ConnectionLost as lost:
            self._failed(lost.text)
            return
        except MAPIError as exc:
            self._failed(str(exc))
            return
        if step is None:
            self._report_run()
            return
        try:
            fill(message, step.data)
        except Exception as exc:  # anything at all: this message must not block the next ones
            if step.raw is None:
                raise
            log.exception("%s: cannot fill the new message from %s", self.name, self._describe(step.key))
            fill(message, conversion_failed(step.raw, self._describe(step.key), f"{type(exc).__name__}: {exc}"))
        message.save()
        self._pending = Handover(message.ref, step.key, step.outcome, step.size)

    def _confirm(self, ref: int) -> Handover[K] | None:
        """What was handed over last if this call confirms the spooler stored it, else None."""
        pending, self._pending = self._pending, None
        if pending is not None and ref > pending.ref:
            return pending
        if pending is not None:
            # A new run began without the spooler coming back for the next message: it did not store it.
            log.warning(
                "%s: %s was handed over but not confirmed stored; it will be fetched again",
                self.name,
                self._describe(pending.key),
            )
        if pending is not None or ref <= 1:  # a new receive run: look again
            self._queue.clear()
            self._need_scan = True
            self._tried.clear()
            self._broke.clear()
            self._failures.clear()
            self._troubles.clear()
            self._too_large = 0
        return None

    def _next(self) -> Step[K] | None:
        self._after_record()
        limit = self.config.max_message_bytes
        while True:
            if not self.connected:  # a download that failed took the connection with it
                self._connect()
            if self._need_scan:
                self._queue = [c for c in self._scan() if c.key not in self._tried]
                self._need_scan = False
            if not self._queue:
                break
            candidate = self._queue.pop(0)
            key, where = candidate.key, self._describe(candidate.key)
            self._tried.add(key)
            if candidate.size is not None and candidate.size > limit:
                self._too_large += 1
                if candidate.noted:
                    continue
                log.warning("%s: %s is over max_message_bytes; left on the server", self.name, where)
                return Step(key, too_large(where, candidate.size, limit), Outcome.TOO_LARGE, candidate.size)
            try:
                raw = self._download(key)
            except _DownloadAgain:
                self._tried.discard(key)  # the scan on the new connection puts it first again
                continue
            except MessageTooLarge as exc:
                self._too_large += 1
                log.warning("%s: %s is larger than the server said (%s); left on the server", self.name, where, exc)
                return Step(key, too_large(where, exc.size, limit), Outcome.TOO_LARGE, exc.size)
            except MessageFailed as exc:
                self._failures.append(f"{where}: {exc}")
                log.warning("%s: the server would not return %s: %s; it will be tried again", self.name, where, exc)
                self._retry_later(key)
                continue
            if raw is None:
                continue  # gone meanwhile (another client deleted it)
            if len(raw) > limit:
                self._too_large += 1
                return Step(key, too_large(where, len(raw), limit), Outcome.TOO_LARGE, len(raw))
            try:
                data = mime.from_mime(raw)
            except Exception as exc:  # from_mime never raises; anything else must not block the rest
                log.exception("%s: cannot convert %s", self.name, where)
                data = conversion_failed(raw, where, f"{type(exc).__name__}: {exc}")
            return Step(key, data, Outcome.STORED, len(raw), raw)
        self._end_run()
        self._need_scan = True
        return None

    def _download(self, key: K) -> bytes | None:
        """`_fetch` as an exchange of its own, whose trouble becomes this message's fate.

        A connection that breaks under it is replaced and the download tried once more at once
        (`_DownloadAgain`): a connection that had gone stale between two calls is no fault of the
        message. A second break, or a deadline passed, fails this message alone (MessageFailed),
        and the run goes on with the next one, so that a server that cannot send one message
        never holds up the others.
        """
        self._exchange()
        try:
            return self._fetch(key)
        except ReplyTooLarge as exc:
            self._close(polite=False)  # the rest of the answer is still on its way
            raise MessageTooLarge(exc.announced) from None
        except Exception as exc:
            if not self._connection_error(exc):
                raise
            expired, text = self._guard.expired, self._explain(exc)
            self._close(polite=False)
            self._retry_later(key)
            if expired:
                raise MessageFailed(text) from None
            if key in self._broke:
                raise MessageFailed(f"the connection broke while downloading it ({text})") from None
            self._broke.add(key)
            log.info("%s: connection to %s broke (%s); connecting again", self.name, self.config.where, text)
            raise _DownloadAgain from None

    def _report_run(self) -> None:
        when = datetime.now(UTC).strftime("%H:%M:%S UTC")
        text = f"checked {self.config.where}{self._tls_note} at {when}: {self.received} message(s) received"
        if self._too_large:
            text += (
                f"; {self._too_large} too large (max_message_bytes = {self.config.max_message_bytes}), "
                "left on the server"
            )
        problems = list(self._troubles)
        if self._failures:
            problems.insert(
                0,
                f"{len(self._failures)} message(s) could not be fetched and will be tried again "
                f"({'; '.join(self._failures[:3])}{' …' if len(self._failures) > 3 else ''})",
            )
        if problems:
            self.status.failed(f"{text}; {'; '.join(problems)}")
        else:
            self.status.set(remove=StatusCode.FAILURE, text=text)

    def validate_state(self, flags: ValidateFlags) -> None:
        """FORCE_XP_DISCONNECT drops the connection (the next poll connects again)."""
        if flags & ValidateFlags.FORCE_XP_DISCONNECT:
            self._close(polite=True)
            self._need_scan = True

    def logoff(self, flags: LogoffFlags = LogoffFlags.NORMAL) -> None:
        if self._pending is not None:
            log.info(
                "%s: %s was handed over but not confirmed stored; it will be fetched again",
                self.name,
                self._describe(self._pending.key),
            )
            self._pending = None
        self._close(polite=True)
        self.state.unlock()


# --- the provider --------------------------------------------------------------------------------


class InboundProvider(TransportProvider):
    """What the IMAP and POP3 providers share: the server options every mail-access transport takes,
    and a logon that reads the password and loads the state file first.

    A subclass names its protocol and default ports, checks its own options in `own_options`, and
    makes its configuration and its logon.
    """

    receives = True
    protocol = ""  # "IMAP", "POP3": in messages
    default_ports: Mapping[str, int] = {}

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        refuse_password(options)
        opts = super().validate_options(options)
        return cls.own_options(
            opts, validate_server_options(opts, default_ports=cls.default_ports, protocol=cls.protocol)
        )

    @classmethod
    def own_options(cls, options: Mapping[str, Any], checked: dict[str, Any]) -> dict[str, Any]:
        """Check the options of this protocol (`options`, as given) into `checked` (the shared ones)."""
        return checked

    @classmethod
    def setup_problems(cls, options: Mapping[str, Any], profile_dir: Path) -> list[str]:
        return setup_problems(cls.validate_options(options), profile_dir)

    @abc.abstractmethod
    def config(self) -> ServerConfig:
        """This service's checked options (`self.context.options`)."""

    @abc.abstractmethod
    def new_logon(self, flags: LogonFlags, config: Any, password: Secret | None, state: StateFile) -> InboundLogon[Any]:
        """The logon, once the password is read (None with OAuth2) and the state file loaded."""

    def logon(self, flags: LogonFlags) -> InboundLogon[Any]:
        config = self.config()
        password = config.read_password()
        state = StateFile(
            state_path(self.context.profile_dir, self.protocol.lower(), self.context.service_name), config.account
        )
        try:
            state.load()  # a damaged file stops the provider now, not at the first poll
        except MAPIError as exc:
            raise MAPIError(HResult.MAPI_E_FAILONEPROVIDER, str(exc)) from None
        return self.new_logon(flags, config, password, state)
