"""The bounds on one exchange with a mail server (postroom.transports.exchange), on socket pairs."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from postroom.transports.exchange import ExchangeGuard, ReplyTooLarge


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    client.settimeout(30)  # a per-read timeout the deadline must not wait for
    yield client, server
    client.close()
    server.close()


def read_in_thread(sock: socket.socket) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(sock.recv(100)), daemon=True)
    thread.start()
    return thread, got


def test_a_deadline_that_passes_ends_the_connection_under_a_blocked_read(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, _server = pair
    guard = ExchangeGuard(budget=1000)
    guard.attach(client)
    guard.arm(0.2)
    thread, got = read_in_thread(client)
    thread.join(10)
    assert got == [b""]  # the end of the stream, long before the 30 s read timeout
    assert guard.expired
    guard.release()


def test_a_disarmed_guard_leaves_an_idle_connection_alone(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    guard = ExchangeGuard(budget=1000)
    guard.attach(client)
    guard.arm(0.2)
    guard.disarm()
    thread, got = read_in_thread(client)
    thread.join(0.6)
    assert thread.is_alive() and not guard.expired  # still waiting, connection intact
    server.sendall(b"hello")
    thread.join(10)
    assert got == [b"hello"]
    guard.release()


def test_the_guard_still_ends_a_connection_whose_socket_object_was_replaced(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """STARTTLS wraps the client's socket in a new object and detaches the old one."""
    client, _server = pair
    guard = ExchangeGuard(budget=1000)
    guard.attach(client)
    replacement = socket.socket(fileno=client.detach())
    replacement.settimeout(30)
    try:
        guard.arm(0.2)
        thread, got = read_in_thread(replacement)
        thread.join(10)
        assert got == [b""]
    finally:
        guard.release()
        replacement.close()


def test_an_announced_size_beyond_the_budget_is_refused_before_reading() -> None:
    guard = ExchangeGuard(budget=1000)
    guard.arm(30)
    try:
        with pytest.raises(ReplyTooLarge) as info:
            guard.reserve(8_000_000_000)
        assert info.value.announced == 8_000_000_000
        assert "8000000000" in str(info.value) and isinstance(info.value, ConnectionError)
        guard.spend(600)
        guard.reserve(400)
        with pytest.raises(ReplyTooLarge):
            guard.spend(401)
        guard.arm(30)  # a new exchange has a budget of its own
        guard.spend(1000)
        assert guard.remaining() == 0
    finally:
        guard.disarm()
