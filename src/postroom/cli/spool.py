"""`postroom spooler`: run the spooler over the outgoing queue, once or until stopped."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click

from ..session import Session
from ..spooler import PassSummary
from .context import App, json_option, pass_app

MAX_SLEEP = 5.0
MIN_SLEEP = 0.2
_TICK = 0.1


def serve(session: Session, on_pass: Callable[[PassSummary], None], max_sleep: float = MAX_SLEEP) -> int:
    """Pass after pass until SIGINT or SIGTERM; sleeps until the next due time (at most `max_sleep`).

    A signal never interrupts a pass: the pass finishes, then the loop ends. Returns the
    number of passes. (The protocol manager will replace this polling with store notifications.)
    """
    stop: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    passes = 0
    try:
        while not stop:
            on_pass(session.deliver())
            passes += 1
            due = session.store.next_due()
            delay = max_sleep
            if due is not None:
                delay = min(max_sleep, max(MIN_SLEEP, (due - datetime.now(UTC)).total_seconds()))
            deadline = time.monotonic() + delay
            while not stop and time.monotonic() < deadline:
                time.sleep(min(_TICK, max(0.0, deadline - time.monotonic())))
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return passes


def summary_data(summary: PassSummary) -> dict[str, Any]:
    return {
        "messages": len(summary.messages),
        "delivered": summary.delivered,
        "failed": summary.failed,
        "waiting": summary.waiting,
        "finished": summary.finished,
        "results": summary.messages,
    }


def summary_line(summary: PassSummary) -> str:
    return (
        f"{len(summary.messages)} message(s): {summary.delivered} recipient(s) delivered, "
        f"{summary.failed} failed, {summary.waiting} waiting"
    )


@click.command()
@click.option("--once", is_flag=True, help="One pass over the due messages, then exit.")
@json_option
@pass_app
@click.pass_context
def spooler(ctx: click.Context, app: App, once: bool) -> None:
    """Run the spooler over the outgoing queue.

    The spooler takes submitted messages from the queue, oldest first, and offers each
    recipient to the transports in transport order.

    With --once: one pass, a summary, exit code 1 if any recipient failed. Without it: run until
    Ctrl-C or SIGTERM, waking up when the next queued message is due (at least every 5 s).
    """
    session = app.session()
    if once:
        summary = session.deliver()
        if app.json:
            app.out.document(summary_data(summary))
        else:
            app.out.echo(summary_line(summary))
            for m in summary.messages:
                outcome = f"finished ({m.finished})" if m.finished else "waiting: " + ("; ".join(m.errors) or "-")
                app.out.echo(
                    f"  message {m.message_id}: {m.delivered} delivered, {m.failed} failed, "
                    f"{m.waiting} waiting; {outcome}"
                )
        if summary.failed:
            ctx.exit(1)
        return

    totals = PassSummary()

    def on_pass(summary: PassSummary) -> None:
        totals.messages.extend(summary.messages)
        if summary.messages and not app.json:
            app.out.echo(f"{datetime.now().strftime('%H:%M:%S')} {summary_line(summary)}")

    if not app.json:
        app.out.echo(f"Spooler running on {session.profile.directory}; Ctrl-C or SIGTERM stops it.")
    passes = serve(session, on_pass)
    if app.json:
        app.out.document({"passes": passes, **summary_data(totals)})
    else:
        app.out.echo(f"Spooler stopped after {passes} pass(es): {summary_line(totals)}.")
