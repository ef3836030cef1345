"""A Dovecot that takes only OAuth2 logins, and the token-introspection server it asks.

`running_oauth_dovecot(peers)` starts, beside the shared peers (peers.py), a second Dovecot from
`peers/dovecot-oauth2.conf`: IMAP and POP3 on free loopback ports, `auth_mechanisms = xoauth2
oauthbearer`, and the `oauth2` passdb pointed at an `Introspection` server on 127.0.0.1 (RFC
7662 by POST, as Dovecot's `introspection_mode = post` does it). It serves the shared peers'
Maildirs, so a test drops messages with `Peers.put_message` and logs in as that address with a
token the introspection server knows for it.

A second instance rather than an oauth2 passdb in the shared one: the password tests keep their
server (and its capabilities) exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from peers import MAIL_UID, START_TIMEOUT, Peers, _render, free_port, port_open, wait_until

from support.prerequisites import unavailable

_DOVECOT_AUTH = Path("/usr/lib/dovecot/auth")


@dataclass
class Introspection:
    """The token-introspection endpoint: `grant` a token to a user; it answers {"active": true,
    "username": user} for a granted token and {"active": false} for any other, and notes every
    token it was asked about (`asked`)."""

    granted: dict[str, str] = field(default_factory=dict)
    #: Tokens answered with HTTP 503, as an identity provider that is down (not a refusal).
    failing: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def grant(self, token: str, user: str) -> None:
        with self._lock:
            self.granted[token] = user

    def asked_about(self, *tokens: str) -> list[str]:
        """The tokens among `tokens` it was asked about, in order (other tests share the server)."""
        with self._lock:
            return [token for token in self.asked if token in tokens]

    def answer(self, body: bytes) -> tuple[int, dict[str, object]]:
        """The HTTP status and JSON answer for a request body ``token=...``."""
        token = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        with self._lock:
            self.asked.append(token)
            user = self.granted.get(token)
            if token in self.failing:
                return 503, {"error": "temporarily_unavailable"}
        return 200, {"active": True, "username": user} if user is not None else {"active": False}

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """Serve on a free loopback port; yields the URL."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, answer = owner.answer(self.rfile.read(length))
                body = json.dumps(answer).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: no request lines in the test output

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, name="introspection", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


@dataclass(frozen=True)
class OAuthDovecot:
    """The running OAuth2-only Dovecot."""

    imap_port: int
    pop3_port: int
    introspection: Introspection
    log: Path

    def port(self, kind: str) -> int:
        return self.imap_port if kind == "imap" else self.pop3_port


def oauth2_passdb_missing() -> str | None:
    """Why Dovecot's oauth2 passdb is not here, or None.

    Dovecot 2.3 builds it into its auth process and lists it in neither `dovecot --build-options`
    nor `doveconf -m`; without it Dovecot still starts and only its auth process dies at the
    first login ("BYE Auth process broken"). So the auth binary is asked whether it holds it."""
    auth = _DOVECOT_AUTH
    try:
        found = b"passdb_oauth2" in auth.read_bytes()
    except OSError as exc:
        return f"needs Dovecot's auth process ({auth}: {exc.strerror})"
    return None if found else f"needs Dovecot with its oauth2 passdb ({auth} has none)"


def running_oauth_dovecot(peers: Peers) -> Iterator[OAuthDovecot]:
    """Generator for a fixture: the introspection server and the OAuth2 Dovecot, stopped after."""
    problem = oauth2_passdb_missing()
    if problem is not None:
        unavailable(problem)
    introspection = Introspection()
    directory = peers.root / f"dovecot-oauth2-{os.getpid()}-{free_port()}"
    for sub in ("", "run", "state"):
        (directory / sub).mkdir(mode=0o755, exist_ok=True)
    with introspection.serving() as url:
        ports = {"imap": free_port(), "pop3": free_port()}
        values = {
            "DIR": str(directory),
            "MAIL_ROOT": str(peers.mail_root),
            "MAIL_UID": str(MAIL_UID),
            "PORT_IMAP": str(ports["imap"]),
            "PORT_POP3": str(ports["pop3"]),
            "INTROSPECTION_URL": url,
        }
        for name in ("dovecot-oauth2.conf", "dovecot-oauth2.conf.ext"):
            (directory / name).write_text(_render(name, values), encoding="utf-8")
        log = directory / "dovecot.log"
        proc = subprocess.Popen(
            ["dovecot", "-F", "-c", str(directory / "dovecot-oauth2.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            up = wait_until(lambda: proc.poll() is not None or all(port_open(p) for p in ports.values()), START_TIMEOUT)
            if not up or proc.poll() is not None:
                said = proc.stderr.read().decode("utf-8", "replace") if proc.stderr and proc.poll() is not None else ""
                tail = log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"the OAuth2 Dovecot did not start (exit {proc.poll()}): {said}{tail}")
            yield OAuthDovecot(ports["imap"], ports["pop3"], introspection, log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the sessions it serves (its own process group)
            if proc.stderr is not None:
                proc.stderr.close()
