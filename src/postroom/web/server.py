"""Serving the status page: where it may listen, and uvicorn running it.

Starlette and uvicorn rather than aiohttp: the page is a handful of routes over an asyncio
session, and uvicorn runs on the event loop it is given, so `postroom serve http` runs the page
on the session's loop, and `postroom spooler --http` runs it on a thread of its own beside the
spooler daemon without touching the daemon's loop. Starlette brings server-sent events
(streaming responses), forms and static files, and nothing we would have to keep out.

Where it may listen: loopback by default. Any other address puts subjects, names and the queue
on the network, so it is refused unless the page is served over TLS with an operator token made
(a token alone would travel in clear text). A Unix socket is the other way to be the operator:
whoever may open the socket file (mode 0600: its owner) may act.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

import postroom
from postroom import HResult, MAPIError
from postroom.mapi.hostport import is_loopback, parse_host_port

from .app import create_app
from .auth import Gate, stored_hash

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8025


@dataclass(frozen=True)
class Listen:
    """Where and how the page listens."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    socket: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def url(self) -> str:
        if self.socket is not None:
            return f"unix:{self.socket}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"


def parse_listen(text: str, option: str = "--listen") -> tuple[str, int]:
    """The page's `HOST:PORT`: `[::1]:8025` for IPv6, and a port alone means 127.0.0.1."""
    return parse_host_port(text, option=option, default_host=DEFAULT_HOST)


def check_listen(listen: Listen, token_hash: str | None) -> None:
    """Refuse a bind beyond loopback unless served over TLS with an operator token (module docstring)."""
    if listen.socket is not None or is_loopback(listen.host):
        return
    if (listen.tls_cert is None) != (listen.tls_key is None):
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "TLS needs both --tls-cert and --tls-key")
    if not listen.tls or token_hash is None:
        raise MAPIError(
            HResult.MAPI_E_NO_ACCESS,
            f"refusing to serve the status page on {listen.host} (not loopback) without TLS and an operator token: "
            "give --tls-cert and --tls-key, and make a token with `postroom serve http --new-token`",
        )


class _Server(uvicorn.Server):
    """uvicorn's server, stopped by SIGINT/SIGTERM in the main thread without re-raising the signal
    afterwards (uvicorn's own would: the command would die of it instead of exiting 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.should_exit = True


class _NoBindNoise(logging.Filter):
    """uvicorn logs a failed bind itself; the command says it once, with its MAPI code."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "error while attempting to bind" not in record.getMessage()


_NO_BIND_NOISE = _NoBindNoise()


def _config(app: object, listen: Listen) -> uvicorn.Config:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=listen.host,
        port=listen.port,
        uds=str(listen.socket) if listen.socket is not None else None,
        ssl_certfile=str(listen.tls_cert) if listen.tls_cert else None,
        ssl_keyfile=str(listen.tls_key) if listen.tls_key else None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    logging.getLogger("uvicorn.error").addFilter(_NO_BIND_NOISE)  # after Config, which sets logging up
    return config


def _gate(profile_dir: Path, listen: Listen) -> Gate:
    token_hash = stored_hash(profile_dir)
    check_listen(listen, token_hash)
    return Gate(token_hash, trust_all=listen.socket is not None)


async def serve(profile: postroom.Profile, listen: Listen, *, ready: Callable[[], None] | None = None) -> None:
    """Serve the page until SIGINT/SIGTERM: `postroom serve http`. `ready` is called once it listens
    (and its signal handlers are in place)."""
    gate = _gate(profile.directory, listen)
    session = postroom.alogon(profile)
    try:
        server = _Server(_config(create_app(session, gate), listen))
        await _serve(server, listen, None, ready)
    finally:
        await session.close()


async def _serve(
    server: _Server, listen: Listen, started: threading.Event | None, ready: Callable[[], None] | None = None
) -> None:
    async def chmod_socket() -> None:
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.02)
        if listen.socket is not None and listen.socket.exists():
            os.chmod(listen.socket, 0o600)
        if started is not None:
            started.set()
        if ready is not None and server.started:
            ready()

    watcher = asyncio.create_task(chmod_socket())
    try:
        await server.serve()
    except SystemExit:  # uvicorn's answer to an address it cannot bind: said below, in one line
        pass
    finally:
        watcher.cancel()
    if not server.started:
        raise MAPIError(HResult.MAPI_E_NETWORK_ERROR, f"could not listen on {listen.url} (in use, or not allowed)")


class BackgroundPage:
    """The page on a thread of its own, with its own session (`postroom spooler --http`)."""

    def __init__(self, profile: postroom.Profile, listen: Listen) -> None:
        self.listen = listen
        self._gate = _gate(profile.directory, listen)
        self._profile = profile
        self._server: _Server | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="postroom-http", daemon=True)

    def start(self, timeout: float = 15.0) -> None:
        self._thread.start()
        self._started.wait(timeout)
        if self._error is not None:
            raise self._error
        if not self._started.is_set():
            raise MAPIError(HResult.MAPI_E_NETWORK_ERROR, f"the status page did not start on {self.listen.url}")

    def _run(self) -> None:
        async def main() -> None:
            session = postroom.alogon(self._profile)
            try:
                self._server = _Server(_config(create_app(session, self._gate, beside_daemon=True), self.listen))
                await _serve(self._server, self.listen, self._started)
            finally:
                await session.close()

        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to start(), which raises it in the spooler's thread
            self._error = exc
            self._started.set()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(10)
