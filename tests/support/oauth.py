"""OAuth2 in tests: a `token_command` that hands out access tokens in a given order."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def token_command(directory: Path, *tokens: str) -> str:
    """A command (JSON list, as `--set token_command=...` takes it) that prints the next of
    `tokens` each time it runs (the last one from then on), as an oauth2 helper would print
    an expired token and then, asked again, a fresh one."""
    script = directory / "token.py"
    state = directory / "token-calls"
    script.write_text(
        "import pathlib, sys\n"
        f"state = pathlib.Path({str(state)!r})\n"
        "n = int(state.read_text()) if state.exists() else 0\n"
        "state.write_text(str(n + 1))\n"
        f"tokens = {list(tokens)!r}\n"
        "print(tokens[min(n, len(tokens) - 1)])\n"
    )
    return json.dumps([sys.executable, str(script)])
