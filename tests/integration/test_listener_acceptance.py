"""Acceptance of the SMTP submission listener: a message handed to it reaches a real Postfix/Dovecot
mailbox byte for byte, and a SIGKILL of the daemon while ten clients send loses nothing that got 250."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from peers import Peers, _build

from postroom.profile import Profile

from support.cli import wait_for
from support.listener import running

pytestmark = pytest.mark.integration


def relay_profile(directory: Path, peers: Peers) -> Path:
    """A profile whose only transport is Postfix on loopback (plain SMTP)."""
    profile = Profile.create(directory, with_defaults=False)
    profile.add_service(
        "smtp", "postfix", {"host": "127.0.0.1", "port": peers.smtp_port, "security": "none", "timeout": 60}
    )
    profile.save()
    return directory


def test_a_message_through_the_listener_arrives_in_a_dovecot_mailbox_byte_for_byte(
    tmp_path: Path, peers: Peers
) -> None:
    profile = relay_profile(tmp_path / "relay", peers)
    bob = "bob@example.test"
    marker = f"listener-{time.time_ns()}"
    body = (
        f"From: Alice <alice@example.test>\r\nTo: {bob}\r\nSubject: {marker}\r\n"
        f"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{marker}@example.test>\r\n"
        "X-Folded: one\r\n two\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nGr\u00fc\u00dfe \u2014 kept as sent.\r\n.hidden dot line\r\n"
    ).encode()
    with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail("alice@example.test", [bob], body)
        daemon.wait_line(rf"to=<{bob}> transport=postfix relay=127\.0\.0\.1:{peers.smtp_port} .*status=sent")

    def arrived() -> bytes | None:
        new = peers.maildir(bob) / "new"
        for path in new.iterdir() if new.is_dir() else ():
            data = path.read_bytes()
            if marker.encode() in data:
                return data
        return None

    wait_for(lambda: arrived() is not None)
    data = arrived()
    assert data is not None
    # Postfix prepends its trace fields (Return-Path, Delivered-To, Received) and writes LF line
    # ends; every byte postroom was given follows them unchanged.
    assert data.endswith(body.replace(b"\r\n", b"\n"))


@contextmanager
def postfix_relaying_to(port: int) -> Iterator[Peers]:
    """A Postfix of the test's own that relays everything from loopback to 127.0.0.1:`port`, as a
    machine's Postfix configured with `relayhost = [127.0.0.1]:587` hands its mail to postroom."""
    root = Path(tempfile.mkdtemp(prefix="postroom-relay-"))
    root.chmod(0o755)
    relay = _build(root)
    main = relay.postfix_config / "main.cf"
    text = main.read_text()
    for old, new in (
        ("relayhost =\n", f"relayhost = [127.0.0.1]:{port}\n"),
        ("myhostname = mx.example.test", "myhostname = relay.example.test"),
        ("virtual_mailbox_domains = example.test", "virtual_mailbox_domains ="),
        ("transport_maps = texthash", "#transport_maps = texthash"),
    ):
        assert old in text
        text = text.replace(old, new)
    main.write_text(text)
    try:
        relay.start_postfix()
        yield relay
    finally:
        relay.stop_postfix()
        shutil.rmtree(root, ignore_errors=True)


def test_postfix_relaying_into_the_listener_delivers_to_a_dovecot_mailbox_byte_for_byte(
    tmp_path: Path, peers: Peers
) -> None:
    profile = relay_profile(tmp_path / "relay", peers)
    bob = "bob@example.test"
    marker = f"relayed-{time.time_ns()}"
    body = (
        f"From: Alice <alice@example.test>\r\nTo: {bob}\r\nSubject: {marker}\r\n"
        f"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{marker}@example.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nRelayed through Postfix.\r\n"
    ).encode()
    with (
        running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon,
        postfix_relaying_to(daemon.port) as relay,
    ):
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
            client.sendmail("alice@example.test", [bob], body)
        daemon.wait_line(r"from=<alice@example\.test> .* accepted", timeout=60)
        daemon.wait_line(rf"to=<{bob}> transport=postfix .*status=sent", timeout=60)

    def arrived() -> bytes | None:
        new = peers.maildir(bob) / "new"
        for path in new.iterdir() if new.is_dir() else ():
            data = path.read_bytes()
            if marker.encode() in data:
                return data
        return None

    wait_for(lambda: arrived() is not None)
    data = arrived()
    assert data is not None
    assert data.endswith(body.replace(b"\r\n", b"\n"))
    assert b"by relay.example.test" in data  # it did pass through the relaying Postfix


CLIENTS = 10


def kill_with_workers(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the daemon and its worker processes at once: the SMTP listener runs in a worker
    (`spooler --worker-of`), which a SIGKILL of the daemon alone leaves serving a while longer."""
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    proc.send_signal(signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


PER_CLIENT = 30  # 300 messages in all (benchmarks/listener_intake.py sizes it at 1,000)


def test_sigkill_while_ten_clients_send_loses_no_message_that_got_250(profile: Path) -> None:
    toml = profile / "profile.toml"
    toml.write_text(toml.read_text().replace("[profile]\n", "[profile]\nlease_seconds = 3.0\n", 1))
    accepted: list[str] = []
    lock = threading.Lock()
    go = threading.Event()
    victim: list[subprocess.Popen[bytes]] = []

    def client(n: int, port: int) -> None:
        go.wait()
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                for i in range(PER_CLIENT):
                    mid = f"<c{n}-m{i}@kill.test>"
                    msg = f"From: c{n}@kill.test\r\nTo: u{n}@localhost\r\nMessage-ID: {mid}\r\nSubject: {i}\r\n\r\n{'x' * 900}\r\n"
                    smtp.sendmail(f"c{n}@kill.test", [f"u{n}@localhost"], msg.encode())
                    with lock:
                        accepted.append(mid)  # only after the 250 came back
                        if len(accepted) == CLIENTS * PER_CLIENT // 3:  # killed at once: the others are sending
                            kill_with_workers(victim[0])
        except (smtplib.SMTPException, OSError):
            pass  # the daemon died: what did not get 250 may be retried by the client

    with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        victim.append(daemon.proc)
        threads = [threading.Thread(target=client, args=(n, daemon.port)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(timeout=120)
        if daemon.proc.poll() is None:  # the third was never reached: the assert below says so
            kill_with_workers(daemon.proc)
        daemon.proc.wait()
    got_250 = set(accepted)
    assert 0 < len(got_250) < CLIENTS * PER_CLIENT  # killed in the middle of the intake

    def delivered() -> set[str]:
        found: set[str] = set()
        for path in (profile / "maildir" / "localhost").glob("u*/new/*"):
            m = re.search(rb"^Message-ID: (<[^>]+>)", path.read_bytes(), re.MULTILINE)
            if m:
                found.add(m.group(1).decode())
        return found

    with running(profile, "spooler", "--smtp", "127.0.0.1:0"):
        wait_for(lambda: got_250 <= delivered(), timeout=120)
    assert got_250 - delivered() == set()
