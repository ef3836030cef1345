"""`postroom serve`: the long-running front ends other programs talk to.

Each server lives in a module of its own (`serve_smtp`, `serve_http`) and is imported only when
it runs, like every other command (cli/lazy.py says why).
"""

from __future__ import annotations

import click

from .lazy import LazyCommand, LazyGroup

#: Every server: its module and attribute under postroom.cli, and its summary in `--help`.
SERVE_COMMANDS: dict[str, LazyCommand] = {
    "http": LazyCommand(
        "serve_http",
        "http",
        "Serve the status page: overview, queue, message, routing, live updates, /metrics, /healthz.",
    ),
    "smtp": LazyCommand(
        "serve_smtp",
        "serve_smtp",
        "Run the SMTP submission listener: programs hand mail to postroom as to a mail server.",
    ),
    "submit": LazyCommand(
        "serve_submit",
        "serve_submit",
        "Accept messages from postroom-sendmail of every local user into this (system) profile.",
    ),
}


@click.group(cls=LazyGroup, lazy=SERVE_COMMANDS, no_args_is_help=True)
def serve() -> None:
    """Run a server in front of the profile: the SMTP submission listener, the status page or the submit socket."""
