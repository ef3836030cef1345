"""`postroom serve smtp --processes N`: several listener processes on one port (SO_REUSEPORT)."""

from __future__ import annotations

import json
import smtplib
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.cli import ok, postroom
from support.listener import running

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        body = f"From: a@example.org\r\nTo: bob@localhost\r\nSubject: p{n}\r\n\r\nhello {n}\r\n"
        assert client.sendmail("a@example.org", ["bob@localhost"], body.encode()) == {}


def test_two_listener_processes_share_one_port_and_every_message_is_queued(profile: Path) -> None:
    port = free_port()
    with running(profile, "serve", "smtp", "--listen", f"127.0.0.1:{port}", "--processes", "2") as listener:
        assert listener.port == port
        assert any("(2 processes)" in line for line in listener.lines)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: send(port, n), range(16)))
        queue = json.loads(ok(postroom("--json", "queue", profile=profile)).stdout)
    entries = queue["messages"] if isinstance(queue, dict) else queue
    assert len(entries) == 16
    assert listener.proc.returncode == 0
    with socket.socket() as probe:  # every process is gone: nobody listens any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_processes_on_port_0_is_a_one_line_error(profile: Path) -> None:
    done = postroom("serve", "smtp", "--listen", "127.0.0.1:0", "--processes", "2", profile=profile)
    assert done.returncode == 2
    assert "MAPI_E_INVALID_PARAMETER" in done.stderr and "fixed port" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
