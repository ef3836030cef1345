"""The `pop3` transport: fetches new mail from a POP3 maildrop (inbound only), with `poplib`.

Like the `imap` transport, and with the same shared machinery (`inbound.py`: the state file and
its lock, when a message is acknowledged, what is never acknowledged, the bounds on every
exchange): it registers no address type, asks to be polled, receives in one session of the
profile at a time, and reports connection trouble in the status row, connecting again at the next
poll. With LogonFlags.NO_CONNECT it never connects.

A POP3 session sees the maildrop as it was at login, and deletions happen only at QUIT. So every
poll() is a session of its own (login, UIDL, LIST, QUIT), and so is every receive run: login,
UIDL and LIST, then RETR one message per `start_message` call, QUIT when everything new was
handed over. A message larger than max_message_bytes by its LIST size is never retrieved, and a
retrieval is cut off as soon as it goes past the limit. The bytes delivered are the message as
the server sent it, line endings included, only the dot-stuffing undone.

The state file, ``.pop3-<service>.json``, holds the messages delivered and still on the server
(`delivered`) and those reported as too large, with their size (`oversize`). A message is named
by its UIDL, unless the server gives two messages the same UIDL (it should not, RFC 1939 §7, but
some do): then each of them is named by the UIDL and a digest of its header (from TOP n 0), so
that each is delivered once, and a message whose twin has gone keeps its name. (A UIDL that turns
up twice only after its first message was delivered may bring that one once more. A server that
refuses TOP leaves only the size to tell twins apart: twins of the same size are then told apart
by their order alone, and one could be missed if the other left the server before it came.)

A message's UIDL is recorded as delivered when the spooler asks for the next message in the same
run (it stored the previous one by then); only then, with ``leave_on_server = false``, is it
marked for deletion (DELE), which the server carries out at the QUIT that ends the run. A
recorded message still on the server (its DELE was lost with the connection) is deleted at the
next session; a message reported as too large never is.

Options: those of every mail-access transport (`inbound.py`), the `port` defaulting to 995 with
`security` "tls" (the default) and to 110 with "starttls" (STLS) or "none"; and `leave_on_server`
(default true): false deletes each message from the server once delivered. With `token_command`
or `token_file` (`oauth.py`) it logs in with AUTH XOAUTH2 or OAUTHBEARER and the access token as
the initial response (RFC 5034) instead of USER/PASS.
"""

from __future__ import annotations

import contextlib
import hashlib
import poplib
import re
import socket
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..mapi.flags import LogonFlags
from . import inbound
from .exchange import ExchangeGuard
from .oauth import ABORT, Mechanism, initial_response
from .options import Secret
from .options import boolean as _boolean

#: Header fields some servers add or change as they serve a message (mbox status, keywords):
#: left out of the digest that tells messages with the same UIDL apart.
_VOLATILE_FIELDS = re.compile(
    rb"(status|x-status|x-keywords|x-uid|x-uidl|x-imap|x-imapbase|content-length|lines)\s*:", re.IGNORECASE
)


# --- the client: poplib with every read counted and every connection watched --------------------------


class _Guarded(poplib.POP3):
    """poplib with the exchange guard on its socket and behind every line it reads.

    Without poplib's 2048-byte line limit (real mail has longer lines; a refused line leaves the
    rest of the message unread on the connection): the budget bounds every line instead.
    """

    def __init__(self, guard: ExchangeGuard, *args: Any, **kwargs: Any) -> None:
        self._guard = guard
        super().__init__(*args, **kwargs)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout)
        self._guard.attach(sock)  # before the handshake, which a slow server can trickle too
        context = getattr(self, "context", None)
        if isinstance(self, poplib.POP3_SSL) and context is not None:
            wrapped: socket.socket = context.wrap_socket(sock, server_hostname=self.host)
            return wrapped
        return sock

    def _readline(self) -> bytes:
        """One line as it came, terminator included."""
        line: bytes = self.file.readline(self._guard.remaining() + 1)
        if not line:
            raise poplib.error_proto("-ERR EOF")
        self._guard.spend(len(line))
        return line

    def _getline(self) -> tuple[bytes, int]:
        line = self._readline()
        octets = len(line)
        if line.endswith(b"\r\n"):
            return line[:-2], octets
        return line.rstrip(b"\r\n"), octets

    def authenticate(self, mechanism: Mechanism, response: bytes) -> None:
        """AUTH `mechanism` with the base64 initial `response` (RFC 5034); error_proto when refused.

        A server that refuses a token may first send an error challenge ("+ " and base64 JSON):
        it is answered with the abort message (RFC 7628 §3.2.3) to get the final -ERR."""
        self.sock.sendall(b"AUTH " + mechanism.value.encode("ascii") + b" " + response + b"\r\n")
        reply, _ = self._getline()
        if reply == b"+" or reply.startswith(b"+ "):
            self.sock.sendall(ABORT[mechanism] + b"\r\n")
            reply, _ = self._getline()
        if not reply.startswith(b"+OK"):
            raise poplib.error_proto(reply)

    def retrieve(self, which: int) -> bytes:
        """RETR: the message exactly as the server sent it, only the dot-stuffing undone."""
        self.sock.sendall(f"RETR {which}\r\n".encode(self.encoding))
        status, _ = self._getline()
        if not status.startswith(b"+"):
            raise poplib.error_proto(status)
        out = bytearray()
        while True:
            line = self._readline()
            if line in (b".\r\n", b".\n"):
                return bytes(out)
            out += line[1:] if line.startswith(b".") else line


class _POP3(_Guarded):
    pass


class _POP3_SSL(_Guarded, poplib.POP3_SSL):
    pass


def _connection_error(exc: Exception) -> bool:
    if isinstance(exc, OSError | EOFError):
        return True
    # poplib signals a closed connection as a protocol error.
    return isinstance(exc, poplib.error_proto) and str(exc).startswith("-ERR EOF")


def _digest(header: bytes) -> str:
    """A digest of a header block that is the same however the server reports it (TOP or RETR)."""
    head = re.split(rb"\r?\n\r?\n", header, maxsplit=1)[0]
    lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
    kept: list[bytes] = []
    volatile = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # a continuation belongs to the field above
            if not volatile:
                kept.append(line)
            continue
        volatile = bool(_VOLATILE_FIELDS.match(line))
        if not volatile:
            kept.append(line)
    return hashlib.sha256(b"\n".join(kept)).hexdigest()[:16]


@dataclass(frozen=True)
class POP3Config(inbound.ServerConfig):
    leave_on_server: bool

    @classmethod
    def from_options(cls, options: Mapping[str, Any], profile_dir: Path) -> POP3Config:
        opts = POP3Provider.validate_options(options)
        return cls(**cls.server_fields(opts, profile_dir), leave_on_server=opts["leave_on_server"])


class POP3Logon(inbound.InboundLogon[str]):
    protocol = "POP3"
    token_unchecked = "[SYS/TEMP]"  # RFC 3206

    def __init__(
        self,
        provider: POP3Provider,
        flags: LogonFlags,
        config: POP3Config,
        password: Secret | None,
        state: inbound.StateFile,
    ) -> None:
        super().__init__(provider, flags, config, password, state)
        self.pop3_config = config
        self._client: _Guarded | None = None
        self._numbers: dict[str, int] = {}  # key -> message number in this session
        self._deleted: set[str] = set()  # DELE sent in this session

    def _connection_error(self, exc: Exception) -> bool:
        return _connection_error(exc)

    def _refusal(self, exc: Exception) -> bool:
        return isinstance(exc, poplib.error_proto)

    def _describe(self, key: str) -> str:
        return f"UIDL {key.partition(' ')[0]} at {self.config.where}"

    # --- state ------------------------------------------------------------------------------------
    def _delivered(self) -> list[str]:
        value = self.state.data.setdefault("delivered", [])
        if not isinstance(value, list):
            value = self.state.data["delivered"] = []
        return value

    def _oversize(self) -> dict[str, int]:
        value = self.state.data.setdefault("oversize", {})
        if not isinstance(value, dict):
            value = self.state.data["oversize"] = {}
        return value

    # --- connection -------------------------------------------------------------------------------
    def _open(self) -> None:
        cfg = self.config
        client: _Guarded
        if cfg.security == "tls":
            client = _POP3_SSL(self._guard, cfg.host, cfg.port, timeout=cfg.timeout, context=self._tls)
        else:
            client = _POP3(self._guard, cfg.host, cfg.port, timeout=cfg.timeout)
        self._client = client
        self._numbers = {}
        self._deleted = set()
        step = "STLS"
        try:
            if cfg.security == "starttls":
                client.stls(self._tls)
            if cfg.oauth is not None:
                step = "AUTH"
                self._offers(client, cfg.oauth.mechanism)
                self._token_login(lambda token: self._authenticate(client, token))
            else:
                step = "USER"
                client.user(cfg.username)
                step = "PASS"
                client.pass_(self._password_now())
        except poplib.error_proto as exc:
            if _connection_error(exc):
                raise
            if step == "STLS":
                raise inbound.ConnectionLost(
                    f"POP3 server {cfg.where} refused STLS: {inbound.server_answer(exc)}"
                ) from None
            raise inbound.ConnectionLost(
                f"login as {cfg.username} at {cfg.where} failed: {inbound.server_answer(exc)}"
            ) from None

    def _offers(self, client: _Guarded, mechanism: Mechanism) -> None:
        """A server whose CAPA lists SASL mechanisms without this one is said so (no token is
        fetched or sent to it); a server without CAPA (it is optional, RFC 2449) is just tried."""
        try:
            capabilities = client.capa()
        except poplib.error_proto as exc:
            if _connection_error(exc):
                raise
            return
        offered = [name.upper() for name in capabilities.get("SASL", [])]
        if mechanism.value not in offered:
            raise inbound.ConnectionLost(
                f"POP3 server {self.config.where} does not offer AUTH {mechanism.value} "
                f"(its SASL mechanisms: {' '.join(offered) or 'none'}; option 'oauth_mechanism')"
            )

    def _authenticate(self, client: _Guarded, token: Secret) -> None:
        cfg = self.config
        assert cfg.oauth is not None
        response = initial_response(cfg.oauth.mechanism, cfg.username, token, cfg.host, cfg.port)
        try:
            client.authenticate(cfg.oauth.mechanism, response)
        except poplib.error_proto as exc:
            if _connection_error(exc):
                raise
            raise inbound.TokenRefused(inbound.server_answer(exc)) from None

    def _disconnect(self, polite: bool) -> None:
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

    def _listing(self, command: str) -> dict[int, str]:
        """Message number → the second column of a UIDL or LIST answer."""
        assert self._client is not None
        _, lines, _ = self._client.uidl() if command == "UIDL" else self._client.list()
        out: dict[int, str] = {}
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                out[int(parts[0])] = parts[1].decode("ascii", "replace")
        return out

    def _keys(self, uidls: dict[int, str], sizes: dict[int, int]) -> dict[int, str]:
        """Message number → key: the UIDL, or the UIDL and a header digest where UIDLs repeat."""
        counts = Counter(uidls.values())
        known = [*self._delivered(), *self._oversize()]
        twinned = {key.partition(" ")[0] for key in known if " " in key}
        keys: dict[int, str] = {}
        seen: Counter[str] = Counter()
        for number, uidl in sorted(uidls.items()):
            if counts[uidl] == 1 and uidl not in twinned:
                keys[number] = uidl
                continue
            key = f"{uidl} {self._head_digest(number, sizes.get(number))}"
            seen[key] += 1
            keys[number] = key if seen[key] == 1 else f"{key} {seen[key]}"
        return keys

    def _head_digest(self, number: int, size: int | None) -> str:
        assert self._client is not None
        self._exchange()
        try:
            _, lines, _ = self._client.top(number, 0)
        except poplib.error_proto as exc:
            if _connection_error(exc):
                raise
            return f"size-{size}"  # TOP is optional (RFC 1939): the size is all there is to go by
        return _digest(b"\r\n".join(lines))

    def _scan(self) -> list[inbound.Candidate[str]]:
        if self._numbers or self._deleted:
            # A session that already served a run: start a new one to see what arrived since.
            self._close(polite=True)
            self._connect()
        self._exchange()
        uidls = self._listing("UIDL")
        sizes = {n: int(size) for n, size in self._listing("LIST").items() if size.isdigit()}
        keys = self._keys(uidls, sizes)
        self._numbers = {key: number for number, key in keys.items()}
        on_server = set(self._numbers)
        delivered, oversize = self._delivered(), self._oversize()
        kept = [key for key in delivered if key in on_server]
        still = {key: size for key, size in oversize.items() if key in on_server}
        if len(kept) != len(delivered) or len(still) != len(oversize):
            # forget what is no longer on the server (a UIDL is never reused)
            self.state.data["delivered"], self.state.data["oversize"] = kept, still
            self.state.save()
        self._after_record()
        known = set(kept)
        limit = self.config.max_message_bytes
        out: list[inbound.Candidate[str]] = []
        for number, key in sorted(keys.items()):
            if key in known:
                continue
            reported = still.get(key)
            if isinstance(reported, int) and reported > limit:
                out.append(inbound.Candidate(key, max(sizes.get(number, 0), reported), noted=True))
            else:
                out.append(inbound.Candidate(key, sizes.get(number)))
        return out

    def _check(self) -> bool:
        try:
            return any(not candidate.noted for candidate in self._scan())
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
            return self._client.retrieve(number)
        except poplib.error_proto as exc:
            if _connection_error(exc):
                raise
            raise inbound.MessageFailed(inbound.server_answer(exc)) from None

    def _end_run(self) -> None:
        self._close(polite=True)

    # --- recording and deleting -------------------------------------------------------------------
    def _record(self, key: str, outcome: inbound.Outcome, size: int | None) -> None:
        oversize = self._oversize()
        if outcome is inbound.Outcome.STORED:
            delivered = self._delivered()
            if key not in delivered:
                delivered.append(key)
            oversize.pop(key, None)
        else:  # reported as too large: noted, never deleted
            oversize[key] = max(size or 0, self.config.max_message_bytes + 1)
        self.state.save()

    def _after_record(self) -> None:
        if self.pop3_config.leave_on_server or self._client is None:
            return
        for key in self._delivered():
            number = self._numbers.get(key)
            if number is None or key in self._deleted:
                continue
            self._exchange()
            try:
                self._client.dele(number)
            except poplib.error_proto as exc:
                if _connection_error(exc):
                    raise
                self._trouble(f"cannot delete {self._describe(key)}: {inbound.server_answer(exc)}")
            self._deleted.add(key)


class POP3Provider(inbound.InboundProvider):
    """Fetches mail from a POP3 maildrop."""

    display_name = "POP3"
    protocol = "POP3"
    default_ports: Mapping[str, int] = {"tls": 995, "starttls": 110, "none": 110}
    option_help: Mapping[str, str] = {
        **inbound.SERVER_OPTION_HELP,
        "security": "'tls' (default, TLS from the start), 'starttls' (STLS) or 'none' (plain text)",
        "port": "the server's port (default 995 for tls, 110 for starttls and none)",
        "leave_on_server": "keep delivered messages on the server (default true); false deletes them",
    }

    @classmethod
    def own_options(cls, opts: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        out["leave_on_server"] = _boolean("leave_on_server", opts.get("leave_on_server", True))
        return out

    def config(self) -> POP3Config:
        return POP3Config.from_options(self.context.options, self.context.profile_dir)

    def new_logon(
        self, flags: LogonFlags, config: POP3Config, password: Secret | None, state: inbound.StateFile
    ) -> POP3Logon:
        return POP3Logon(self, flags, config, password, state)
