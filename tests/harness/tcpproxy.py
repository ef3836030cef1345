"""A TCP proxy on loopback that a test can cut and restore: a network outage without stopping the server.

The PostgreSQL test cluster is shared by every test, so an outage is simulated between one client
and it: the client's URL names the proxy's port. `cut()` closes every proxied connection and,
until `restore()`, closes each new one as soon as it is accepted (the client sees "server closed
the connection unexpectedly", as when a server restarts or a firewall resets the connection).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TCPProxy:
    """Forward 127.0.0.1:<port> to `upstream`, one pair of pump threads per connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        self.accepted = 0
        self.refused = 0  # connections closed at once because the proxy was cut
        self._thread = threading.Thread(target=self._accept_loop, name="tcpproxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Drop every proxied connection; new ones are closed at once until restore()."""
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, set()
        for s in sockets:  # the pump threads wake up and close them (no fd is closed under a recv)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)
        self._thread.join(5)

    def __enter__(self) -> TCPProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            with self._lock:
                refuse = self._cut
                self.refused += refuse
                self.accepted += not refuse
            if refuse:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._cut:  # cut while connecting upstream
                    _close(client)
                    _close(server)
                    continue
                self._open.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._open.discard(src)
            self._open.discard(dst)
        _close(src)
        _close(dst)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
