"""Where the long-running commands' log lines go, and in which form (`--log-format`, `--log-level`).

stdlib `logging` throughout, on stderr. On a terminal a line carries its own time; without one
(a pipe, a file) and under systemd (JOURNAL_STREAM set) it does not, because the journal or
whoever collects the lines stamps them already, as Postfix's lines through syslog. `json` gives
one object a line for machines: time (when stamped), level, logger, message.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import click

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _stamped() -> bool:
    """Whether our lines carry a time of their own: only on a terminal, never under systemd."""
    return sys.stderr.isatty() and not os.environ.get("JOURNAL_STREAM")


class JSONFormatter(logging.Formatter):
    """One JSON object a line."""

    def __init__(self, stamped: bool) -> None:
        super().__init__()
        self.stamped = stamped

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {}
        if self.stamped:
            doc["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        doc.update(level=record.levelname.lower(), logger=record.name, message=record.getMessage())
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(log_format: str = "text", level: str = "info") -> None:
    """Send postroom's log lines to stderr, in `log_format`, from `level` up."""
    handler = logging.StreamHandler(sys.stderr)
    stamped = _stamped()
    if log_format == "json":
        handler.setFormatter(JSONFormatter(stamped))
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if stamped else "%(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("postroom")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # aiosmtpd logs every command line it reads at DEBUG, an AUTH's credentials too: never let them out.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def log_options(fn: Any) -> Any:
    """--log-format and --log-level, for the commands that run until stopped."""
    fn = click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS),
        default="info",
        show_default=True,
        help="The least important log lines written (on stderr).",
    )(fn)
    return click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default="text",
        show_default=True,
        help="Log lines as text or as one JSON object a line. Without a terminal, and under systemd "
        "(JOURNAL_STREAM), lines carry no time of their own.",
    )(fn)
