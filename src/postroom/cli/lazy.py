"""A click group whose subcommands are imported only when one of them runs.

Every command module pulls in the session, and with it the store, the spooler, the transports
and asyncio: half a second before anything happens. `postroom --version` and `postroom --help`
need none of it, and a command needs only its own module (benchmarks/fig9_startup.py measures
the start-up). So the group knows its commands by name, module and one-line summary, and
imports a module when its command is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any, NamedTuple

import click


class LazyCommand(NamedTuple):
    """Where a subcommand lives, and the summary `--help` lists for it.

    The summary is the first sentence of the command's own help; a test keeps the two equal.
    """

    module: str  # relative to postroom.cli
    attribute: str
    summary: str


class LazyGroup(click.Group):
    """A group that imports a subcommand's module when the subcommand is resolved."""

    def __init__(self, *args: Any, lazy: Mapping[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            where = self.lazy[cmd_name]
            command = getattr(import_module(f".{where.module}", __package__), where.attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"postroom.cli.{where.module}.{where.attribute} is not a click command")
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and args[0] not in self.lazy:
            # An unknown name is an error anyway: load every command, so that click's message
            # can suggest the nearest names ("Did you mean 'send'?").
            for name in self.lazy:
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The listing needs only the summaries: stand-ins carry them, and click shortens them
        # exactly as it shortens a loaded command's help.
        listing = click.Group(
            self.name,
            commands=[
                self.commands.get(name) or click.Command(name, help=self.lazy[name].summary)
                for name in self.list_commands(ctx)
            ],
        )
        listing.format_commands(ctx, formatter)
