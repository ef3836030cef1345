"""The `imap` transport: fetches new mail from a mailbox on an IMAP server (inbound only).

The logon registers no address type (`Registration.none()`: it sends nothing) and asks to be
polled (LOGON_SP_POLL). `poll()` connects when needed, SELECTs the mailbox and answers whether
it holds messages with a UID above the last one delivered (or ones owed from earlier runs); with
``idle = true`` and nothing new it waits up to `idle_seconds` in IDLE for the server to announce
new mail. `start_message()` hands the spooler the next new message, fetched with ``BODY.PEEK[]``
(so fetching alone never sets ``\\Seen``) and converted with `mime.from_mime` (a DSN becomes a
REPORT.IPM.Note.NDR). What the inbound transports share (the state file and its lock, when a
message is acknowledged, what is never acknowledged, the bounds on every exchange) is in
`inbound.py`.

The state file, ``.imap-<service>.json``, holds per mailbox and UIDVALIDITY the highest UID
delivered (`last_uid`), the UIDs below it still owed: ones the server would not return
(`retry`), ones too large (`oversize`, with their size: they are fetched once max_message_bytes
has grown past it), and the `after_download` work not done yet. When the server's UIDVALIDITY
changes, every message in the mailbox is fetched again (the old UIDs mean nothing any more); so
is everything in the mailbox the first time. A scan asks for the RFC822.SIZE of what is new
before anything is downloaded.

`after_download` acts on the server only for messages recorded as stored and is itself kept in
the state file until done, so a connection lost in between only delays it ("seen" sets
``\\Seen``; "move:FOLDER" moves the message, creating FOLDER when missing, with MOVE or COPY +
EXPUNGE; "delete" sets ``\\Deleted`` and expunges that UID, with UID EXPUNGE when the server has
UIDPLUS). A message reported as too large is never touched.

Options: those of every mail-access transport (`inbound.py`), the `port` defaulting to 993 with
`security` "tls" (the default) and to 143 with "starttls" (STARTTLS) or "none"; and:

* `mailbox` (default "INBOX"); `after_download`: "keep" (default), "seen", "move:FOLDER", "delete".
* `token_command` / `token_file` / `oauth_mechanism` instead of a password: AUTHENTICATE
  XOAUTH2 or OAUTHBEARER (RFC 7628) with an OAuth2 access token (`oauth.py`).
* `idle` (default false): wait in IDLE inside poll() for up to `idle_seconds` (default 5) when
  nothing is new. Keep it short: the spooler waits for poll() to return.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError, LoginError
from imapclient.imap4 import IMAP4WithTimeout
from imapclient.tls import IMAP4_TLS, wrap_socket

from ..mapi.flags import LogonFlags
from . import inbound
from .exchange import ExchangeGuard
from .oauth import ABORT_MESSAGE, Mechanism, sasl_message
from .options import Secret
from .options import boolean as _boolean
from .options import invalid as _invalid
from .options import number as _number
from .options import text as _text

log = logging.getLogger(__name__)

DEFAULT_IDLE_SECONDS = 5.0
MAX_IDLE_SECONDS = 300.0
DEFAULT_MAILBOX = "INBOX"
AFTER_DOWNLOAD_MODES = ("keep", "seen", "delete", "move:FOLDER")

_IMAP_CONNECTION_ERRORS = (OSError, EOFError, imaplib.IMAP4.abort)
ImapKey = tuple[int, int]  # (UIDVALIDITY, UID)
#: UIDs per FETCH of sizes (a command line of a few kilobytes).
_SIZE_CHUNK = 500


# --- the client: imapclient with every read counted and every connection watched ---------------------


class _Metered(imaplib.IMAP4):
    """imaplib's reader, counting what it reads against the exchange's budget.

    A literal's announced size is checked before imaplib reads it in one piece: reading
    ``{8000000000}`` would reserve 8 GB at once.
    """

    _guard: ExchangeGuard

    def read(self, size: int) -> bytes:
        self._guard.reserve(size)
        data: bytes = super().read(size)
        self._guard.spend(len(data))
        return data

    def readline(self) -> bytes:
        line: bytes = super().readline()
        self._guard.spend(len(line))
        return line


class _PlainIMAP(_Metered, IMAP4WithTimeout):  # type: ignore[misc]
    def __init__(self, guard: ExchangeGuard, host: str, port: int, timeout: float | None) -> None:
        self._guard = guard
        IMAP4WithTimeout.__init__(self, host, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout if timeout is not None else self._timeout)
        self._guard.attach(sock)
        return sock


class _TLSIMAP(_Metered, IMAP4_TLS):  # type: ignore[misc]
    def __init__(self, guard: ExchangeGuard, host: str, port: int, context: Any, timeout: float | None) -> None:
        self._guard = guard
        IMAP4_TLS.__init__(self, host, port, context, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout if timeout is not None else self._timeout)
        self._guard.attach(sock)  # before the handshake, which a slow server can trickle too
        wrapped: socket.socket = wrap_socket(sock, self.ssl_context, self.host)
        return wrapped


class _Client(IMAPClient):  # type: ignore[misc]
    """IMAPClient on the metered imaplib classes above (its own choice of class is `_create_IMAP4`)."""

    def __init__(self, guard: ExchangeGuard, host: str, **kwargs: Any) -> None:
        self._guard = guard
        super().__init__(host, **kwargs)

    def _create_IMAP4(self) -> imaplib.IMAP4:
        connect_timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _TLSIMAP(self._guard, self.host, self.port, self.ssl_context, connect_timeout)
        return _PlainIMAP(self._guard, self.host, self.port, connect_timeout)

    def oauth_login(self, mechanism: Mechanism, message: bytes) -> None:
        """AUTHENTICATE `mechanism` with the client's first SASL `message`; imaplib.IMAP4.error on NO.

        (imapclient's own `oauth2_login` answers the server's error challenge with the token
        again; RFC 7628 §3.2.3 wants the abort message, which gets the final NO at once.)"""
        answers = iter((message,))

        def answer(_challenge: bytes) -> bytes:
            return next(answers, ABORT_MESSAGE[mechanism])

        self._imap.authenticate(mechanism.value, answer)


# --- the transport -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IMAPConfig(inbound.ServerConfig):
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


class IMAPLogon(inbound.InboundLogon[ImapKey]):
    protocol = "IMAP"
    token_unchecked = "[UNAVAILABLE]"  # RFC 5530

    def __init__(
        self,
        provider: IMAPProvider,
        flags: LogonFlags,
        config: IMAPConfig,
        password: Secret | None,
        state: inbound.StateFile,
    ) -> None:
        super().__init__(provider, flags, config, password, state)
        self.imap_config = config
        self._uidvalidity = 0
        self._folder_ready = False
        self._just_selected = False

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

    def _retry(self) -> list[int]:
        """UIDs the server would not return: owed, whatever `last_uid` says."""
        value = self._box().setdefault("retry", [])
        if not isinstance(value, list):
            value = self._box()["retry"] = []
        return value

    def _oversize(self) -> dict[str, int]:
        """UID (as text: JSON keys) → size of the messages reported as too large."""
        value = self._box().setdefault("oversize", {})
        if not isinstance(value, dict):
            value = self._box()["oversize"] = {}
        return value

    def _owed(self) -> set[int]:
        """UIDs at or below `last_uid` still to fetch: refused before, or too large for a smaller limit."""
        limit = self.config.max_message_bytes
        fits = {int(uid) for uid, size in self._oversize().items() if isinstance(size, int) and size <= limit}
        return {uid for uid in self._retry() if isinstance(uid, int)} | fits

    # --- connection -------------------------------------------------------------------------------
    def _open(self) -> None:
        cfg = self.config
        client = _Client(
            self._guard, cfg.host, port=cfg.port, ssl=cfg.security == "tls", ssl_context=self._tls, timeout=cfg.timeout
        )
        self._client = client
        step = "STARTTLS"
        try:
            if cfg.security == "starttls":
                client.starttls(self._tls)
            step = "LOGIN"
            if cfg.oauth is not None:
                self._offers(client, cfg.oauth.mechanism)
                self._token_login(lambda token: self._authenticate(client, token))
            else:
                client.login(cfg.username, self._password_now())
        except CapabilityError:
            raise inbound.ConnectionLost(
                f"IMAP server {cfg.where} does not offer STARTTLS (security 'starttls')"
            ) from None
        except LoginError as exc:
            raise inbound.ConnectionLost(
                f"login as {cfg.username} at {cfg.where} failed: {inbound.server_answer(exc)}"
            ) from None
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise inbound.ConnectionLost(
                f"IMAP server {cfg.where} refused {step}: {inbound.server_answer(exc)}"
            ) from None
        self._folder_ready = False
        self._select()
        self._just_selected = True

    def _offers(self, client: _Client, mechanism: Mechanism) -> None:
        """A server without the mechanism is said so (no token is fetched or sent to it)."""
        if not client.has_capability(f"AUTH={mechanism.value}"):
            raise inbound.ConnectionLost(
                f"IMAP server {self.config.where} does not offer AUTHENTICATE {mechanism.value} "
                "(option 'oauth_mechanism')"
            )

    def _authenticate(self, client: _Client, token: Secret) -> None:
        cfg = self.config
        assert cfg.oauth is not None
        message = sasl_message(cfg.oauth.mechanism, cfg.username, token, cfg.host, cfg.port)
        try:
            client.oauth_login(cfg.oauth.mechanism, message)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise inbound.TokenRefused(inbound.server_answer(exc)) from None

    def _disconnect(self, polite: bool) -> None:
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
            raise inbound.ConnectionLost(
                f"cannot select mailbox {mailbox!r} at {self.config.where}: {inbound.server_answer(exc)}"
            ) from None
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

    def _sizes(self, uids: list[int]) -> dict[int, int | None]:
        """UID → RFC822.SIZE of the messages among `uids` that exist (None: no usable size given).

        In chunks, to keep each command line short (servers limit its length)."""
        out: dict[int, int | None] = {}
        for start in range(0, len(uids), _SIZE_CHUNK):
            self._exchange()
            for uid, item in self._client.fetch(uids[start : start + _SIZE_CHUNK], ["RFC822.SIZE"]).items():
                size = item.get(b"RFC822.SIZE") if isinstance(item, dict) else None
                out[int(uid)] = size if isinstance(size, int) and size >= 0 else None
        return out

    def _scan(self) -> list[inbound.Candidate[ImapKey]]:
        self._reselect()
        self._after_record()
        self._exchange()
        new = self._search_new()
        owed = (self._owed() | {int(uid) for uid in self._oversize()}) - set(new)
        sizes = self._sizes(sorted(owed | set(new)))
        self._forget(owed - set(sizes))
        oversize = self._oversize()
        limit = self.config.max_message_bytes
        out: list[inbound.Candidate[ImapKey]] = []
        for uid in sorted(sizes):
            key = (self._uidvalidity, uid)
            reported = oversize.get(str(uid))
            if isinstance(reported, int) and reported > limit:
                out.append(inbound.Candidate(key, max(sizes[uid] or 0, reported), noted=True))
            else:
                out.append(inbound.Candidate(key, sizes[uid]))
        return out

    def _forget(self, gone: set[int]) -> None:
        """UIDs owed that are no longer in the mailbox (another client took them)."""
        if not gone:
            return
        box = self._box()
        box["retry"] = [uid for uid in self._retry() if uid not in gone]
        box["oversize"] = {uid: size for uid, size in self._oversize().items() if int(uid) not in gone}
        self.state.save()

    def _check(self) -> bool:
        self._reselect()
        self._after_record()
        self._exchange()
        if self._search_new() or self._owed():
            return True
        if not self.imap_config.idle or not self._client.has_capability("IDLE"):
            return False
        self._exchange(self.imap_config.idle_seconds)
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
            item = self._client.fetch([uid], ["BODY.PEEK[]"]).get(uid)
            if item is None and not self._client.search(["UID", str(uid)]):
                return None  # gone meanwhile
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise inbound.MessageFailed(inbound.server_answer(exc)) from None
        if not isinstance(item, dict):
            raise inbound.MessageFailed("the server answered without the message")
        body = item.get(b"BODY[]")
        if not isinstance(body, bytes):
            raise inbound.MessageFailed("the server returned no content (BODY[] NIL)")
        return body

    # --- recording and after_download -------------------------------------------------------------
    def _record(self, key: ImapKey, outcome: inbound.Outcome, size: int | None) -> None:
        uidvalidity, uid = key
        box = self._box()
        if box.get("uidvalidity") != uidvalidity:
            return  # the mailbox was recreated meanwhile; its messages are fetched afresh
        box["last_uid"] = max(self._last_uid(), uid)
        box["retry"] = [owed for owed in self._retry() if owed != uid]
        oversize = self._oversize()
        if outcome is inbound.Outcome.STORED:
            oversize.pop(str(uid), None)
            if self.imap_config.after_download != "keep":
                todo = box.setdefault("after_download", [])
                if uid not in todo:
                    todo.append(uid)
        else:  # reported as too large: noted, never touched on the server
            oversize[str(uid)] = max(size or 0, self.config.max_message_bytes + 1)
        self.state.save()

    def _retry_later(self, key: ImapKey) -> None:
        uidvalidity, uid = key
        retry = self._retry()
        if self._box().get("uidvalidity") == uidvalidity and uid not in retry:
            retry.append(uid)
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
            self._exchange()
            try:
                self._apply_after_download(uid)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                action = self._after_download_text()
                self._trouble(f"after_download {action} failed for UID {uid}: {inbound.server_answer(exc)}")
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


class IMAPProvider(inbound.InboundProvider):
    """Fetches mail from an IMAP mailbox."""

    display_name = "IMAP"
    protocol = "IMAP"
    default_ports: Mapping[str, int] = {"tls": 993, "starttls": 143, "none": 143}
    option_help: Mapping[str, str] = {
        **inbound.SERVER_OPTION_HELP,
        "port": "the server's port (default 993 for tls, 143 for starttls and none)",
        "mailbox": f"the mailbox to fetch from (default {DEFAULT_MAILBOX!r})",
        "after_download": "what to do on the server with a delivered message: keep (default), seen, "
        "move:FOLDER or delete",
        "idle": "wait in IDLE during a poll for new mail to arrive (default false)",
        "idle_seconds": f"how long a poll waits in IDLE (default {DEFAULT_IDLE_SECONDS:g})",
    }

    @classmethod
    def own_options(cls, opts: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
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

    def config(self) -> IMAPConfig:
        return IMAPConfig.from_options(self.context.options, self.context.profile_dir)

    def new_logon(
        self, flags: LogonFlags, config: IMAPConfig, password: Secret | None, state: inbound.StateFile
    ) -> IMAPLogon:
        return IMAPLogon(self, flags, config, password, state)
