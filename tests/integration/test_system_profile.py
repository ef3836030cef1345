"""A system profile for every user of the machine: two real Unix users submit through its socket.

The profile belongs to a throwaway `postroom` user and only `postroom serve submit`, run as that
user, opens it; alice and bob (throwaway users too) run postroom-sendmail. Each can submit and
list their own queue; neither can read the store or its credentials, or cancel the other's mail.
Needs root (useradd, runuser): skipped with that reason elsewhere, a failure under CI.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import postroom

from support.cli import ok, wait_for
from support.cli import postroom as run
from support.prerequisites import unavailable
from support.sendmail import SENDMAIL_MODULE, as_user, user_python

pytestmark = pytest.mark.integration


@dataclass
class Machine:
    """The system profile, its socket, its server's user and two ordinary users."""

    profile: Path
    socket: Path
    owner: str
    alice: str
    bob: str
    python: tuple[list[str], dict[str, str]]

    def sendmail(self, user: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return as_user(
            user, self.python, [*SENDMAIL_MODULE, *args], stdin=stdin, env={"POSTROOM_SOCKET": str(self.socket)}
        )

    def postroom(self, user: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return as_user(user, self.python, ["-m", "postroom", "--profile", str(self.profile), *args])


def _useradd(name: str) -> None:
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True, timeout=60)


@pytest.fixture
def machine() -> Iterator[Machine]:
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        unavailable("the system profile's tests create Unix users and run as them: they need root, useradd and runuser")
    tag = secrets.token_hex(3)
    owner, alice, bob = f"prpost{tag}", f"pralice{tag}", f"prbob{tag}"
    made: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="postroom-system-", dir="/tmp"))
    server: subprocess.Popen[bytes] | None = None
    try:
        for name in (owner, alice, bob):
            _useradd(name)
            made.append(name)
        python = user_python(owner)
        if isinstance(python, str):
            unavailable(python)
        base.chmod(0o755)  # as /run/postroom: everyone reaches the socket; the profile inside is 0700
        profile = base / "profile"
        ok(run("init", profile))
        ok(run("offline", profile=profile))  # messages wait in the queue, so the users can list them
        subprocess.run(["chown", "-R", f"{owner}:", str(base)], check=True)
        profile.chmod(0o700)
        sock = base / "submit.sock"
        prefix, extra = python
        variables = [f"{k}={v}" for k, v in {"PATH": "/usr/bin:/bin", "HOME": str(profile), **extra}.items()]
        server = subprocess.Popen(
            ["runuser", "-u", owner, "--", "env", "-i", *variables, *prefix, "-m", "postroom", "--profile",
             str(profile), "serve", "submit", "--socket", str(sock)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_for(lambda: sock.is_socket() or server.poll() is not None)
        assert server.poll() is None, server.communicate()
        yield Machine(profile, sock, owner, alice, bob, python)
    finally:
        if server is not None:
            server.terminate()
            server.communicate(timeout=30)
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def note(subject: str) -> bytes:
    return f"Subject: {subject}\n\nfrom the system profile\n".encode()


def test_every_user_submits_through_the_socket_and_the_message_records_who(machine: Machine) -> None:
    for user in (machine.alice, machine.bob):
        done = machine.sendmail(user, "someone@localhost", stdin=note(f"from {user}"))
        assert done.returncode == 0, done.stderr
    with postroom.logon(machine.profile) as session:  # as root, read only
        queued = {q.subject: session.submitter_uid(q.id) for q in session.queue()}
        sent = {q.subject: q for q in session.queue()}
        froms = {s: session.open_message(q.id).props for s, q in sent.items()}
    uid = {
        user: int(subprocess.run(["id", "-u", user], capture_output=True, check=True).stdout)
        for user in (machine.alice, machine.bob)
    }
    assert queued == {f"from {machine.alice}": uid[machine.alice], f"from {machine.bob}": uid[machine.bob]}
    sender = postroom.mapi.tags.PR_SENDER_EMAIL_ADDRESS
    assert froms[f"from {machine.alice}"].get(sender, "").startswith(f"{machine.alice}@")


def test_a_user_lists_only_their_own_queued_messages(machine: Machine) -> None:
    assert machine.sendmail(machine.alice, "x@localhost", stdin=note("alice's secret")).returncode == 0
    assert machine.sendmail(machine.bob, "y@localhost", stdin=note("bob's plan")).returncode == 0
    alices = machine.sendmail(machine.alice, "-bp")
    assert alices.returncode == 0, alices.stderr
    assert b"alice's secret" in alices.stdout and b"bob's plan" not in alices.stdout
    bobs = machine.sendmail(machine.bob, "-bp")
    assert b"bob's plan" in bobs.stdout and b"alice's secret" not in bobs.stdout


def test_no_user_can_read_the_store_or_the_credentials_or_cancel_anothers_message(machine: Machine) -> None:
    assert machine.sendmail(machine.alice, "x@localhost", stdin=note("alice's secret")).returncode == 0
    for args in (("list", "Outbox"), ("show", "1"), ("cancel", "1"), ("queue",)):
        tried = machine.postroom(machine.bob, *args)
        assert tried.returncode != 0, (args, tried.stdout)
        assert b"alice's secret" not in tried.stdout
    for name in ("profile.toml", "store.sqlite"):
        assert (
            as_user(machine.bob, machine.python, ["-c", f"open({str(machine.profile / name)!r}, 'rb')"]).returncode != 0
        )
    with postroom.logon(machine.profile) as session:
        assert [q.subject for q in session.queue()] == ["alice's secret"]  # still queued, not cancelled


def test_dsn_requests_of_dash_n_dash_r_and_dash_v_reach_the_store_through_the_socket(machine: Machine) -> None:
    done = machine.sendmail(
        machine.alice, "-N", "success,delay", "-R", "full", "-V", "job-9", "someone@localhost", stdin=note("asked")
    )
    assert done.returncode == 0, done.stderr
    tags = postroom.mapi.tags
    with postroom.logon(machine.profile) as session:  # as root, read only
        [queued] = session.queue()
        message = session.open_message(queued.id)
    assert (message.props.get(tags.PR_POSTROOM_DSN_RET), message.props.get(tags.PR_POSTROOM_DSN_ENVID)) == (
        "FULL",
        "job-9",
    )
    [row] = [r for r in message.recipients if r.email_address == "someone@localhost"]
    assert row.props.get(tags.PR_POSTROOM_DSN_NOTIFY) == "SUCCESS,DELAY"


def test_dash_bs_dsn_requests_of_mail_and_each_rcpt_reach_the_store_through_the_socket(machine: Machine) -> None:
    conversation = [
        b"EHLO client",
        b"MAIL FROM:<alice@localhost> RET=HDRS ENVID=bs+2B1",
        b"RCPT TO:<bob@localhost> NOTIFY=SUCCESS ORCPT=rfc822;bob+40example.org",
        b"RCPT TO:<carol@localhost>",
        *(b"DATA", b"Subject: asked over smtp", b"", b"body", b".", b"QUIT"),
    ]
    done = machine.sendmail(
        machine.alice, "-bs", "-N", "failure", "-R", "full", stdin=b"".join(line + b"\r\n" for line in conversation)
    )
    assert done.returncode == 0 and b"\r\n250 2.0.0 " in done.stdout, (done.stdout, done.stderr)
    tags = postroom.mapi.tags
    with postroom.logon(machine.profile) as session:  # as root, read only
        [queued] = session.queue()
        message = session.open_message(queued.id)
    assert (message.props.get(tags.PR_POSTROOM_DSN_RET), message.props.get(tags.PR_POSTROOM_DSN_ENVID)) == (
        "HDRS",  # MAIL's RET over -R
        "bs+1",
    )
    asked = {
        r.email_address: (r.props.get(tags.PR_POSTROOM_DSN_NOTIFY), r.props.get(tags.PR_POSTROOM_DSN_ORCPT))
        for r in message.recipients
    }
    assert asked == {"bob@localhost": ("SUCCESS", "rfc822;bob@example.org"), "carol@localhost": ("FAILURE", None)}
