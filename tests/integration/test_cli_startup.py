"""Start-up: a `postroom` command imports only what it uses (benchmarks/fig9_startup.py has the times).

Each command runs in a fresh interpreter, which then lists the modules it had imported. What is
asserted is which modules were loaded, never how long it took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from postroom.cli.app import COMMANDS, cli

pytestmark = pytest.mark.integration

#: What only the commands that deliver, receive or open the store need.
HEAVY = ("postroom.session", "postroom.engine", "postroom.store", "postroom.spooler", "postroom.transports")
HEAVY_STDLIB = ("asyncio", "sqlite3", "ssl", "importlib.metadata", "rich")
COMMAND_MODULES = tuple(f"postroom.cli.{where.module}" for where in COMMANDS.values())

RUN_AND_LIST_MODULES = """
import json, sys
from postroom.cli import run
code = run(sys.argv[1:])
print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def imported_by(*args: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `postroom ARGS`."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "POSTROOM_DEBUG": ""},
        timeout=60,
    )
    report = json.loads(proc.stdout.rstrip().rsplit("\n", 1)[-1])
    assert report["code"] == 0, proc.stderr
    return set(report["modules"])


def loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("option", ["--version", "--help"])
def test_version_and_help_load_no_command_module_nor_the_session(option: str) -> None:
    modules = imported_by(option)
    assert loaded(modules, HEAVY + HEAVY_STDLIB + COMMAND_MODULES) == []


def test_the_package_loads_the_session_only_when_a_public_name_is_used() -> None:
    code = "import sys, postroom; a = 'postroom.session' in sys.modules; postroom.logon; print(a, 'postroom.session' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "True"], proc.stderr


def test_queue_loads_its_own_command_module_only_and_no_transport_entry_points(tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    assert imported_by("init", str(profile))
    modules = imported_by("--profile", str(profile), "queue")
    assert loaded(modules, COMMAND_MODULES) == ["postroom.cli.messages"]
    assert loaded(modules, ("importlib.metadata", "postroom.transports.maildir", "rich")) == []


def test_help_lists_each_command_with_the_summary_of_its_own_help() -> None:
    ctx = click.Context(cli)
    for name, where in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name, name
        stand_in = click.Command(name, help=where.summary)
        for width in (20, 45, 80, 200):  # the listing shortens summaries to the terminal's width
            assert stand_in.get_short_help_str(width) == command.get_short_help_str(width), (name, width)


def test_a_mistyped_command_still_gets_a_suggestion() -> None:
    proc = subprocess.run([sys.executable, "-m", "postroom", "sned"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "No such command 'sned'" in proc.stderr
    if (
        "Did you mean"
        in subprocess.run(  # the suggestion is click's (8.2 and later)
            [sys.executable, "-m", "postroom", "service", "ad"], capture_output=True, text=True, timeout=60
        ).stderr
    ):
        assert "Did you mean 'send'?" in proc.stderr
