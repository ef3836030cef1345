"""`postroom spooler`: run the spooler over the outgoing queue, once or as the daemon until stopped."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from .. import ListenerSettings, PassSummary, Profile
from .context import App, CliError, interruptible, json_option, pass_app, stop_on_signals
from .logs import configure_logging, log_options

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
        with daemon_session.daemon_pid_file(force=force) as held:
            if held.note:
                click.echo(f"postroom: {held.note}", err=True)
            if not app.json:
                app.out.echo(
                    f"Spooler running on {daemon_session.profile.directory} ({daemon_session.mode}, "
                    f"pid {os.getpid()}, event loop {daemon_session.event_loop}); Ctrl-C or SIGTERM stops it."
                )
            page = _start_page(daemon_session.profile, http_at) if http_at else None
            try:
                daemon_session.run_spooler(stop, on_pass=on_pass, smtp=smtp, on_listening=listening)
            finally:
                if page is not None:
                    page.stop()
    if app.json:  # the last line: the totals
        app.out.json_line({"stopped": True, "passes": passes, **summary_data(totals)})
    else:
        app.out.echo(f"Spooler stopped after {passes} pass(es): {summary_line(totals)}.")


def _start_page(profile: Profile, http_at: str) -> BackgroundPage:
    """The status page on a thread of its own beside the daemon, with its own session."""
    from ..web.server import BackgroundPage, Listen, parse_listen  # start-up: uvicorn only for --http

    host, port = parse_listen(http_at)
    page = BackgroundPage(profile, Listen(host, port))
    page.start()
    click.echo(f"postroom: status page on {page.listen.url}", err=True)
    return page
