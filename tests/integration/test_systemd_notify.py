"""The daemon speaks systemd's notification protocol (Type=notify): READY=1 once it serves,
WATCHDOG=1 at half WATCHDOG_USEC, RELOADING=1 … READY=1 around a SIGHUP that re-reads the profile.
The test plays systemd: a datagram socket of its own in NOTIFY_SOCKET."""

from __future__ import annotations

import signal
import smtplib
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import ok, postroom
from support.listener import running

pytestmark = pytest.mark.integration


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket like systemd's, at a short path (socket paths have ~100 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="pr-notify-", dir="/tmp"))
    path = str(directory / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    try:
        yield sock, path
    finally:
        sock.close()
        Path(path).unlink(missing_ok=True)
        directory.rmdir()


def read_until(sock: socket.socket, wanted: str, seen: list[str], timeout: float = 30.0) -> None:
    """Read notifications into `seen` until one has the field `wanted`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(data)
        if wanted in data.split("\n"):
            return
    raise AssertionError(f"no {wanted} within {timeout} s; got {seen}")


def test_the_daemon_says_ready_pings_the_watchdog_and_reloads_on_sighup(
    profile: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    with running(profile, "spooler", "--smtp", "127.0.0.1:0", env=env) as daemon:
        seen: list[str] = []
        read_until(sock, "READY=1", seen)
        assert any("STATUS=spooler running; SMTP on 127.0.0.1:" in s for s in seen)
        read_until(sock, "WATCHDOG=1", seen)
        read_until(sock, "WATCHDOG=1", seen)  # again: pinged periodically, not once

        # A user added after the start is known once SIGHUP re-read the profile.
        ok(postroom("serve", "smtp", "--add-user", "late", profile=profile, stdin=b"pw-late\n"))
        seen.clear()
        daemon.proc.send_signal(signal.SIGHUP)
        read_until(sock, "RELOADING=1", seen)
        assert any("MONOTONIC_USEC=" in s for s in seen)
        read_until(sock, "READY=1", seen)
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.login("late", "pw-late")
        daemon.wait_line("SIGHUP: reloading the profile")
        assert daemon.proc.poll() is None  # SIGHUP reloads; it does not stop the daemon
    read_until(sock, "STOPPING=1", seen)


def test_without_notify_socket_the_daemon_runs_the_same(profile: Path) -> None:
    with (
        running(profile, "spooler", "--smtp", "127.0.0.1:0", env={"NOTIFY_SOCKET": None}) as daemon,
        smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client,
    ):
        assert client.noop()[0] == 250
