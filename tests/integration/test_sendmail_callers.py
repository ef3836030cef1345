"""Real callers of /usr/sbin/sendmail hand their mail to postroom-sendmail, and it arrives byte for
byte in a Postfix/Dovecot mailbox on loopback (peers.py).

The callers: `git send-email --sendmail-cmd` (Debian git-email), bsd-mailx with its `sendmail`
variable, and Debian's cron daemon mailing a job's output (in a mount namespace of its own, where
the test's wrapper is /usr/sbin/sendmail: support/cron.py). The machine's own /usr/sbin/sendmail
is never used. Between the caller and postroom-sendmail sits `tee`, which keeps a copy of exactly
what the caller wrote, so the test can compare it with what arrived: the caller's header lines,
in order and unchanged (with only what postroom adds where missing: a From first, a Date and
Message-ID last), and the body byte for byte.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import Peers

from postroom.profile import Profile

from support.cron import isolated_cron, why_cron_cannot_run
from support.prerequisites import unavailable
from support.sendmail import SCRIPT, user_python

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


@pytest.fixture
def cron_user() -> Iterator[tuple[str, Path]]:
    """A throwaway Unix user and a directory of theirs that every user can reach (not under /root)."""
    why = why_cron_cannot_run()
    if why is not None:
        unavailable(why)
    name = f"prcron{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True, timeout=60)
    base = Path(tempfile.mkdtemp(prefix="postroom-cron-", dir="/tmp"))
    try:
        base.chmod(0o755)
        yield name, base
    finally:
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["userdel", name], timeout=60)


@pytest.mark.timeout(240)
def test_cron_mails_a_jobs_output_through_postroom_sendmail(peers: Peers, cron_user: tuple[str, Path]) -> None:
    user, base = cron_user
    python = user_python(user)
    if isinstance(python, str):
        unavailable(python)
    to = peers.new_postfix_user()
    profile = Profile.create(base / "profile", with_defaults=False)
    profile.settings["sender_address"] = "robot@example.test"
    profile.add_service("smtp", "postfix", {"host": "127.0.0.1", "port": peers.smtp_port, "security": "none"})
    profile.save()
    job = base / "nightly.sh"
    job.write_text('#!/bin/sh\necho "backup of $LOGNAME done"\necho .\necho .profile\necho "é, 8 bits"\n')
    job.chmod(0o755)
    # The mailer runs as the job's user with the cron daemon's environment: the wrapper says
    # which profile (the user's own) and how this user runs postroom.
    prefix, extra = python
    variables = {"POSTROOM_PROFILE": str(profile.directory), "HOME": str(base), **extra}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items())
    code = "import sys; from postroom.cli.sendmail import main; sys.argv[0] = 'sendmail'; main()"
    copy = base / "as-written.eml"
    wrapper = base / "sendmail"
    command = " ".join(shlex.quote(part) for part in [*prefix, "-c", code])
    errors = base / "sendmail.err"
    wrapper.write_text(f'#!/bin/sh\nexport {exports}\ntee {copy} | {command} "$@" 2>{errors}\n')
    wrapper.chmod(0o755)
    subprocess.run(["chown", "-R", f"{user}:", str(base)], check=True)
    with isolated_cron(base, f"MAILTO={to}\n@reboot {user} {job}\n", wrapper):
        deadline = time.monotonic() + 60
        while not peers.maildir_files(to):
            said = [f.read_text(errors="replace") for f in (copy, errors, base / "cron.log") if f.exists()]
            assert time.monotonic() < deadline, f"nothing arrived for {to}: {said} ({peers.postfix_log})"
            time.sleep(0.1)
        received = arrived(peers, to)
    written = copy.read_bytes()
    assert_faithful(written, received)
    assert written.startswith(b"From: root (Cron Daemon)\n"), written  # cron's own headers, kept
    assert f"Subject: Cron <{user}@".encode() in written
    assert received.endswith(f"backup of {user} done\n.\n.profile\né, 8 bits\n".encode())
