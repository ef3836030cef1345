"""The `pop3` transport: fetches new mail from a POP3 maildrop (inbound only), with `poplib`.

Like the `imap` transport (whose shared machinery it uses; see there for the details): it
registers no address type, asks to be polled, keeps what it delivered in a JSON file in the
profile directory (``.pop3-<service>.json``, 0600, replaced atomically; here the UIDLs delivered
and still on the server), receives in one session of the profile at a time, delivers a note
instead of a message it cannot convert or fetch, and reports connection trouble in the status row,
connecting again at the next poll. With LogonFlags.NO_CONNECT it never connects.

A POP3 session sees the maildrop as it was at login, and deletions happen only at QUIT. So every
poll() is a session of its own (login, UIDL, QUIT), and so is every receive run: login, UIDL, then
RETR one message per `start_message` call, QUIT when everything new was handed over.

Ordering, at least once: a message's UIDL is recorded as delivered when the spooler asks for the
next message in the same run (it stored the previous one by then); only then, with
``leave_on_server = false``, is it marked for deletion (DELE), which the server carries out at the
QUIT that ends the run. A message handed over but never confirmed is fetched again. A recorded
message still on the server (its DELE was lost with the connection) is deleted at the next session.

Options:

* `host` (required); `port`: default 995 with `security` "tls" (the default, TLS from the start),
  110 with "starttls" (STLS, never falling back to plain text) or "none" (plain text).
* `username` (required), with `password_env` or `password_file` (relative to the profile directory);
  a plain `password` option is refused; the password never reaches the profile, a log or the status.
* `verify_tls` (default true), `ca_file` (a PEM bundle to trust; relative to the profile directory).
* `leave_on_server` (default true): false deletes each message from the server once delivered.
* `timeout`: seconds for connecting and for each reply (default 30).
"""

from __future__ import annotations

import contextlib
import poplib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..mapi.codes import HResult, MAPIError
from ..mapi.flags import LogonFlags
from .imap import (
    SERVER_OPTION_HELP,
    ConnectionLost,
    InboundLogon,
    MessageFailed,
    Secret,
    ServerConfig,
    StateFile,
    _answer,
    refuse_password,
    state_path,
    validate_server_options,
)
from .options import boolean as _boolean
from .options import setup_problems
from .spi import TransportProvider

#: poplib refuses lines longer than 2048 bytes; real mail has longer ones (RFC 5322's 998 is
#: often ignored), and a refused line leaves the rest of the message unread on the connection.
MAX_LINE = 64 * 1024 * 1024


class _LongLines:
    """poplib's line reader without its 2048-byte limit (mixed into POP3 and POP3_SSL)."""

    file: Any

    def _getline(self) -> tuple[bytes, int]:
        line: bytes = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets


class _POP3(_LongLines, poplib.POP3):
    pass


class _POP3_SSL(_LongLines, poplib.POP3_SSL):
    pass


def _connection_error(exc: Exception) -> bool:
    if isinstance(exc, OSError | EOFError):
        return True
    # poplib signals a closed connection and a desynchronised one as protocol errors.
    return isinstance(exc, poplib.error_proto) and str(exc).startswith(("-ERR EOF", "line too long"))


@dataclass(frozen=True)
class POP3Config(ServerConfig):
    leave_on_server: bool

    @classmethod
    def from_options(cls, options: Mapping[str, Any], profile_dir: Path) -> POP3Config:
        opts = POP3Provider.validate_options(options)
        return cls(**cls.server_fields(opts, profile_dir), leave_on_server=opts["leave_on_server"])


class POP3Logon(InboundLogon[str]):
    protocol = "POP3"

    def __init__(
        self, provider: POP3Provider, flags: LogonFlags, config: POP3Config, password: Secret, state: StateFile
    ) -> None:
        super().__init__(provider, flags, config, password, state)
        self.pop3_config = config
        self._client: poplib.POP3 | None = None
        self._numbers: dict[str, int] = {}  # UIDL -> message number in this session
        self._deleted: set[str] = set()  # DELE sent in this session

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _connection_error(self, exc: Exception) -> bool:
        return _connection_error(exc)

    def _refusal(self, exc: Exception) -> bool:
        return isinstance(exc, poplib.error_proto)

    def _describe(self, key: str) -> str:
        return f"UIDL {key} at {self.config.where}"

    # --- state ------------------------------------------------------------------------------------
    def _delivered(self) -> list[str]:
        value = self.state.data.setdefault("delivered", [])
        if not isinstance(value, list):
            value = self.state.data["delivered"] = []
        return value

    # --- connection -------------------------------------------------------------------------------
    def _open(self) -> None:
        cfg = self.config
        client: poplib.POP3
        if cfg.security == "tls":
            client = _POP3_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=self._tls)
        else:
            client = _POP3(cfg.host, cfg.port, timeout=cfg.timeout)
        self._client = client
        self._numbers = {}
        self._deleted = set()
        step = "STLS"
        try:
            if cfg.security == "starttls":
                client.stls(self._tls)
            step = "USER"
            client.user(cfg.username)
            step = "PASS"
            client.pass_(self._password.reveal())
        except poplib.error_proto as exc:
            if _connection_error(exc):
                raise
            if step == "STLS":
                raise ConnectionLost(f"POP3 server {cfg.where} refused STLS: {_answer(exc)}") from None
            raise ConnectionLost(f"login as {cfg.username} at {cfg.where} failed: {_answer(exc)}") from None

    def _close(self, polite: bool) -> None:
        client, self._client = self._client, None
        self._numbers = {}
        self._deleted = set()
        if client is None:
            return
        if polite:
            with contextlib.suppress(Exception):
                client.quit()  # the server carries out the DELEs now
                return
        with contextlib.suppress(Exception):
            client.close()

    def _listing(self) -> list[tuple[int, str]]:
        assert self._client is not None
        _, lines, _ = self._client.uidl()
        out: list[tuple[int, str]] = []
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                out.append((int(parts[0]), parts[1].decode("ascii", "replace")))
        return out

    def _scan(self) -> list[str]:
        if self._numbers or self._deleted:
            # A session that already served a run: start a new one to see what arrived since.
            self._close(polite=True)
            self._connect()
        listing = self._listing()
        self._numbers = {uidl: number for number, uidl in listing}
        delivered = self._delivered()
        on_server = set(self._numbers)
        kept = [uidl for uidl in delivered if uidl in on_server]
        if len(kept) != len(delivered):  # forget UIDLs no longer on the server (they are never reused)
            self.state.data["delivered"] = kept
            self.state.save()
        self._after_record()
        known = set(kept)
        return [uidl for _, uidl in listing if uidl not in known]

    def _check(self) -> bool:
        try:
            return bool(self._scan())
        finally:
            self._close(polite=True)  # a session sees only what was there at login

    def poll(self) -> bool:
        self._close(polite=True)
        return super().poll()

    def _fetch(self, key: str) -> bytes | None:
        assert self._client is not None
        number = self._numbers.get(key)
        if number is None:
            return None
        try:
            _, lines, _ = self._client.retr(number)
        except poplib.error_proto as exc:
            if _connection_error(exc):
                raise
            raise MessageFailed(_answer(exc)) from None
        return b"\r\n".join(lines) + b"\r\n"

    def _end_run(self) -> None:
        self._close(polite=True)

    # --- recording and deleting -------------------------------------------------------------------
    def _record(self, key: str) -> None:
        delivered = self._delivered()
        if key not in delivered:
            delivered.append(key)
        self.state.save()

    def _after_record(self) -> None:
        if self.pop3_config.leave_on_server or self._client is None:
            return
        for uidl in self._delivered():
            number = self._numbers.get(uidl)
            if number is None or uidl in self._deleted:
                continue
            try:
                self._client.dele(number)
            except poplib.error_proto as exc:
                if _connection_error(exc):
                    raise
                text = f"cannot delete {self._describe(uidl)}: {_answer(exc)}"
                self.status.failed(text)
            self._deleted.add(uidl)


class POP3Provider(TransportProvider):
    """Fetches mail from a POP3 maildrop."""

    display_name = "POP3"
    receives = True
    option_help: Mapping[str, str] = {
        **SERVER_OPTION_HELP,
        "security": "'tls' (default, TLS from the start), 'starttls' (STLS) or 'none' (plain text)",
        "port": "the server's port (default 995 for tls, 110 for starttls and none)",
        "leave_on_server": "keep delivered messages on the server (default true); false deletes them",
    }

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        refuse_password(options)
        opts = super().validate_options(options)
        out = validate_server_options(opts, default_ports={"tls": 995, "starttls": 110, "none": 110}, protocol="POP3")
        out["leave_on_server"] = _boolean("leave_on_server", opts.get("leave_on_server", True))
        return out

    @classmethod
    def setup_problems(cls, options: Mapping[str, Any], profile_dir: Path) -> list[str]:
        return setup_problems(cls.validate_options(options), profile_dir)

    def logon(self, flags: LogonFlags) -> POP3Logon:
        config = POP3Config.from_options(self.context.options, self.context.profile_dir)
        password = config.read_password()
        state = StateFile(state_path(self.context.profile_dir, "pop3", self.context.service_name), config.account)
        try:
            state.load()
        except MAPIError as exc:
            raise MAPIError(HResult.MAPI_E_FAILONEPROVIDER, str(exc)) from None
        return POP3Logon(self, flags, config, password, state)
