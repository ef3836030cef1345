"""A `pipe` transport command that records who it delivered to: one line per recipient in a log.

The command is `/bin/sh SCRIPT LOG`; the pipe transport appends the recipients' addresses, so
every delivery leaves one line "<address>" in LOG and a test can count them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

SCRIPT = """#!/bin/sh
log="$1"; shift
cat > /dev/null
for a in "$@"; do printf '%s\\n' "$a" >> "$log"; done
"""


def logging_pipe(directory: Path, name: str) -> tuple[list[str], Path]:
    """(the `command` option, the log it appends to) for a pipe transport called `name`."""
    script = directory / "log-recipients.sh"
    if not script.exists():
        script.write_text(SCRIPT)
    log = directory / f"{name}.log"
    return ["/bin/sh", str(script), str(log)], log


def logged(log: Path) -> Counter[str]:
    """How many times each address was handed to the command."""
    return Counter(log.read_text().split()) if log.exists() else Counter()
