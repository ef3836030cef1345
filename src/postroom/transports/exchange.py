"""Bounds on one exchange with a mail server: a total deadline and a byte budget.

A socket timeout bounds each wait for data, not a whole answer: a server that trickles one byte
every few seconds never trips it, and the worker thread (and the spooler waiting for it) stalls
for as long as the server likes. Nor may a server's own word for how much is coming (an IMAP
literal announcing ``{8000000000}``, a POP3 message with no end) decide how much memory postroom
reserves or how long it keeps reading.

An `ExchangeGuard` holds both bounds for the connection of one logon. `arm(seconds)` starts an
exchange: everything until the next `arm` or `disarm` must be through within `seconds`, else a
timer thread shuts the connection down, and the reading thread, seeing the end of the stream,
fails at once (`expired` then tells why). At most `budget` bytes may be read in one exchange:
the client's reader calls `reserve` before reading an announced size and `spend` after reading,
and both raise `ReplyTooLarge` beyond the budget, before anything is allocated.

The guard shuts down a duplicate of the socket that it owns (`attach`), never the client's own
socket object: a socket the client has closed may have had its descriptor reused by the system
for something else, and STARTTLS replaces the client's socket object while the TCP connection,
which the duplicate still names, stays the same.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class ReplyTooLarge(ConnectionError):
    """The server sent, or announced, more than one exchange may read; the connection is unusable."""

    def __init__(self, budget: int, announced: int | None = None) -> None:
        self.budget = budget
        self.announced = announced
        if announced is not None:
            text = f"the server announced {announced} bytes in one answer, more than the {budget} allowed"
        else:
            text = f"the server sent more than {budget} bytes in one answer"
        super().__init__(text)


class ExchangeGuard:
    """The deadline and the byte budget of the current exchange on one connection."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        #: The deadline of the current exchange passed and the connection was shut down.
        self.expired = False
        #: The length of the current exchange's deadline, for messages.
        self.seconds = 0.0
        self._used = 0
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._timer: threading.Timer | None = None
        self._generation = 0

    # --- the connection ------------------------------------------------------------------------------
    def attach(self, sock: socket.socket) -> None:
        """Watch the connection of `sock` (right after it connects, before any TLS handshake)."""
        duplicate = sock.dup()
        with self._lock:
            previous, self._socket = self._socket, duplicate
            late = self.expired
        if previous is not None:
            previous.close()
        if late:  # the deadline passed while connecting
            _shut(duplicate)

    def release(self) -> None:
        """The connection is closing: stop the clock and forget its socket."""
        self.disarm()
        with self._lock:
            sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    # --- the clock and the budget --------------------------------------------------------------------
    def arm(self, seconds: float) -> None:
        """Start an exchange: `seconds` from now the connection is shut down; the budget starts afresh."""
        with self._lock:
            self._generation += 1
            previous = self._timer
            self.expired = False
            self.seconds = seconds
            self._used = 0
            timer = threading.Timer(seconds, self._expire, args=(self._generation,))
            timer.daemon = True
            self._timer = timer
        if previous is not None:
            previous.cancel()
        timer.start()

    def disarm(self) -> None:
        """No exchange under way (an idle connection between calls is nobody's business)."""
        with self._lock:
            self._generation += 1
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def remaining(self) -> int:
        """Bytes the current exchange may still read."""
        return max(self.budget - self._used, 0)

    def reserve(self, size: int) -> None:
        """Before reading `size` announced bytes at once: refuse what would exceed the budget."""
        if size > self.remaining():
            raise ReplyTooLarge(self.budget, size)

    def spend(self, size: int) -> None:
        """After reading `size` bytes."""
        self._used += size
        if self._used > self.budget:
            raise ReplyTooLarge(self.budget)

    def _expire(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # a timer cancelled just as it fired
            self.expired = True
            if self._socket is not None:
                _shut(self._socket)


def _shut(sock: socket.socket) -> None:
    """End the connection both ways: a thread blocked reading it sees the end of the stream."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
