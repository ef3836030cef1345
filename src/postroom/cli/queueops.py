"""Working on the outgoing queue: hold, release, retry, cancel, flush one transport."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from .. import Mode, QueueEntry, SendReceiveSummary, Session, TransportFlush, WaitKind
from .context import App, interruptible, json_option, pass_app


def _who_sends(session: Session) -> str:
    """The end of a "due now" line: who will send it."""
    if session.daemon_pid() is not None:
        return "the running spooler daemon sends it"
    if session.mode is Mode.OFFLINE:
        return "offline: `postroom sendreceive` sends it"
    return "`postroom spooler --once` sends it (no spooler daemon is running)"


def _scheduled(q: QueueEntry, now: datetime) -> bool:
    """A deferred send (--at/--delay) that is not due yet."""
    return q.waiting_for is WaitKind.SCHEDULED and q.next_attempt is not None and q.next_attempt > now


@click.command()
@click.argument("ref", metavar="ID")
@click.option("--reason", default=None, metavar="TEXT", help="Why it is held (shown by `postroom queue`).")
@json_option
@pass_app
def hold(app: App, ref: str, reason: str | None) -> None:
    """Hold a queued message: no spooler sends it until `postroom release ID`.

    ID is the message number or its hex entry ID. A message that is not in the queue is
    MAPI_E_NOT_IN_QUEUE; one a spooler is delivering right now is MAPI_E_UNABLE_TO_ABORT.
    """
    session = app.session()
    mid = session.message_id(ref)
    text = reason or "held by an operator"
    session.hold(mid, text)
    if app.json:
        app.out.document({"message_id": mid, "held": True, "reason": text})
        return
    app.out.echo(f"Message {mid} held ({text}); `postroom release {mid}` lets it go.")


@click.command()
@click.argument("ref", metavar="ID")
@click.option(
    "--as-delivered",
    is_flag=True,
    help="Do not send it again: it was delivered (e.g. the server's log shows a message whose "
    "outcome was unknown after a crash). Its pending recipients are marked delivered.",
)
@click.option("--note", default=None, metavar="TEXT", help="With --as-delivered: how you know (kept in its history).")
@json_option
@pass_app
def release(app: App, ref: str, as_delivered: bool, note: str | None) -> None:
    """Release a held message: it is due at once (or, with --as-delivered, finished as sent).

    A message that is not held is MAPI_E_INVALID_PARAMETER; one not in the queue
    MAPI_E_NOT_IN_QUEUE.
    """
    if note is not None and not as_delivered:
        raise click.UsageError("--note goes with --as-delivered")
    session = app.session()
    mid = session.message_id(ref)
    if as_delivered:
        finished = session.confirm_delivered(mid, note or "confirmed delivered by an operator")
        if app.json:
            app.out.document({"message_id": mid, "released": True, "delivered": True, "finished": finished})
            return
        where = {"moved": "moved to its sent-mail folder", "deleted": "deleted", "left": "left in its folder"}[finished]
        app.out.echo(f"Message {mid} marked delivered without sending it again ({where}).")
        return
    session.release(mid)
    if app.json:
        app.out.document({"message_id": mid, "released": True})
        return
    app.out.echo(f"Message {mid} released: it is due now; {_who_sends(session)}.")


@click.command()
@click.argument("ref", metavar="ID", required=False)
@click.option("--all", "all_", is_flag=True, help="Every waiting message (deferred sends not due yet stay).")
@json_option
@pass_app
@click.pass_context
def retry(ctx: click.Context, app: App, ref: str | None, all_: bool) -> None:
    """Make a waiting message due now, ignoring its retry backoff.

    `retry ID` for one message (a deferred send, --at/--delay, is then sent at once too);
    `retry --all` for every queued message that waits, except deferred sends whose time has
    not come. A held message must be released first (MAPI_E_INVALID_PARAMETER).
    """
    if (ref is None) == (not all_):
        raise click.UsageError("give a message ID or --all (not both)", ctx)
    session = app.session()
    if ref is not None:
        mid = session.message_id(ref)
        count = session.retry(mid)
        if app.json:
            app.out.document({"message_id": mid, "retried": count})
            return
        if count == 0:
            app.out.echo(f"Message {mid} is being delivered by a spooler right now; nothing to retry.")
            return
        app.out.echo(f"Message {mid} is due now; {_who_sends(session)}.")
        return
    done = session.retry_all()
    retried, scheduled = done.retried, done.left_scheduled
    if app.json:
        app.out.document({"retried": retried, "left_scheduled": scheduled})
        return
    if not retried:
        app.out.echo("No waiting message to retry.")
    else:
        app.out.echo(f"{len(retried)} message(s) due now ({', '.join(map(str, retried))}); {_who_sends(session)}.")
    if scheduled:
        app.out.echo(
            f"Left alone: {len(scheduled)} deferred send(s) not due yet ({', '.join(map(str, scheduled))}); "
            "`postroom retry ID` sends one now."
        )


@click.command()
@click.argument("ref", metavar="ID")
@json_option
@pass_app
def cancel(app: App, ref: str) -> None:
    """Take a submitted message back before it is sent (AbortSubmit).

    It leaves the outgoing queue and stays in the Outbox, unsent. A message already sent is
    MAPI_E_NOT_IN_QUEUE; one a spooler is delivering right now is MAPI_E_UNABLE_TO_ABORT.
    """
    session = app.session()
    mid = session.message_id(ref)
    session.cancel(mid)
    folder = session.message_folder(mid)
    where = folder.name if folder is not None else "its folder"
    if app.json:
        app.out.document({"message_id": mid, "cancelled": True, "folder": where})
        return
    app.out.echo(f"Message {mid} cancelled: out of the queue, unsent in {where}.")


def flush_data(summary: SendReceiveSummary) -> dict[str, Any]:
    return {
        "group": summary.group,
        "ok": summary.ok,
        "sent": summary.sent,
        "failed": summary.failed,
        "deferred": summary.deferred,
        "waiting": summary.waiting,
        "received": summary.received,
        "errors": summary.errors,
        "transports": summary.transports,
    }


def flush_counts(t: SendReceiveSummary | TransportFlush) -> str:
    """The counts of one line, or of the total: each recipient once, plus what was received."""
    return f"{t.sent} sent, {t.failed} failed, {t.deferred} deferred, {t.waiting} waiting, {t.received} received"


def flush_lines(summary: SendReceiveSummary) -> list[str]:
    """One line per transport (recipients nobody takes on a line of their own)."""
    lines = []
    for t in summary.transports:
        name = t.transport or "(no transport)"
        lines.append(f"  {name}: {flush_counts(t)}" + (f"; error: {t.error}" if t.error else ""))
    return lines


@click.command()
@click.option("--transport", "transport", required=True, metavar="NAME", help="The transport to flush.")
@json_option
@pass_app
@click.pass_context
def flush(ctx: click.Context, app: App, transport: str) -> None:
    """Send everything waiting for one transport now.

    Retry backoff is ignored and, offline, the transport is connected for the flush (as
    Send/Receive does for one transport). Exit code 1 when something failed.
    """
    session = app.session()
    summary = interruptible(app, lambda stop: session.flush(transport, stop=stop))
    if app.json:
        app.out.document(flush_data(summary))
    else:
        for line in flush_lines(summary):
            app.out.echo(line)
        app.out.echo(f"Flushed {summary.group}: {flush_counts(summary)}.")
        left = [q for q in session.queue() if q.waiting_for is WaitKind.RETRY]
        if left:
            app.out.echo(f"{len(left)} message(s) still wait for a retry (see `postroom queue`).")
    if not summary.ok:
        ctx.exit(1)
