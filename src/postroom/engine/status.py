"""Which status table to trust: the one a running spooler daemon published, or this process's own.

Where the transports really work is in the spooler daemon, when one runs on the profile: its
status rows (published into the store after every pass) say how its transports are. Without a
daemon, or when asked, a process logs the transports on itself and shows its own rows. Either
way the report says who published the table in the store before, and when.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from ..profile import Mode
from ..store import MessageStore
from ..transports.spi import StatusRow, status_row_from_dict
from .pidfile import is_daemon_process, owner_pid, running_daemon


class StatusSource(StrEnum):
    """Whose status rows a report shows."""

    DAEMON = "daemon"  # the spooler daemon's, as it published them
    HERE = "this command"  # this process's own, after logging the transports on


@dataclass(frozen=True)
class StatusPublication:
    """Who last published the status table into the store, and when."""

    owner: str  # the spooler that wrote it (host:pid:suffix)
    time: datetime | None
    by_daemon: bool  # the spooler daemon running on this profile wrote it


@dataclass(frozen=True)
class StatusReport:
    """The status table to show, where it comes from, and whether a spooler daemon runs."""

    rows: Sequence[StatusRow]
    source: StatusSource
    mode: Mode
    daemon_pid: int | None  # the spooler daemon running on this profile, if any
    published: StatusPublication | None  # the table in the store before this report, if any


async def status_report(
    store: MessageStore,
    profile_dir: Path,
    mode: Callable[[], Mode],
    own_rows: Callable[[], Awaitable[list[StatusRow]]],
    *,
    here: bool = False,
    daemon_here: bool = False,
) -> StatusReport:
    """The daemon's published rows when a daemon runs and published them, unless `here`; else this
    process's own (`own_rows` logs the transports on). `daemon_here`: the daemon runs in this process."""
    published = store.status_rows()  # before our own logon replaces it
    # A page served beside the daemon, in its process (`spooler --http`), reads the daemon's rows too;
    # the pid file names the parent when the daemon runs --workers (a worker's rows count as its).
    daemon = running_daemon(profile_dir) or (os.getpid() if daemon_here else None)
    owner = published[0][3] if published else None
    published_at = max((r[2] for r in published), default=None)
    publisher = owner_pid(owner) if owner is not None else None
    by_daemon = daemon is not None and publisher is not None and is_daemon_process(publisher, daemon)
    if by_daemon and not here:
        source = StatusSource.DAEMON
        rows = [status_row_from_dict(name, row) for name, row, _, _ in published]
    else:
        source = StatusSource.HERE
        rows = await own_rows()
    publication = StatusPublication(owner, published_at, by_daemon) if owner is not None else None
    return StatusReport(rows, source, mode(), daemon, publication)
