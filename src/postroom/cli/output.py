"""How the CLI prints: rich tables on a terminal, aligned plain text in a pipe, JSON with --json.

Every command builds plain data first; `Output` either dumps it as one JSON document or
renders it for a human. User data is never interpreted as rich markup.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import click

REDACTED = "***"
#: Colours of delivery states on a terminal.
STATE_STYLES = {"delivered": "green", "failed": "red", "expired": "red", "waiting": "yellow", "pending": "yellow"}
_SECRET_WORDS = ("password", "secret", "token")


def progress_line(json_output: bool) -> Any:
    """A started rich progress line on stderr for a person at a terminal (`import`, `export`);
    None under --json or when stderr is no terminal, so a script sees only the result. Transient:
    it is gone when stopped. rich's progress is loaded here, only when it is drawn (start-up time)."""
    if json_output or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    progress.start()
    return progress


def is_secret_key(key: str) -> bool:
    """Option keys whose values are never printed (`smtp_password`, `client_secret`, …)."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact(value: Any) -> Any:
    """A copy of an options mapping with every secret value replaced by "***", at any depth."""
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret_key(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def jsonable(value: Any) -> Any:
    """Plain JSON types from what the Session API returns (datetimes, bytes, enums, dataclasses)."""
    if isinstance(value, enum.Enum):
        return value.value if not isinstance(value, enum.IntFlag) else int(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def when(value: datetime | None, *, empty: str = "-") -> str:
    """A time for people: local time, seconds precision."""
    if value is None:
        return empty
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def next_try(value: datetime | None, now: datetime) -> str:
    """When a waiting message is tried again; far-future times mean "at the next Send/Receive"."""
    if value is None:
        return "now"
    if value - now > timedelta(days=365):
        return "at the next Send/Receive"
    if value <= now:
        return "now"
    return when(value)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class Output:
    """Where a command's results go."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json = json_mode
        self._console: Any = None

    @property
    def rich(self) -> bool:
        """Rich rendering only for a human on a terminal."""
        return not self.json and sys.stdout.isatty()

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False)
        return self._console

    # --- machine output -----------------------------------------------------------------------
    def document(self, data: Any) -> None:
        """The one JSON document of a --json command."""
        click.echo(json.dumps(jsonable(data), indent=2, ensure_ascii=False))

    # --- human output -------------------------------------------------------------------------
    def json_line(self, data: Any) -> None:
        """One JSON object on one line, flushed at once (a stream a program reads as it goes)."""
        click.echo(json.dumps(jsonable(data), ensure_ascii=False))

    def echo(self, text: str = "", *, style: str | None = None) -> None:
        if self.rich:
            from rich.text import Text

            self.console.print(Text(text, style=style or ""), soft_wrap=True)
        else:
            click.echo(text)

    def heading(self, text: str) -> None:
        self.echo(text, style="bold")

    def fields(self, pairs: Sequence[tuple[str, str]], indent: int = 2) -> None:
        """`Label:  value` lines, aligned."""
        width = max((len(k) for k, _ in pairs), default=0) + 1
        for key, value in pairs:
            self.echo(f"{' ' * indent}{key + ':':<{width}}  {value}")

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        title: str | None = None,
        empty: str = "(none)",
        state_column: int | None = None,
    ) -> None:
        cells = [[one_line("" if c is None else str(c)) for c in row] for row in rows]
        if title:
            self.heading(title)
        if not cells:
            self.echo(f"  {empty}")
            return
        if self.rich:
            from rich import box
            from rich.table import Table
            from rich.text import Text

            table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
            for col in columns:
                table.add_column(col, overflow="fold")
            for row in cells:
                table.add_row(
                    *(Text(c, style=STATE_STYLES.get(c, "") if i == state_column else "") for i, c in enumerate(row))
                )
            self.console.print(table)
            return
        widths = [max(len(columns[i]), *(len(r[i]) for r in cells)) for i in range(len(columns))]

        def fmt(row: Sequence[str]) -> str:
            padded = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
            return "  ".join(padded).rstrip()

        click.echo(fmt(list(columns)))
        for row in cells:
            click.echo(fmt(row))
