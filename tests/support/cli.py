"""Running the `postroom` command in a subprocess, as a user would, and reading what it said."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from postroom.cli import run

#: The environment of the commands (POSTROOM_DEBUG off: errors as users see them).
ENV = {**os.environ, "POSTROOM_DEBUG": ""}


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll until `predicate()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def argv(profile: Path | None, *args: str | Path) -> list[str]:
    head = [sys.executable, "-m", "postroom"]
    if profile is not None:
        head += ["--profile", str(profile)]
    return head + [str(a) for a in args]


def environment(env: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with `env` applied (a None value removes the variable)."""
    out = {**os.environ, "POSTROOM_DEBUG": ""}
    for key, value in (env or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def postroom(
    *args: str | Path,
    profile: Path | None = None,
    env: dict[str, str | None] | None = None,
    timeout: float = 60,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """One command, to its end, with `stdin` as its input; a traceback on stderr is always a bug.
    Its output is read as UTF-8 (a byte that is not shows as U+FFFD)."""
    proc = subprocess.run(argv(profile, *args), input=stdin, capture_output=True, env=environment(env), timeout=timeout)
    out = subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out


def postroom_at_a_terminal(
    *args: str | Path, profile: Path | None = None, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], str]:
    """One command with its stderr on a pseudo-terminal (80 columns, TERM=xterm-256color), as a
    person at a terminal sees it, and stdout on a pipe: (its result, everything drawn on the terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        proc = subprocess.Popen(
            argv(profile, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=environment({"TERM": "xterm-256color", "COLUMNS": None, "LINES": None}),
        )
    finally:
        os.close(slave)
    drawn = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command closed its end
                return
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=timeout)
        reader.join(timeout)
    finally:
        os.close(master)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout.decode("utf-8", "replace"), "")
    terminal = drawn.decode("utf-8", "replace")
    assert "Traceback" not in terminal, terminal
    return result, terminal


def popen(
    *args: str | Path, profile: Path | None = None, env: dict[str, str | None] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv(profile, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(env)
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> str:
    """A failed command: the given exit code and exactly one `postroom: error:` line on stderr."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("postroom: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def in_process(profile: Path, *args: str | Path) -> tuple[int, bytes, str]:
    """One `postroom` command run in this process by `postroom.cli.run` (the console script's
    own code): exit code, stdout bytes, stderr text. For batches of commands, where a process
    each would cost most of a second."""
    with CliRunner().isolation() as (out, err, _):
        code = run(["--profile", str(profile), *(str(a) for a in args)])
    return code, out.getvalue(), err.getvalue().decode("utf-8", "replace")
