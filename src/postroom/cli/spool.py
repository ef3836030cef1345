"""`postroom spooler`: run the spooler over the outgoing queue, once or as the daemon until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from .. import DaemonPidFile, HResult, ListenerSettings, MAPIError, PassSummary, Profile
from .context import App, CliError, interruptible, json_option, pass_app, stop_on_signals
from .logs import configure_logging, log_options
from .workers import Supervisor, WorkersFailed, watch_parent

if TYPE_CHECKING:
    from ..web.server import BackgroundPage

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
    return counts_line(summary_data(summary))


def counts_line(data: dict[str, Any]) -> str:
    """The pass line from summary_data's counts (the parent of --workers has only those)."""
    return (
        f"{data['messages']} message(s): {data['delivered']} recipient(s) delivered, "
        f"{data['failed']} failed, {data['waiting']} waiting"
    )


COUNTS = ("messages", "delivered", "failed", "waiting", "finished")


@click.command()
@click.option("--once", is_flag=True, help="One pass over the due messages, then exit.")
@click.option(
    "--force",
    is_flag=True,
    help="Start the daemon even if the pid file names a running spooler daemon on this profile.",
)
@click.option(
    "--http",
    "http_at",
    default=None,
    metavar="HOST:PORT",
    help="Also serve the status page and /metrics there while the daemon runs (as `postroom serve http`).",
)
@click.option(
    "--smtp",
    "smtp_listen",
    multiple=True,
    metavar="HOST:PORT",
    help="Run the SMTP submission listener in the daemon too, on HOST:PORT (repeatable; "
    "`postroom serve smtp --help` says what it does).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Spooler processes on this store (default: the number of CPUs). 1 runs the daemon in this "
    "process; more runs one parent that starts them, restarts one that dies and stops them all on SIGTERM. "
    "The first worker also runs --smtp and --http.",
)
@click.option("--worker-of", "worker_of", type=int, default=None, hidden=True)
@log_options
@json_option
@pass_app
@click.pass_context
def spooler(
    ctx: click.Context,
    app: App,
    once: bool,
    force: bool,
    http_at: str | None,
    smtp_listen: tuple[str, ...],
    workers: int | None,
    worker_of: int | None,
    log_format: str,
    log_level: str,
) -> None:
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

    With --workers N (default: the number of CPUs): N spooler processes on the store under
    one parent, which prints their pass lines, starts a worker that dies again after a
    backoff, and exits 2 if they keep dying or one stops with an error.
    """
    if once and http_at:
        raise CliError("--http runs the status page beside the daemon; it does not go with --once")
    if once and smtp_listen:
        raise click.UsageError("--smtp runs with the daemon, not with --once", ctx)
    if once:
        session = app.session()
        summary = interruptible(app, lambda stop: session.deliver(stop=stop))
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

    if workers is None:
        workers = os.cpu_count() or 1
    if worker_of is None and workers > 1:
        servers = [*(["--http", http_at] if http_at else []), *(a for at in smtp_listen for a in ("--smtp", at))]
        logs = ["--log-format", log_format, "--log-level", log_level]
        supervise(app, workers, force, every_worker_options=logs, first_worker_options=servers)
        return
    if worker_of is not None:
        watch_parent(worker_of)

    smtp = ListenerSettings.from_options(smtp_listen) if smtp_listen else None
    configure_logging(log_format, log_level)
    stop = asyncio.Event()
    totals = PassSummary()
    passes = 0

    def on_pass(summary: PassSummary) -> None:
        nonlocal passes
        passes += 1
        totals.merge(summary)
        if app.json:
            app.out.json_line({"pass": passes, "time": datetime.now().astimezone(), **summary_data(summary)})
        else:
            app.out.echo(f"{datetime.now().strftime('%H:%M:%S')} {summary_line(summary)}")

    def listening(ports: list[int]) -> None:
        assert smtp is not None
        where = ", ".join(f"{h}:{p}" for (h, _), p in zip(smtp.listen, ports, strict=False))
        click.echo(f"postroom: SMTP submission listener on {where}", err=True)

    # The handlers go in first: a SIGTERM while the transports log on still stops cleanly.
    with stop_on_signals(stop):
        daemon_session = app.session_when_usable(stop)
        if daemon_session is None:
            return  # stopped while the store could not be opened
        with contextlib.ExitStack() as running:
            if worker_of is not None:  # the parent holds the pid file, once every worker has its store open
                app.out.json_line({"ready": os.getpid()})
            else:
                held = running.enter_context(daemon_session.daemon_pid_file(force=force))
                if held.note:
                    click.echo(f"postroom: {held.note}", err=True)
                if not app.json:
                    app.out.echo(
                        f"Spooler running on {daemon_session.profile.directory} ({daemon_session.mode}, "
                        f"pid {os.getpid()}, event loop {daemon_session.event_loop}); Ctrl-C or SIGTERM stops it."
                    )
            if http_at:
                running.callback(_start_page(daemon_session.profile, http_at).stop)
            daemon_session.run_spooler(stop, on_pass=on_pass, smtp=smtp, on_listening=listening)
    if app.json:  # the last line: the totals
        app.out.json_line({"stopped": True, "passes": passes, **summary_data(totals)})
    else:
        app.out.echo(f"Spooler stopped after {passes} pass(es): {summary_line(totals)}.")


def _start_page(profile: Profile, http_at: str) -> BackgroundPage:
    """The status page on a thread of its own beside the daemon, with its own session."""
    from ..web.server import BackgroundPage, Listen, parse_listen  # start-up: uvicorn only for --http

    host, port = parse_listen(http_at, option="--http")
    page = BackgroundPage(profile, Listen(host, port))
    page.start()
    click.echo(f"postroom: status page on {page.listen.url}", err=True)
    return page


def supervise(
    app: App,
    workers: int,
    force: bool,
    *,
    every_worker_options: Sequence[str] = (),
    first_worker_options: Sequence[str] = (),
) -> None:
    """The parent of `--workers N` (cli/workers.py says why processes, and what the parent does).
    The first worker also gets `first_worker_options`: the listener and the status page run once."""
    totals: dict[str, Any] = {k: 0 for k in COUNTS} | {"results": []}
    passes = 0
    base = [sys.executable, "-m", "postroom"]
    if app.profile_dir is not None:  # otherwise the workers find the profile as this process did
        base += ["--profile", str(app.profile_dir)]

    def command(index: int) -> list[str]:
        extra = [*every_worker_options, *(first_worker_options if index == 0 else ())]
        return [*base, "--json", "spooler", "--worker-of", str(os.getpid()), *extra]

    def on_line(index: int, data: dict[str, Any]) -> None:
        nonlocal passes
        if "ready" in data:
            supervisor.ready(index)
            return
        if "pass" not in data:
            return  # a worker's own totals: the parent counts the passes it relayed
        passes += 1
        for k in COUNTS:
            totals[k] += int(data.get(k) or 0)
        totals["results"] += data.get("results") or []
        if app.json:
            app.out.json_line({**data, "pass": passes, "worker": index})
        else:
            app.out.echo(f"{datetime.now().strftime('%H:%M:%S')} {counts_line(data)} (worker {index})")

    def on_event(text: str) -> None:
        click.echo(f"postroom: {text}", err=True)

    stop = asyncio.Event()
    pid_file = contextlib.ExitStack()
    daemon_pid_file: list[DaemonPidFile] = []  # made while the parent's session is open, entered later

    def on_all_ready() -> None:
        """Every worker has its store open: only now does the pid file say a daemon runs (a check of
        the store file by a worker then covers the store the daemon was started on)."""
        held = pid_file.enter_context(daemon_pid_file[0])
        if held.note:
            click.echo(f"postroom: {held.note}", err=True)
        if not app.json:
            app.out.echo(
                f"Spooler running on {directory} ({mode}, pid {os.getpid()}, "
                f"{workers} worker processes, event loop {loop}); Ctrl-C or SIGTERM stops it."
            )

    supervisor = Supervisor(
        command, workers, on_line=on_line, on_event=on_event, on_stop=stop.set, on_all_ready=on_all_ready
    )
    with supervisor.signals_handled():
        # The store is opened here first: one that cannot be opened is an error at once, before any
        # worker starts.
        session = app.session_when_usable(stop)
        if session is None:
            return  # stopped while the store could not be opened
        directory, mode, loop = session.profile.directory, session.mode, session.event_loop
        with session.daemon_pid_file(force=force):
            pass  # another daemon runs: refused (MAPI_E_BUSY) before any worker delivers anything
        daemon_pid_file.append(session.daemon_pid_file(force=force))
        app.close()  # the workers open their own sessions
        with pid_file:
            try:
                supervisor.run()
            except WorkersFailed as exc:
                raise MAPIError(
                    HResult.MAPI_E_CALL_FAILED, f"{exc}; stopped the others (their errors are above)"
                ) from None
    if app.json:
        app.out.json_line({"stopped": True, "passes": passes, "workers": workers, **totals})
    else:
        app.out.echo(f"Spooler stopped after {passes} pass(es): {counts_line(totals)}.")
