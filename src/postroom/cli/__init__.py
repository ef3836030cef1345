"""The `postroom` command line: a thin layer over the Session API (`postroom --help`).

`main` is the console script's entry point (`postroom.cli:main`); `run(argv)` returns the
exit code instead of exiting, for embedding and tests. They are imported on first use, so that
`postroom-sendmail` (`postroom.cli.sendmail`), which hands most messages to a socket, does not
load click and the command table.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import cli, main, run

__all__ = ["cli", "main", "run"]


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(".app", __name__), name)
    globals()[name] = value
    return value
