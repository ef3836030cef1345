"""The README's "Mail accounts" commands, run as written against the suite's Postfix and Dovecot.

The only changes are the test servers' address: host 127.0.0.1, their ports, and security=none
(the loopback servers speak plain text).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from peers import Peers

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    """The `postroom …` lines of the README's accounts example (continuations joined)."""
    text = README.read_text()
    block = text.split("### Mail accounts: SMTP out, IMAP or POP3 in", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split("#", 1)[0].strip() for line in joined.splitlines() if line.strip().startswith("postroom ")]


def adapt(command: str, peers: Peers, alice: str, bob: str) -> list[str]:
    """Point a README command at the test servers."""
    command = command.replace("alice@example.org", alice).replace("bob@example.org", bob)
    joined = shlex.join(shlex.split(command)[1:])  # the words as the shell reads them, quoted again
    if " smtp " in f" {joined} ":
        joined = joined.replace("host=mail.example.org", f"host=127.0.0.1 --set port={peers.smtp_port}")
        joined = joined.replace("security=starttls", "security=none")
        joined = re.sub(
            r"--set username=\S+ --set password_env=MAIL_PASSWORD ", "", joined
        )  # Postfix takes no AUTH here
    elif " imap " in f" {joined} ":
        joined = joined.replace(
            "host=mail.example.org", f"host=127.0.0.1 --set port={peers.imap_port} --set security=none"
        )
    elif " pop3 " in f" {joined} ":
        joined = joined.replace(
            "host=mail.example.org", f"host=127.0.0.1 --set port={peers.pop3_port} --set security=none"
        )
    return shlex.split(joined)


def test_readme_account_commands_work(peers: Peers, tmp_path: Path) -> None:
    commands = readme_commands()
    assert [c.split()[1:3] for c in commands] == [
        ["service", "add"],
        ["service", "add"],
        ["service", "add"],
        ["send", "--to"],
        ["receive"],
    ]
    alice = peers.new_postfix_user() if hasattr(peers, "new_postfix_user") else "alice@example.test"
    bob = alice  # mail to oneself: it must come back through IMAP
    profile = tmp_path / "profile"
    env = dict(os.environ, MAIL_PASSWORD=peers.password, POSTROOM_PROFILE=str(profile))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "postroom", "--profile", str(profile), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    assert run("init", "--empty", str(profile)).returncode == 0
    for command in commands:
        args = adapt(command, peers, alice, bob)
        if args[0] == "receive":
            break
        result = run(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert peers.password not in result.stdout + result.stderr
    # The message went out through Postfix and comes back in through IMAP (and POP3 sees it too).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        received = run("--json", "receive")
        assert received.returncode == 0, received.stderr
        inbox = json.loads(run("--json", "list", "Inbox").stdout)
        rows = inbox if isinstance(inbox, list) else inbox.get("messages", [])
        if any("Hello" in str(row.get("subject", "")) for row in rows):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the message did not come back through IMAP/POP3")
    # It went out from the account's identity (from_name, from_address), with a Message-ID in its
    # domain and the same address as the envelope sender: Postfix delivered these very headers.
    box = peers.maildir(alice)
    [delivered] = [p for p in (*box.glob("new/*"), *box.glob("cur/*")) if b"Subject: Hello" in p.read_bytes()]
    wire = email.message_from_bytes(delivered.read_bytes(), policy=email.policy.default)
    assert wire["From"] == f"Alice Example <{alice}>"
    assert wire["Message-ID"].endswith(f"@{alice.partition('@')[2]}>")
    assert wire["Return-Path"] == f"<{alice}>"
    listed = run("--json", "service", "list")
    assert peers.password not in listed.stdout
