"""The README, run as written: every command of its `sh` blocks in order, then its Python.

A reader who copies the README's commands one after the other, into one shell, gets what it
says. So every line runs in one fresh default profile (HOME and XDG_DATA_HOME in a temporary
directory, POSTROOM_PROFILE unset), through bash, in a working directory that holds the files the
commands name (minutes.txt, message.eml, …). Outside programs are stand-ins: `sendfax` and
`page` are small scripts, and the intranet Maildir's root is a temporary directory. Each command
must exit 0, unless its comment announces another status (`… exit 2`).

What does not run as written is listed below with the reason; a README line that is none of
these makes the test fail, so the README cannot gain a command nobody has tried.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"

#: Sections whose commands need the real world; another test runs them against loopback servers.
SKIPPED_SECTIONS = {
    "Mail accounts: SMTP out, IMAP or POP3 in": "needs mail servers: tests/integration/test_readme_accounts.py",
    "The SMTP submission listener, logs and systemd": "listens on port 587 and asks for a password: "
    "tests/integration/test_smtp_listener.py runs each command on a free port",
    # These change the machine (its /usr/sbin/sendmail, its users).
    "postroom as the machine's mailer: `postroom-sendmail`": "links /usr/sbin/sendmail: "
    "tests/integration/test_sendmail.py and test_sendmail_callers.py run it from a temporary link",
    "A system profile for every user of the machine": "adds a system user: tests/integration/test_system_profile.py "
    "does it with throwaway users",
}
#: Lines that are not run at all.
SKIPPED_LINES = {
    "pip install -e '.[test]' && pytest": "the test suite itself",
    "sudo apt-get install postfix dovecot-imapd dovecot-pop3d openssl gnupg postgresql chromium chromium-driver swaks git-email libmailtools-perl bsd-mailx cron": "installs system packages "
    "(.ci/install-system-packages does it for CI)",
}
#: Prefixes left out: postroom is installed in the environment that runs this test.
DROPPED_PREFIXES = ("pip install . && ",)
#: Commands that run until Ctrl-C: started, stopped with SIGINT once they said they run, exit 0.
UNTIL_CTRL_C = {
    "postroom spooler",
    "postroom watch",
    "postroom watch --json",
    "postroom serve http",
    "postroom spooler --http 127.0.0.1:8025",
}
#: Fenced blocks that hold no commands.
NOT_COMMANDS = {"toml": "a transport's entry point, for its pyproject.toml", "": "the source tree"}
#: Outside programs the README names, and the paths that stand in for them (under the temp dir).
STAND_INS = {"/usr/local/bin/sendfax": "bin/sendfax", "/usr/local/bin/page": "bin/page", "/var/mail/corp": "corp"}

EXPECTED_EXIT = re.compile(r"#.*\bexit (\d+)")


@dataclass(frozen=True)
class Block:
    section: str
    language: str
    text: str


def readme_blocks() -> list[Block]:
    """The fenced blocks of the README, with the heading each one is under."""
    blocks: list[Block] = []
    section = ""
    fence: tuple[str, list[str]] | None = None
    for line in README.read_text().splitlines():
        if fence is None:
            if line.startswith("```"):
                fence = (line[3:].strip(), [])
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif line.startswith("```"):
            blocks.append(Block(section, fence[0], "\n".join(fence[1])))
            fence = None
        else:
            fence[1].append(line)
    assert fence is None, "an unclosed code fence in README.md"
    return blocks


def command_lines(block: Block) -> list[str]:
    """A shell block's commands, continuation lines joined; comment-only lines show output."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def bare(command: str) -> str:
    """The command without its trailing comment."""
    return re.sub(r"\s+#.*$", "", command).strip()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The reader's shell: a working directory with the files the README names, and stand-ins."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "minutes.txt").write_text("Minutes of the meeting.\n")
    (cwd / "minutes.pdf").write_bytes(b"%PDF-1.4\n% a stand-in\n")
    (cwd / "invoice-2041.pdf").write_bytes(b"%PDF-1.4\n% a stand-in\n")
    (cwd / "message.eml").write_text(
        "From: Carol <carol@localhost>\nTo: alice@localhost\nSubject: From a file\n\nSent with --eml.\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sendfax", "page"):  # a pipe transport's command: recipients as arguments, message on stdin
        program = bin_dir / name
        program.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/{name}.calls"\ncat > /dev/null\n')
        program.chmod(0o755)
    return cwd


def environment(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("POSTROOM_PROFILE", None)  # the default profile, created on first use as for a new user
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_DATA_HOME=str(tmp_path / "xdg"),
        USER="reader",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        POSTROOM_DEBUG="",
    )
    return env


def with_stand_ins(command: str, tmp_path: Path) -> str:
    for real, stand_in in STAND_INS.items():
        command = command.replace(real, str(tmp_path / stand_in))
    return command


def run_until_ctrl_c(command: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Start a command that runs until Ctrl-C; once it has printed its first line, press Ctrl-C."""
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = threading.Timer(60, proc.kill)  # a command that never prints must not hang the suite
    watchdog.start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the banner: it runs (and has its signal handlers)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, first + rest


# The README runs dozens of commands, each a fresh process: under load that takes minutes.
@pytest.mark.timeout(600)
def test_every_readme_command_works_as_written(workdir: Path, tmp_path: Path) -> None:
    env = environment(tmp_path)
    ran = 0
    used: set[str] = set()  # the entries of the lists above that some README line needed
    for block in readme_blocks():
        if block.language in NOT_COMMANDS:
            used.add(block.language)
            continue
        if block.section in SKIPPED_SECTIONS:
            used.add(block.section)
            continue
        if block.language == "python":
            result = subprocess.run(
                [sys.executable, "-c", block.text], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0 and result.stdout.strip(), (block.section, result.stdout, result.stderr)
            ran += 1
            continue
        assert block.language == "sh", f"a ```{block.language} block in {block.section!r}: add it to NOT_COMMANDS?"
        for line in command_lines(block):
            command = bare(line)
            if command in SKIPPED_LINES:
                used.add(command)
                continue
            for prefix in DROPPED_PREFIXES:
                if command.startswith(prefix):
                    used.add(prefix)
                    command = command.removeprefix(prefix)
            assert command.startswith("postroom "), f"README line not known to this test ({block.section}): {line}"
            used.update(real for real in STAND_INS if real in command)
            command = with_stand_ins(command, tmp_path)
            expected = int(m.group(1)) if (m := EXPECTED_EXIT.search(line)) else 0
            if command in UNTIL_CTRL_C:
                used.add(command)
                status, output = run_until_ctrl_c(command, workdir, env)
            else:
                result = subprocess.run(
                    ["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
                )
                status, output = result.returncode, result.stdout + result.stderr
            assert status == expected, f"{block.section}: `{line}` exited {status}, not {expected}:\n{output}"
            assert "Traceback" not in output, output
            ran += 1
    assert ran >= 30, "the README's commands were not found"
    special = [*SKIPPED_SECTIONS, *SKIPPED_LINES, *DROPPED_PREFIXES, *UNTIL_CTRL_C, *NOT_COMMANDS, *STAND_INS]
    assert [entry for entry in special if entry not in used] == [], "no README line needs these any more"
    # The worked example's fax went through the stand-in, even offline (call_when_offline).
    assert (tmp_path / "sendfax.calls").read_text().split() == ["+15551234"]
