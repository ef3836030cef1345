"""Running `postroom-sendmail` as its callers do: a program name, flags, a message on stdin.

`sendmail(...)` runs the installed console script (under the name `sendmail` or `mailq`, through
a symlink, since the name decides what it does). `as_user(...)` runs a postroom command as another
Unix user, for the system profile's tests: with this interpreter when that user may run it, else
with the system's Python 3 and this environment's packages on PYTHONPATH (a virtual environment
under /root is unreadable to others).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

import postroom

from support.cli import environment

SCRIPT = Path(sys.executable).parent / "postroom-sendmail"


def sendmail(
    *args: str | Path,
    stdin: bytes = b"",
    env: dict[str, str | None] | None = None,
    program: str = "postroom-sendmail",
    links: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run `program` (sendmail or mailq: a symlink to the console script in `links`) to its end."""
    command = str(SCRIPT)
    if program != SCRIPT.name:
        assert links is not None, "a program name other than postroom-sendmail needs a links directory"
        link = links / program
        if not link.exists():
            link.symlink_to(SCRIPT)
        command = str(link)
    proc = subprocess.run(
        [command, *map(str, args)], input=stdin, capture_output=True, env=environment(env), timeout=timeout
    )
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    return proc


def user_python(user: str) -> tuple[list[str], dict[str, str]] | str:
    """(argv prefix, extra environment) that runs this postroom as `user`; or why that cannot be."""
    if _runs_as(user, ["test", "-x", sys.executable]):
        return [sys.executable], {}
    paths = [str(Path(postroom.__file__).parents[1]), str(Path(click.__file__).parents[1])]
    system = "/usr/bin/python3"
    probe = [system, "-c", "import sys, postroom.cli; sys.exit(sys.version_info < (3, 11))"]
    extra = {"PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1"}
    if not Path(system).exists() or not _runs_as(user, probe, extra):
        return f"user {user} can run neither {sys.executable} nor {system} ≥ 3.11 with postroom on PYTHONPATH"
    return [system], extra


def _runs_as(user: str, argv: list[str], extra: dict[str, str] | None = None) -> bool:
    env = ["env", *(f"{k}={v}" for k, v in (extra or {}).items())]
    return subprocess.run(["runuser", "-u", user, "--", *env, *argv], capture_output=True, timeout=60).returncode == 0


def as_user(
    user: str,
    python: tuple[list[str], dict[str, str]],
    code_or_module: list[str],
    *,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run `python <code_or_module…>` as `user` with a clean environment plus `env`."""
    prefix, extra = python
    variables = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8", **extra, **(env or {})}
    argv = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run([*argv, *prefix, *code_or_module], input=stdin, capture_output=True, timeout=timeout)


#: How `as_user` runs postroom-sendmail (the console script may be unreadable to the user).
SENDMAIL_MODULE = ["-c", "import sys; from postroom.cli.sendmail import main; sys.argv[0] = 'sendmail'; main()"]
