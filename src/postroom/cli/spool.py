"""`postroom spooler`: run the spooler over the outgoing queue, once or as the daemon until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click

from ..mapi.codes import HResult, MAPIError
from ..spooler import PassSummary
from .context import App, json_option, pass_app

PID_FILE = "spooler.pid"


# --- signals -----------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[list[int]]:
    """SIGINT and SIGTERM set `stop` (on the running event loop, thread-safely) instead of killing.

    A second Ctrl-C gives up waiting for the work in flight (KeyboardInterrupt, exit 130).
    Yields the list of signals received.
    """
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        try:
            loop = asyncio.get_running_loop()  # the handler runs on the main thread, inside the loop
        except RuntimeError:
            stop.set()  # between loop runs: nobody is waiting on the event yet
        else:
            loop.call_soon_threadsafe(stop.set)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --- the pid file ------------------------------------------------------------------------------


def pid_file(profile_dir: Path) -> Path:
    return profile_dir / PID_FILE


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def running_daemon(profile_dir: Path) -> int | None:
    """The pid of the spooler daemon running on this profile (from its pid file), if alive."""
    pid = read_pid(pid_file(profile_dir))
    return pid if pid is not None and pid != os.getpid() and pid_alive(pid) else None


def owner_pid(owner: str) -> int | None:
    """The pid in a spooler owner name (`host:pid:suffix`) when it is on this host."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    return int(pid_text)


def _write_pid(path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()}\n", encoding="ascii")
    os.replace(tmp, path)


def acquire_pid_file(path: Path, force: bool) -> str | None:
    """Write our pid; refuse (MAPI_E_BUSY) when a live daemon holds the file, unless `force`.

    Returns a note for the user when a stale or overridden file was replaced.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pid = read_pid(path)
        alive = pid is not None and pid != os.getpid() and pid_alive(pid)
        if alive and not force:
            raise MAPIError(
                HResult.MAPI_E_BUSY,
                f"a spooler daemon is already running on this profile (pid {pid}, {path}); "
                "stop it first, or use --force to start another one anyway",
            ) from None
        _write_pid(path)
        if alive:
            return f"started although the spooler daemon {pid} is running (--force)"
        return f"replaced a stale pid file (pid {pid} is not running)" if pid is not None else None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    return None


def release_pid_file(path: Path) -> None:
    """Remove the pid file if it is still ours."""
    if read_pid(path) == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink()


# --- output ------------------------------------------------------------------------------------


def summary_data(summary: PassSummary) -> dict[str, Any]:
    return {
        "messages": summary.processed,
        "delivered": summary.delivered,
        "failed": summary.failed,
        "waiting": summary.waiting,
        "finished": summary.finished,
        "results": summary.messages,
    }


def summary_line(summary: PassSummary) -> str:
    return (
        f"{summary.processed} message(s): {summary.delivered} recipient(s) delivered, "
        f"{summary.failed} failed, {summary.waiting} waiting"
    )


@click.command()
@click.option("--once", is_flag=True, help="One pass over the due messages, then exit.")
@click.option(
    "--force",
    is_flag=True,
    help="Start the daemon even if the pid file names a running spooler daemon on this profile.",
)
@json_option
@pass_app
@click.pass_context
def spooler(ctx: click.Context, app: App, once: bool, force: bool) -> None:
    """Run the spooler over the outgoing queue.

    The spooler takes submitted messages from the queue, oldest first, and offers each
    recipient to the transports in transport order.

    With --once: one pass, a summary, exit code 1 if any recipient failed.

    Without it: the spooler daemon, until Ctrl-C or SIGTERM. It wakes when a message is
    submitted or falls due, follows `postroom online` / `offline` (going online flushes the
    Outbox once the connection has stayed up a few seconds), polls transports that ask for it
    and runs the Send/Receive groups' schedules. A stop never cuts a delivery short: what is in
    flight finishes, nothing new is started. It writes its pid to <profile>/spooler.pid and
    refuses to start while another daemon runs on the same profile (--force overrides;
    several spoolers on one store never deliver a message twice, but two daemons on one
    profile are almost always a mistake).
    """
    if once:
        session = app.session()
        summary = session.deliver()
        if app.json:
            app.out.document(summary_data(summary))
        else:
            app.out.echo(summary_line(summary))
            for m in summary.messages:
                if m.finished:
                    outcome = f"finished ({m.finished})"
                elif m.held:
                    outcome = "held (outcome unknown after a crash; see `postroom queue`)"
                elif m.offline and not m.errors:
                    outcome = "waiting for Send/Receive (offline)"
                else:
                    outcome = "waiting: " + ("; ".join(m.errors) or "-")
                app.out.echo(
                    f"  message {m.message_id}: {m.delivered} delivered, {m.failed} failed, "
                    f"{m.waiting} waiting; {outcome}"
                )
        if summary.failed:
            ctx.exit(1)
        return

    stop = asyncio.Event()
    totals = PassSummary()
    passes = 0

    def on_pass(summary: PassSummary) -> None:
        nonlocal passes
        passes += 1
        totals.merge(summary)
        if not app.json:
            app.out.echo(f"{datetime.now().strftime('%H:%M:%S')} {summary_line(summary)}")

    # The handlers go in first: a SIGTERM while the transports log on still stops cleanly.
    with stop_on_signals(stop):
        session = app.session()
        path = pid_file(session.profile.directory)
        note = acquire_pid_file(path, force)
        try:
            if note:
                click.echo(f"postroom: {note}", err=True)
            if not app.json:
                app.out.echo(
                    f"Spooler running on {session.profile.directory} ({session.mode}, pid {os.getpid()}); "
                    "Ctrl-C or SIGTERM stops it."
                )
            session.run_spooler(stop, on_pass=on_pass)
        finally:
            release_pid_file(path)
    if app.json:
        app.out.document({"passes": passes, **summary_data(totals)})
    else:
        app.out.echo(f"Spooler stopped after {passes} pass(es): {summary_line(totals)}.")
