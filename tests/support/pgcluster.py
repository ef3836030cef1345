"""A throwaway PostgreSQL cluster started by the test session itself, so that `pytest` alone runs
the PostgreSQL tests on a machine that has PostgreSQL's server binaries (Debian's `postgresql`).

It is started only when POSTROOM_TEST_PG_URL names no server, and only once: the first test
that asks for PostgreSQL runs `.ci/start-postgres` (the script CI runs, so there is one way to
make the cluster) and puts what the script exports (POSTROOM_TEST_PG_URL, PGPASSFILE) into
`os.environ`. The store code of this process and every subprocess a test starts (spoolers,
the CLI) then find the same server.

The cluster lives in the script's state directory ($POSTROOM_PG_STATE, by default
/tmp/postroom-pg-<uid>) and is left running when the session ends: other sessions on the
machine may be using it, and the next one reuses it instead of starting it again.
`pg_ctl -D /tmp/postroom-pg-$(id -u)/data stop` (as the postgres user, for root) stops it.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
from pathlib import Path

ENV = "POSTROOM_TEST_PG_URL"
SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "start-postgres"
#: initdb, pg_ctl and postgres as Debian installs them (any major version).
SERVER_BINARIES = "/usr/lib/postgresql/*/bin/initdb"
#: initdb and a first start take a few seconds; the script waits at most 60 s for the server.
START_TIMEOUT = 180.0


def server_binaries_installed() -> bool:
    return any(Path("/").glob(SERVER_BINARIES.lstrip("/")))


def exports(script_output: str) -> dict[str, str]:
    """The variables of the script's `export A=... B=...` lines (values quoted as bash's %q)."""
    found: dict[str, str] = {}
    for line in script_output.splitlines():
        words = shlex.split(line)
        if words[:1] != ["export"]:
            continue
        for word in words[1:]:
            name, sep, value = word.partition("=")
            if sep:
                found[name] = value
    return found


@functools.cache
def ensure_server() -> str | None:
    """Start (or find) the test cluster unless POSTROOM_TEST_PG_URL is set; None, or why there is none."""
    if os.environ.get(ENV):
        return None
    if not server_binaries_installed():
        return (
            f"no PostgreSQL server for the tests: {ENV} is not set and PostgreSQL's server binaries "
            "are not installed (apt-get install postgresql)"
        )
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{SCRIPT.name} did not start a PostgreSQL test cluster within {START_TIMEOUT:.0f} s"
    found = exports(done.stdout)
    if not found.get(ENV):
        said = " ".join(done.stderr.split()) or f"exit code {done.returncode}"
        return f"{SCRIPT.name} started no PostgreSQL test cluster: {said}"
    os.environ.update(found)
    return None
