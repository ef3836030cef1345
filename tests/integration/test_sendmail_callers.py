"""Real callers of /usr/sbin/sendmail hand their mail to postroom-sendmail, and it arrives byte for
byte in a Postfix/Dovecot mailbox on loopback (peers.py).

The callers: `git send-email --sendmail-cmd` (Debian git-email) and bsd-mailx with its `sendmail`
variable (never the machine's own /usr/sbin/sendmail). Between the caller and postroom-sendmail
sits `tee`, which keeps a copy of exactly what the caller wrote, so the test can compare it with
what arrived: the caller's header lines, in order and unchanged (with only what postroom adds
where missing: a From first, a Date and Message-ID last), and the body byte for byte.

Cron is not among them: a real cron daemon runs the whole machine's crontabs as root and has no
private spool directory to point at, so it cannot be started cheaply and alone for a test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from peers import Peers

from postroom.profile import Profile

from support.prerequisites import unavailable
from support.sendmail import SCRIPT

pytestmark = pytest.mark.integration


@pytest.fixture
def relay(peers: Peers, tmp_path: Path) -> Path:
    """A profile whose one transport sends to Postfix on loopback, as example.test's sender."""
    profile = Profile.create(tmp_path / "profile", with_defaults=False)
    profile.settings["sender_address"] = "robot@example.test"
    profile.add_service("smtp", "postfix", {"host": "127.0.0.1", "port": peers.smtp_port, "security": "none"})
    profile.save()
    return profile.directory


def recording_sendmail(tmp_path: Path) -> tuple[Path, Path]:
    """An executable that keeps its stdin in a file and hands it on to postroom-sendmail."""
    copy = tmp_path / "as-written.eml"
    wrapper = tmp_path / "sendmail"
    wrapper.write_text(f'#!/bin/sh\ntee {copy} | exec {SCRIPT} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, copy


def arrived(peers: Peers, address: str, timeout: float = 60.0) -> bytes:
    deadline = time.monotonic() + timeout
    while not (files := peers.maildir_files(address)):
        assert time.monotonic() < deadline, f"nothing arrived for {address} ({peers.postfix_log})"
        time.sleep(0.1)
    (only,) = files
    return only.read_bytes()


def assert_faithful(written: bytes, received: bytes) -> None:
    """The caller's header lines appear unchanged and together in what arrived; the body is the same."""
    head, _, body = written.partition(b"\n\n")
    got_head, _, got_body = received.replace(b"\r\n", b"\n").partition(b"\n\n")
    assert got_body == body
    assert head in got_head, (head, got_head)


def env(profile: Path) -> dict[str, str]:
    return {**os.environ, "POSTROOM_PROFILE": str(profile), "POSTROOM_DEBUG": ""}


@pytest.mark.timeout(240)
def test_git_send_email_delivers_a_patch_byte_for_byte(peers: Peers, relay: Path, tmp_path: Path) -> None:
    if shutil.which("git") is None or subprocess.run(["git", "send-email", "-h"], capture_output=True).returncode > 129:
        unavailable("git send-email is not installed (Debian package git-email)")
    to = peers.new_postfix_user()
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=Ada Lovelace", "-c", "user.email=ada@example.test"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "notes.txt").write_text("first line\n.\nA line with only a dot, and one starting with a dot:\n.profile\n")
    subprocess.run([*git, "add", "notes.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "Add notes"], check=True)
    subprocess.run([*git, "format-patch", "-q", "-1", "-o", str(tmp_path / "out")], check=True)
    wrapper, copy = recording_sendmail(tmp_path)
    sent = subprocess.run(
        [*git, "send-email", f"--sendmail-cmd={wrapper}", f"--to={to}", "--from=Ada Lovelace <ada@example.test>",
         "--confirm=never", "--suppress-cc=all", "--no-validate", "--quiet", *map(str, (tmp_path / "out").iterdir())],
        capture_output=True, env=env(relay), timeout=120,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    received = arrived(peers, to)
    assert_faithful(copy.read_bytes(), received)
    assert b"\n+.\n" in received and b"\n+.profile\n" in received  # lines that end or stuff SMTP data


@pytest.mark.timeout(240)
def test_mailx_delivers_through_its_sendmail_variable(peers: Peers, relay: Path, tmp_path: Path) -> None:
    if shutil.which("bsd-mailx") is None:
        unavailable("bsd-mailx is not installed (Debian package bsd-mailx)")
    to = peers.new_postfix_user()
    wrapper, copy = recording_sendmail(tmp_path)
    mailrc = tmp_path / "mailrc"
    mailrc.write_text(f"set sendmail={wrapper}\n")
    body = b"The nightly backup finished.\n.\nEnd of report.\n"
    sent = subprocess.run(
        ["bsd-mailx", "-s", "backup report", to], input=body, capture_output=True,
        env={**env(relay), "MAILRC": str(mailrc), "HOME": str(tmp_path)}, timeout=120,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    received = arrived(peers, to)
    written = copy.read_bytes()
    assert_faithful(written, received)
    assert b"Subject: backup report" in written and received.endswith(body)
    assert b"\nFrom: robot@example.test\n" in received.replace(b"\r\n", b"\n")  # mailx writes none: postroom adds it
