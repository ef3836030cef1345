"""Who mail is from, through the `postroom` command (issue 16, item 5): `identity`, an smtp account's
from_address / from_name, `send --from`, and a user without a passwd entry."""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import postroom

from support.cli import as_json, ok, one_line_error
from support.cli import postroom as run
from support.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration

#: A uid and gid no passwd or group entry names (as in a container run with `--user 4242`).
NOBODY_KNOWS = 4242


def headers(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_identity_set_shows_and_clears_with_json(profile: Path) -> None:
    shown = as_json(ok(run("identity", "set", "Alice Example", "alice@example.org", "--json", profile=profile)))
    assert shown == {"name": "Alice Example", "address": "alice@example.org", "source": "profile", "accounts": []}
    assert "Alice Example <alice@example.org>" in ok(run("identity", profile=profile)).stdout
    assert as_json(ok(run("identity", "--json", profile=profile)))["source"] == "profile"
    assert (profile / "profile.toml").stat().st_mode & 0o777 == 0o600
    assert as_json(ok(run("identity", "clear", "--json", profile=profile)))["source"] == "fallback"


def test_a_bad_identity_is_one_line_with_its_mapi_code_and_exit_2(profile: Path) -> None:
    proc = run("identity", "set", "Eve", "eve@example.org\r\nBcc: victim@example.org", profile=profile)
    assert proc.returncode == 2
    one_line_error(proc, "MAPI_E_INVALID_PARAMETER: the address")
    assert as_json(ok(run("identity", "--json", profile=profile)))["source"] == "fallback"


def test_an_account_sends_as_its_from_address_with_that_envelope_and_message_id_domain(profile: Path) -> None:
    with SmtpSink() as sink, postroom.logon(profile) as session:
        session.set_identity("Alice at home", "alice@home.example")
        options = {"from_address": "alice@work.example", "from_name": "Alice Example"}
        session.add_service("smtp", "work", {"host": "127.0.0.1", "port": sink.port, "security": "none", **options})
        session.create_message("Hello", "Hi").to("bob@example.test").submit()
        assert session.deliver().delivered == 1
        message = headers(sink.handler.messages[0])
        assert message["From"] == "Alice Example <alice@work.example>"
        assert message["Sender"] is None
        assert message["Message-ID"].endswith("@work.example>")
        assert sink.handler.senders == ["alice@work.example"]
    shown = ok(run("identity", profile=profile)).stdout
    assert "Alice at home <alice@home.example>" in shown
    assert "account 'work' is from Alice Example <alice@work.example>" in shown


def test_send_from_comes_before_the_account_and_the_sender_option_sets_only_the_envelope(profile: Path) -> None:
    with SmtpSink() as sink:
        ok(run("service", "add", "smtp", "work", *sink.options(), "--set", "from_address=alice@work.example",
               "--set", "sender=bounces@work.example", profile=profile))  # fmt: skip
        ok(run("send", "--from", "Carol <carol@example.net>", "--to", "bob@example.test", "-b", "x", profile=profile))
        message = headers(sink.handler.messages[0])
        assert (message["From"], message["Sender"]) == ("Carol <carol@example.net>", None)
        assert message["Message-ID"].endswith("@example.net>")
        assert sink.handler.senders == ["bounces@work.example"]


def test_a_bad_send_from_is_refused_and_nothing_is_submitted(profile: Path) -> None:
    proc = run("send", "--from", "FAX:+15551234", "--to", "bob@localhost", "-b", "x", profile=profile)
    assert proc.returncode == 2 and "MAPI_E_INVALID_PARAMETER" in one_line_error(proc)
    assert as_json(ok(run("list", "Outbox", "--json", profile=profile))) in ([], {"messages": []})


#: Run as root, then as NOBODY_KNOWS: the first `send` (into a scratch profile) loads every module a
#: send needs while the interpreter's files can still be read (here they live under /root, which
#: that uid may not enter); the second is the user without a passwd entry, in a container's
#: environment (no HOME, USER or LOGNAME).
AS_NOBODY = """
import os, sys
from postroom.cli.app import run
scratch = sys.argv[1]
assert run(["init", scratch]) == 0
assert run(["--profile", scratch, "send", "--to", "bob@localhost", "-s", "x", "-b", "y"]) == 0
os.setgroups([])
os.setgid(int(sys.argv[2]))
os.setuid(int(sys.argv[2]))
sys.exit(run(["send", "--to", "bob@localhost", "-s", "x", "-b", "y"]))
"""


@pytest.fixture
def open_profile() -> Iterator[Path]:
    """A profile in a directory NOBODY_KNOWS may enter (pytest's own temporary directories are root's)."""
    top = Path(tempfile.mkdtemp(prefix="postroom-no-passwd-"))
    try:
        ok(run("init", top / "profile"))
        for path in (top, *top.rglob("*")):
            os.chown(path, NOBODY_KNOWS, NOBODY_KNOWS)
        yield top / "profile"
    finally:
        shutil.rmtree(top)


def test_a_user_without_a_passwd_entry_sends_as_the_documented_fallback(open_profile: Path, tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to become a uid without a passwd entry")
    with pytest.raises(KeyError):
        pwd.getpwuid(NOBODY_KNOWS)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "POSTROOM_PROFILE": str(open_profile)}
    proc = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, str(tmp_path / "scratch"), str(NOBODY_KNOWS)],
        capture_output=True, text=True, env=env, cwd="/", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    [path] = (open_profile / "maildir" / "localhost" / "bob" / "new").iterdir()
    assert path.stat().st_uid == NOBODY_KNOWS
    message = headers(path.read_bytes())
    assert message["From"] == f"uid{NOBODY_KNOWS} <uid{NOBODY_KNOWS}@localhost>"
