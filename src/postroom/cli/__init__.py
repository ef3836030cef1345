"""The `postroom` command line: a thin layer over the Session API (`postroom --help`).

`main` is the console script's entry point (`postroom.cli:main`); `run(argv)` returns the
exit code instead of exiting, for embedding and tests.
"""

from .app import cli, main, run

__all__ = ["cli", "main", "run"]
