"""The `imap` transport: fetches new mail from a mailbox on an IMAP server (inbound only).

The logon registers no address type (`Registration.none()`: it sends nothing) and asks to be
polled (LOGON_SP_POLL). `poll()` connects when needed, SELECTs the mailbox and answers whether
it holds messages with a UID above the last one delivered; with ``idle = true`` and nothing new
it waits up to `idle_seconds` in IDLE for the server to announce new mail. `start_message()`
hands the spooler the next new message, fetched with ``BODY.PEEK[]`` (so fetching alone never
sets ``\\Seen``) and converted with `mime.from_mime` (a DSN becomes a REPORT.IPM.Note.NDR).

What has been delivered is kept per mailbox and UIDVALIDITY: the highest UID delivered. The
transport never sees the store, so it keeps that in a small JSON file in the profile directory,
``.imap-<service>.json`` (mode 0600, replaced atomically: written to a temporary file, fsync'ed,
renamed, the directory fsync'ed). It names the account (user, host, port): pointing the service
at another account starts afresh. When the server's UIDVALIDITY changes, every message in the
mailbox is fetched again (the old UIDs mean nothing any more); so is everything in the mailbox
the first time. A damaged state file stops the provider at logon (MAPI_E_FAILONEPROVIDER, the
reason in its status row) rather than fetching everything again; remove it to start afresh. A lock file beside it
(``.imap-<service>.json.lock``, flock) lets only one session of the profile receive for the service
at a time; another one waits (its status row says so) and takes over when the first logs off.

Ordering, at least once: a message is recorded as delivered only once the spooler has stored it.
`start_message` saves the message it fills, but the spooler stores it only after the call returns,
and asks for the next one only after that worked. So the UID handed over is recorded (state file
first, then `after_download` on the server) at the start of the *next* `start_message` call of the
same run: the spooler numbers the calls of one receive run 1, 2, 3 … (`InboundMessage.ref`), and a
call with a higher ref than the one handed over confirms it. A message the spooler never confirmed
(the store failed, the process died, the session logged off between the two calls) is not
recorded and is fetched again: a crash can duplicate a message, never lose one. Recording at
`poll()` or logoff instead would lose the message whenever storing it had failed.

`after_download` acts on the server only for recorded messages and is itself kept in the state
file until done, so a connection lost in between only delays it ("seen" sets ``\\Seen``;
"move:FOLDER" moves the message, creating FOLDER when missing, with MOVE or COPY + EXPUNGE;
"delete" sets ``\\Deleted`` and expunges that UID, with UID EXPUNGE when the server has UIDPLUS).

Robustness: a message that cannot be converted (anything raising on the way; `from_mime` itself
never raises) is delivered as a note explaining the error with the raw message attached; one the
server refuses to return (NO to FETCH) as a note with the server's answer; either way the next
message follows. Connection trouble (refused, dropped, timeouts, TLS, a failed login) drops the
connection and puts the reason in the status row (FAILURE); the next poll or receive connects
again (at once, one retry, when a connection that had been working breaks under a command) and a
successful connection clears FAILURE. With LogonFlags.NO_CONNECT (or NO_INBOUND) the transport
never connects: poll() answers False and start_message() delivers nothing.

Options:

* `host` (required); `port`: default 993 with `security` "tls" (the default, TLS from the start),
  143 with "starttls" (STARTTLS, never falling back to plain text) or "none" (plain text).
* `username` (required), with `password_env` (the name of an environment variable holding the
  password) or `password_file` (a file holding it; relative to the profile directory). The password
  is read at logon and never goes into the profile, a log or the status table; a plain `password`
  option is refused.
* `verify_tls` (default true), `ca_file` (a PEM bundle to trust; relative to the profile directory).
* `mailbox` (default "INBOX"); `after_download`: "keep" (default), "seen", "move:FOLDER", "delete".
* `idle` (default false): wait in IDLE inside poll() for up to `idle_seconds` (default 5) when
  nothing is new. Keep it short: the spooler waits for poll() to return.
* `timeout`: seconds for connecting and for each reply (default 30).

The shared machinery of the inbound mail-access transports (options, the state file, the
at-least-once ordering, the fallback messages) lives here too; the `pop3` transport reuses it.
"""

from __future__ import annotations

import abc
import ast
import contextlib
import errno
import imaplib
import json
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError, LoginError

from .. import mime
from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from ..mapi.flags import AttachMethod, LogoffFlags, LogonFlags, LogonResultFlags, StatusCode, ValidateFlags
from ..mapi.message import Attachment, MessageData
from .options import boolean as _boolean
from .options import client_tls_context, read_password, setup_problems
from .options import invalid as _invalid
from .options import number as _number
from .options import path as _path
from .options import text as _text
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
DEFAULT_IDLE_SECONDS = 5.0
MAX_IDLE_SECONDS = 300.0
DEFAULT_MAILBOX = "INBOX"
AFTER_DOWNLOAD_MODES = ("keep", "seen", "delete", "move:FOLDER")
STATE_VERSION = 1
RAW_ATTACHMENT_NAME = "original-message.eml"


# Option parsing is shared with pop3 and the other transports (options.py).


def refuse_password(options: Mapping[str, Any]) -> None:
    if "password" in options:
        raise _invalid(
            "option 'password' is not accepted: a password never goes into the profile. Put it in an "
            "environment variable and name that in 'password_env', or in a file readable only by you "
            "and name that in 'password_file'"
        )


def validate_server_options(
    options: Mapping[str, Any], *, default_ports: Mapping[str, int], protocol: str
) -> dict[str, Any]:
    """The options every mail-access transport shares: host, port, security, credentials, TLS, timeout.

    `options` has been checked for unknown names already; the transport-specific ones are copied
    through unchanged for the caller to check.
    """
    refuse_password(options)
    out: dict[str, Any] = dict(options)
    if "host" not in options:
        raise _invalid(f"option 'host' is required: the {protocol} server to fetch mail from")
    out["host"] = _token("host", options["host"])
    security = str(options.get("security", "tls")).strip().lower()
    if security not in SECURITY_MODES:
        raise _invalid(f"option 'security' must be one of {', '.join(SECURITY_MODES)}, not {options['security']!r}")
    out["security"] = security
    port = options.get("port", default_ports[security])
    port_number = _number("port", port, integer=True)
    if port_number > 65535:
        raise _invalid(f"option 'port' must be a port number (1-65535), not {port!r}")
    out["port"] = int(port_number)

    if "username" not in options:
        raise _invalid(f"option 'username' is required: the {protocol} account to log in as")
    out["username"] = _token("username", options["username"])
    if "password_env" in options and "password_file" in options:
        raise _invalid("options 'password_env' and 'password_file' exclude each other: give one of them")
    if "password_env" in options:
        out["password_env"] = _token("password_env", options["password_env"])
    elif "password_file" in options:
        out["password_file"] = _path("password_file", options["password_file"])
    else:
        raise _invalid("give 'password_env' or 'password_file' to say where the password is")

    out["verify_tls"] = _boolean("verify_tls", options.get("verify_tls", True))
    if "ca_file" in options:
        if security == "none":
            raise _invalid("option 'ca_file' needs security 'tls' or 'starttls'")
        out["ca_file"] = _path("ca_file", options["ca_file"])
    out["timeout"] = _number("timeout", options.get("timeout", DEFAULT_TIMEOUT))
    return out


SERVER_OPTION_HELP: Mapping[str, str] = {
    "host": "the server's host name or address (required)",
    "security": "'tls' (default, TLS from the start), 'starttls' or 'none' (plain text)",
    "username": "the account to log in as (required)",
    "password_env": "the name of an environment variable holding the password",
    "password_file": "a file holding the password; relative to the profile directory",
    "verify_tls": "check the server's TLS certificate and host name (default true)",
    "ca_file": "a CA bundle (PEM) to trust, e.g. a private CA; relative to the profile directory",
    "timeout": f"seconds for connecting and for each reply (default {DEFAULT_TIMEOUT:g})",
}


class Secret:
    """Holds the password; never shows it in a repr or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<password hidden>"

    __str__ = __repr__


@dataclass(frozen=True)
class ServerConfig:
    """The validated connection options of a mail-access service (never the password itself)."""

    host: str
    port: int
    security: str
    username: str
    password_env: str | None
    password_file: Path | None
    verify_tls: bool
    ca_file: Path | None
    timeout: float

    @staticmethod
    def server_fields(opts: Mapping[str, Any], profile_dir: Path) -> dict[str, Any]:
        def resolve(name: str) -> Path | None:
            if name not in opts:
                return None
            path = Path(opts[name]).expanduser()
            return path if path.is_absolute() else profile_dir / path

        return {
            "host": opts["host"],
            "port": opts["port"],
            "security": opts["security"],
            "username": opts["username"],
            "password_env": opts.get("password_env"),
            "password_file": resolve("password_file"),
            "verify_tls": opts["verify_tls"],
            "ca_file": resolve("ca_file"),
            "timeout": opts["timeout"],
        }

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def account(self) -> str:
        """What the state file is about: the user at the server."""
        return f"{self.username}@{self.where}"

    def read_password(self) -> Secret:
        """The password from the environment or the password file; MAPI_E_FAILONEPROVIDER when missing."""
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


# --- messages standing in for ones that could not be delivered as they are -------------------------


def conversion_failed(raw: bytes, where: str, error: str) -> MessageData:
    """A note saying the message could not be converted, with the message as received attached."""
    now = datetime.now(UTC)
    body = (
        f"postroom could not convert the message {where} into a MAPI message:\n\n    {error}\n\n"
        f"The message as it was received ({len(raw)} bytes) is attached as {RAW_ATTACHMENT_NAME}.\n"
    )
    attachment = Attachment(
        props={
            T.PR_ATTACH_METHOD: int(AttachMethod.BY_VALUE),
            T.PR_ATTACH_LONG_FILENAME: RAW_ATTACHMENT_NAME,
            T.PR_ATTACH_FILENAME: RAW_ATTACHMENT_NAME,
            T.PR_ATTACH_EXTENSION: ".eml",
            T.PR_ATTACH_MIME_TAG: "application/octet-stream",
            T.PR_ATTACH_SIZE: len(raw),
            T.PR_ATTACH_NUM: 0,
            T.PR_RENDERING_POSITION: -1,
        },
        num=0,
        data=raw,
        size=len(raw),
    )
    return MessageData(
        props={
            T.PR_MESSAGE_CLASS: "IPM.Note",
            T.PR_SUBJECT: f"(message could not be converted: {where})",
            T.PR_BODY: body,
            T.PR_MESSAGE_DELIVERY_TIME: now,
            T.PR_IMPORTANCE: 1,
            T.PR_PRIORITY: 0,
            T.PR_HASATTACH: True,
        },
        attachments=[attachment],
    )


def fetch_failed(where: str, answer: str) -> MessageData:
    """A note saying the server would not return the message."""
    return MessageData(
        props={
            T.PR_MESSAGE_CLASS: "IPM.Note",
            T.PR_SUBJECT: f"(message could not be fetched: {where})",
            T.PR_BODY: (
                f"The server would not return the message {where}. It answered:\n\n    {answer}\n\n"
                "The message was skipped; it may still be on the server.\n"
            ),
            T.PR_MESSAGE_DELIVERY_TIME: datetime.now(UTC),
            T.PR_IMPORTANCE: 1,
            T.PR_PRIORITY: 0,
            T.PR_HASATTACH: False,
        }
    )


def fill(message: InboundMessage, data: MessageData) -> None:
    """Copy a converted message into the spooler's new message."""
    message.data.props.clear()
    message.data.props.update(data.props)
    message.data.recipients = list(data.recipients)
    message.data.attachments = list(data.attachments)


# --- the shared logon --------------------------------------------------------------------------------


class ConnectionLost(Exception):
    """A connection could not be made or broke; the text is ready for the status row."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class MessageFailed(Exception):
    """The server would not return one message (its answer in the text); the others are fine."""


class InboundLogon(TransportLogon, Generic[K]):
    """The at-least-once receive loop of a mail-access transport; subclasses speak the protocol.

    Keys (`K`) name one message on the server (an IMAP UID with its UIDVALIDITY, a POP3 UIDL).
    """

    protocol = "mail"

    def __init__(
        self,
        provider: TransportProvider,
        flags: LogonFlags,
        config: ServerConfig,
        password: Secret,
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
            log.info("%s: logging in to %s without TLS sends the password in plain text", self.name, config.where)
        if flags & LogonFlags.NO_CONNECT:
            self.status.status_string = "offline (no connect)"
        elif self.offline:
            self.status.status_string = "inbound disabled for this logon (no inbound)"
        else:
            self.status.status_string = f"not connected yet to {config.where}{self._tls_note}"
        #: The message handed over last, not yet confirmed: (InboundMessage.ref, key).
        self._pending: tuple[int, K] | None = None
        self._queue: list[K] = []
        self._need_scan = True
        self._waiting_for_lock = False
        self.connections_opened = 0
        self.received = 0

    def address_types(self) -> Registration:
        return Registration.none()

    # --- what a protocol implements ------------------------------------------------------------
    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @abc.abstractmethod
    def _open(self) -> None:
        """Connect and log in (and whatever else a fresh connection needs); raise on failure."""

    @abc.abstractmethod
    def _close(self, polite: bool) -> None:
        """Close the connection (politely: LOGOUT/QUIT first); never raises."""

    @abc.abstractmethod
    def _scan(self) -> list[K]:
        """The keys of the messages not delivered yet, oldest first (connected)."""

    @abc.abstractmethod
    def _fetch(self, key: K) -> bytes | None:
        """The message's bytes; None when it is gone; MessageFailed when the server refuses it."""

    @abc.abstractmethod
    def _record(self, key: K) -> None:
        """Record `key` as delivered in the state file (no network)."""

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

    def _explain(self, exc: Exception) -> str:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            text = f"timed out after {self.config.timeout:g} s"
        return f"{type(exc).__name__}: {text}" if isinstance(exc, ssl.SSLError) else text

    # --- connection handling ---------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            self._open()
        except ConnectionLost:
            self._close(polite=False)
            raise
        except Exception as exc:
            self._close(polite=False)
            if self._connection_error(exc) or isinstance(exc, LoginError | ValueError):
                raise ConnectionLost(
                    f"cannot connect to {self.protocol} server {self.config.where}: {self._explain(exc)}"
                ) from None
            raise
        self.connections_opened += 1
        self._need_scan = True
        self.status.set(
            add=StatusCode.AVAILABLE,
            remove=StatusCode.FAILURE | StatusCode.OFFLINE,
            text=f"connected to {self.config.where}{self._tls_note}",
        )

    def _session(self, work: Callable[[], R]) -> R:
        """Run `work` on a connection; a broken reused connection is replaced once, at once."""
        for attempt in (1, 2):
            reused = self.connected
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
                            f"{self.protocol} server {self.config.where} refused a command: {_answer(exc)}"
                        ) from None
                    raise
                self._close(polite=False)
                if not reused or attempt == 2:
                    raise ConnectionLost(
                        f"connection to {self.protocol} server {self.config.where} lost: {self._explain(exc)}"
                    ) from None
                log.info("%s: connection to %s broke (%s); connecting again", self.name, self.config.where, exc)
        raise AssertionError("unreachable")

    def _failed(self, text: str) -> None:
        self._close(polite=False)
        self._need_scan = True
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
                self._record(confirmed)
            except MAPIError as exc:
                # Stored but not recorded: it will come again (at least once). Stop this run here.
                self._failed(str(exc))
                return
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
            when = datetime.now(UTC).strftime("%H:%M:%S UTC")
            self.status.set(
                text=f"checked {self.config.where}{self._tls_note} at {when}: {self.received} message(s) received"
            )
            return
        key, data = step
        try:
            fill(message, data)
        except Exception as exc:  # anything at all: this message must not block the next ones
            log.exception("%s: cannot fill the new message from %s", self.name, self._describe(key))
            fill(message, fetch_failed(self._describe(key), f"{type(exc).__name__}: {exc}"))
        message.save()
        self._pending = (message.ref, key)

    def _confirm(self, ref: int) -> K | None:
        """The key handed over last if this call confirms the spooler stored it, else None."""
        pending, self._pending = self._pending, None
        if pending is None:
            if ref <= 1:
                self._queue.clear()  # a new receive run: look again
                self._need_scan = True
            return None
        handed_ref, key = pending
        if ref > handed_ref:
            return key
        # A new run began without the spooler coming back for the next message: it did not store it.
        log.warning(
            "%s: %s was handed over but not confirmed stored; it will be fetched again", self.name, self._describe(key)
        )
        self._queue.clear()
        self._need_scan = True
        return None

    def _next(self) -> tuple[K, MessageData] | None:
        self._after_record()
        if self._need_scan:
            self._queue = self._scan()
            self._need_scan = False
        while self._queue:
            key = self._queue[0]
            where = self._describe(key)
            try:
                raw = self._fetch(key)
            except MessageFailed as exc:
                self._queue.pop(0)
                log.warning("%s: the server would not return %s: %s", self.name, where, exc)
                return key, fetch_failed(where, str(exc))
            self._queue.pop(0)
            if raw is None:
                continue  # gone meanwhile (another client deleted it)
            try:
                data = mime.from_mime(raw)
            except Exception as exc:  # from_mime never raises; anything else must not block the rest
                log.exception("%s: cannot convert %s", self.name, where)
                data = conversion_failed(raw, where, f"{type(exc).__name__}: {exc}")
            return key, data
        self._end_run()
        self._need_scan = True
        return None

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
                self._describe(self._pending[1]),
            )
            self._pending = None
        self._close(polite=True)
        self.state.unlock()


# --- IMAP ------------------------------------------------------------------------------------------------

_IMAP_CONNECTION_ERRORS = (OSError, EOFError, imaplib.IMAP4.abort)
ImapKey = tuple[int, int]  # (UIDVALIDITY, UID)


@dataclass(frozen=True)
class IMAPConfig(ServerConfig):
    mailbox: str
    after_download: str  # keep | seen | delete | move
    move_to: str | None
    idle: bool
    idle_seconds: float

    @classmethod
    def from_options(cls, options: Mapping[str, Any], profile_dir: Path) -> IMAPConfig:
        opts = IMAPProvider.validate_options(options)
        action, _, folder = str(opts["after_download"]).partition(":")
        return cls(
            **cls.server_fields(opts, profile_dir),
            mailbox=opts["mailbox"],
            after_download=action,
            move_to=folder or None,
            idle=opts["idle"],
            idle_seconds=opts["idle_seconds"],
        )


class IMAPLogon(InboundLogon[ImapKey]):
    protocol = "IMAP"

    def __init__(
        self, provider: IMAPProvider, flags: LogonFlags, config: IMAPConfig, password: Secret, state: StateFile
    ) -> None:
        super().__init__(provider, flags, config, password, state)
        self.imap_config = config
        self._client: Any = None
        self._uidvalidity = 0
        self._folder_ready = False
        self._just_selected = False

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _connection_error(self, exc: Exception) -> bool:
        return isinstance(exc, _IMAP_CONNECTION_ERRORS)

    def _refusal(self, exc: Exception) -> bool:
        return isinstance(exc, imaplib.IMAP4.error)

    def _describe(self, key: ImapKey) -> str:
        return f"UID {key[1]} in {self.imap_config.mailbox} at {self.config.where}"

    # --- state ------------------------------------------------------------------------------------
    def _box(self) -> dict[str, Any]:
        boxes = self.state.data.get("mailboxes")
        if not isinstance(boxes, dict):
            boxes = self.state.data["mailboxes"] = {}
        box = boxes.get(self.imap_config.mailbox)
        if isinstance(box, dict):
            return box
        fresh: dict[str, Any] = {}
        boxes[self.imap_config.mailbox] = fresh
        return fresh

    def _last_uid(self) -> int:
        value = self._box().get("last_uid", 0)
        return value if isinstance(value, int) else 0

    # --- connection -------------------------------------------------------------------------------
    def _open(self) -> None:
        cfg = self.config
        client = IMAPClient(
            cfg.host, port=cfg.port, ssl=cfg.security == "tls", ssl_context=self._tls, timeout=cfg.timeout
        )
        self._client = client
        step = "STARTTLS"
        try:
            if cfg.security == "starttls":
                client.starttls(self._tls)
            step = "LOGIN"
            client.login(cfg.username, self._password.reveal())
        except CapabilityError:
            raise ConnectionLost(f"IMAP server {cfg.where} does not offer STARTTLS (security 'starttls')") from None
        except LoginError as exc:
            raise ConnectionLost(f"login as {cfg.username} at {cfg.where} failed: {_answer(exc)}") from None
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise ConnectionLost(f"IMAP server {cfg.where} refused {step}: {_answer(exc)}") from None
        self._folder_ready = False
        self._select()
        self._just_selected = True

    def _close(self, polite: bool) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if polite:
            with contextlib.suppress(Exception):
                client.logout()
                return
        with contextlib.suppress(Exception):
            client.shutdown()

    def _select(self) -> None:
        """SELECT the mailbox (again: it shows what arrived since) and check its UIDVALIDITY."""
        mailbox = self.imap_config.mailbox
        try:
            info = self._client.select_folder(mailbox)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise ConnectionLost(f"cannot select mailbox {mailbox!r} at {self.config.where}: {_answer(exc)}") from None
        uidvalidity = int(info.get(b"UIDVALIDITY", 0) or 0)
        box = self._box()
        if box.get("uidvalidity") != uidvalidity:
            if "uidvalidity" in box:
                log.warning(
                    "%s: UIDVALIDITY of %s changed (%s -> %s); every message in it is fetched again",
                    self.name,
                    mailbox,
                    box.get("uidvalidity"),
                    uidvalidity,
                )
            box.clear()
            box.update({"uidvalidity": uidvalidity, "last_uid": 0, "after_download": []})
            self.state.save()
            self._queue.clear()
            self._need_scan = True
        self._uidvalidity = uidvalidity

    def _reselect(self) -> None:
        """SELECT again to see what arrived, unless the connection was opened just now."""
        if self._just_selected:
            self._just_selected = False
        else:
            self._select()

    def _search_new(self) -> list[int]:
        last = self._last_uid()
        found = self._client.search(["UID", f"{last + 1}:*"])
        return sorted(int(uid) for uid in found if int(uid) > last)

    def _scan(self) -> list[ImapKey]:
        self._reselect()
        self._after_record()
        return [(self._uidvalidity, uid) for uid in self._search_new()]

    def _check(self) -> bool:
        self._reselect()
        self._after_record()
        if self._search_new():
            return True
        if not self.imap_config.idle or not self._client.has_capability("IDLE"):
            return False
        self._client.idle()
        try:
            responses = self._client.idle_check(timeout=self.imap_config.idle_seconds)
        finally:
            self._client.idle_done()
        return bool(responses) and bool(self._search_new())

    def _fetch(self, key: ImapKey) -> bytes | None:
        uidvalidity, uid = key
        if uidvalidity != self._uidvalidity:
            return None
        try:
            response = self._client.fetch([uid], ["BODY.PEEK[]"])
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise MessageFailed(_answer(exc)) from None
        item = response.get(uid)
        if item is None:
            return None
        body = item.get(b"BODY[]")
        if body is None:
            raise MessageFailed("the server returned no content (NIL)")
        return bytes(body)

    # --- recording and after_download -------------------------------------------------------------
    def _record(self, key: ImapKey) -> None:
        uidvalidity, uid = key
        box = self._box()
        if box.get("uidvalidity") != uidvalidity:
            return  # the mailbox was recreated meanwhile; its messages are fetched afresh
        box["last_uid"] = max(self._last_uid(), uid)
        if self.imap_config.after_download != "keep":
            todo = box.setdefault("after_download", [])
            if uid not in todo:
                todo.append(uid)
        self.state.save()

    def _after_record(self) -> None:
        box = self._box()
        todo = box.get("after_download") or []
        if not todo or self.imap_config.after_download == "keep":
            if todo:
                box["after_download"] = []
                self.state.save()
            return
        for uid in list(todo):
            try:
                self._apply_after_download(uid)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                text = f"after_download {self._after_download_text()} failed for UID {uid}: {_answer(exc)}"
                self.status.failed(text)
                log.warning("%s: %s", self.name, text)
            todo.remove(uid)
            self.state.save()

    def _after_download_text(self) -> str:
        cfg = self.imap_config
        return f"move:{cfg.move_to}" if cfg.after_download == "move" else cfg.after_download

    def _apply_after_download(self, uid: int) -> None:
        client = self._client
        action = self.imap_config.after_download
        if action == "seen":
            client.add_flags([uid], [b"\\Seen"], silent=True)
        elif action == "delete":
            client.add_flags([uid], [b"\\Deleted"], silent=True)
            self._expunge(uid)
        elif action == "move":
            folder = self.imap_config.move_to
            assert folder is not None
            if not self._folder_ready:
                if not client.folder_exists(folder):
                    client.create_folder(folder)
                self._folder_ready = True
            if client.has_capability("MOVE"):
                client.move([uid], folder)
            else:
                client.copy([uid], folder)
                client.add_flags([uid], [b"\\Deleted"], silent=True)
                self._expunge(uid)

    def _expunge(self, uid: int) -> None:
        if self._client.has_capability("UIDPLUS"):
            self._client.uid_expunge([uid])
        else:  # plain EXPUNGE also removes other messages marked \Deleted
            self._client.expunge()


def _answer(exc: BaseException) -> str:
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


class IMAPProvider(TransportProvider):
    """Fetches mail from an IMAP mailbox."""

    display_name = "IMAP"
    receives = True
    option_help: Mapping[str, str] = {
        **SERVER_OPTION_HELP,
        "port": "the server's port (default 993 for tls, 143 for starttls and none)",
        "mailbox": f"the mailbox to fetch from (default {DEFAULT_MAILBOX!r})",
        "after_download": "what to do on the server with a delivered message: keep (default), seen, "
        "move:FOLDER or delete",
        "idle": "wait in IDLE during a poll for new mail to arrive (default false)",
        "idle_seconds": f"how long a poll waits in IDLE (default {DEFAULT_IDLE_SECONDS:g})",
    }

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        refuse_password(options)
        opts = super().validate_options(options)
        out = validate_server_options(opts, default_ports={"tls": 993, "starttls": 143, "none": 143}, protocol="IMAP")
        out["mailbox"] = _text("mailbox", opts.get("mailbox", DEFAULT_MAILBOX))
        after = opts.get("after_download", "keep")
        if not isinstance(after, str):
            raise _invalid(f"option 'after_download' must be one of {', '.join(AFTER_DOWNLOAD_MODES)}, not {after!r}")
        action, colon, folder = after.strip().partition(":")
        action = action.strip().lower()
        if action == "move":
            if not colon or not folder.strip():
                raise _invalid("option 'after_download': 'move' needs a folder, as in 'move:Archive'")
            folder = _text("after_download", folder)
            if folder == out["mailbox"]:
                raise _invalid("option 'after_download': cannot move messages into the mailbox they come from")
            out["after_download"] = f"move:{folder}"
        elif action in ("keep", "seen", "delete") and not colon:
            out["after_download"] = action
        else:
            raise _invalid(f"option 'after_download' must be one of {', '.join(AFTER_DOWNLOAD_MODES)}, not {after!r}")
        out["idle"] = _boolean("idle", opts.get("idle", False))
        idle_seconds = _number("idle_seconds", opts.get("idle_seconds", DEFAULT_IDLE_SECONDS))
        if idle_seconds > MAX_IDLE_SECONDS:
            raise _invalid(f"option 'idle_seconds' must be at most {MAX_IDLE_SECONDS:g}, not {idle_seconds:g}")
        out["idle_seconds"] = idle_seconds
        return out

    @classmethod
    def setup_problems(cls, options: Mapping[str, Any], profile_dir: Path) -> list[str]:
        return setup_problems(cls.validate_options(options), profile_dir)

    def logon(self, flags: LogonFlags) -> IMAPLogon:
        config = IMAPConfig.from_options(self.context.options, self.context.profile_dir)
        password = config.read_password()
        state = StateFile(state_path(self.context.profile_dir, "imap", self.context.service_name), config.account)
        try:
            state.load()  # a damaged file stops the provider now, not at the first poll
        except MAPIError as exc:
            raise MAPIError(HResult.MAPI_E_FAILONEPROVIDER, str(exc)) from None
        return IMAPLogon(self, flags, config, password, state)
