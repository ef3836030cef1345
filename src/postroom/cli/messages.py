"""Looking at the store: the outgoing queue, folders, messages, their history; export as RFC 5322."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .. import Mode, QueueEntry, QueueState, RecipientReport, WaitKind
from ..mapi import tags as T
from ..mapi.flags import MessageFlags
from ..mapi.message import MessageData
from .context import App, F, json_option, pass_app
from .output import jsonable, next_try, progress_line, when
from .props import message_props, prop_rows


def lease_ran_out(q: QueueEntry, now: datetime) -> bool:
    """Locked, but the claim was not renewed in time: its spooler stopped; the next one takes it over."""
    return q.locked and q.lease_until is not None and q.lease_until < now


def queue_state(q: QueueEntry, now: datetime) -> str:
    """queued / held / locked by a spooler / being taken back, in words."""
    if q.state is QueueState.HELD:
        return "held"
    if lease_ran_out(q, now):
        return "being taken back"
    if q.locked:
        return f"locked by {q.lease_owner}" if q.lease_owner else "locked"
    return q.state.value


def waiting_text(q: QueueEntry, now: datetime, mode: Mode = Mode.OFFLINE) -> str:
    """Why a queued message is not being sent now, and until when."""
    if q.state is QueueState.HELD:
        return f"held: {q.hold_reason or 'by an operator'} (`postroom release {q.id}`)"
    if lease_ran_out(q, now):
        return f"being taken back: the lease of {q.lease_owner} ran out (`cancel`, `retry` act at once)"
    if q.locked:
        return "being delivered now"
    if q.waiting_for is WaitKind.SEND_RECEIVE:
        of = f" of {', '.join(q.waiting_transports)}" if q.waiting_transports else ""
        if mode is Mode.OFFLINE:
            return f"waiting for Send/Receive{of} (offline)"
        return f"waiting for Send/Receive{of} (parked while offline; `postroom sendreceive` sends it)"
    if q.waiting_for is WaitKind.UNCONFIGURED:
        names = ", ".join(q.waiting_transports) or "a transport"
        again = next_try(q.next_attempt, now)
        return f"waiting for {names} to be configured (`postroom status`); looked at again {again}"
    if q.waiting_for is WaitKind.PAUSED:
        names = ", ".join(q.waiting_transports) or "its transport"
        return f"waiting for {names} to work again (paused after repeated network errors; one message probes it)"
    if q.waiting_for is WaitKind.DEFERRED:
        return "kept by the transport until it reports (deferred)"
    if q.next_attempt is None or q.next_attempt <= now:
        return "due now"
    if q.waiting_for is WaitKind.SCHEDULED:
        return f"deferred send at {when(q.next_attempt)}"
    by = f" ({', '.join(q.waiting_transports)})" if q.waiting_transports else ""
    return f"retry at {next_try(q.next_attempt, now)}{by}"


def recipient_rows(reports: Iterable[RecipientReport]) -> list[dict[str, Any]]:
    """The face's recipient report as plain data, with the next try in words."""
    now = datetime.now(UTC)
    out = []
    for r in reports:
        item = jsonable(r)
        if r.state == "waiting":
            item["next_try"] = "at the next Send/Receive" if r.at_send_receive else next_try(r.next_attempt, now)
        out.append(item)
    return out


def waiting_detail(r: dict[str, Any]) -> str:
    """'waiting for work: 450 4.2.1 mailbox busy; next try at 12:00:00' for a waiting recipient."""
    who = f"waiting for {r['waiting_for']}: " if r.get("waiting_for") else ""
    return f"{who}{r['why']}; next try {r['next_try']}"


@click.command()
@json_option
@pass_app
def queue(app: App) -> None:
    """Show the outgoing queue.

    The submitted messages the spooler has not finished, oldest first.

    For each: its state (queued, held by an operator, or locked by the spooler delivering it
    now), what it waits for (due now; a retry at a time; Send/Receive, while offline, which
    is not a failure; a deferred send time), attempts so far, recipients still pending out
    of all, and the last error. Change it with `hold`, `release`, `retry`, `cancel`.
    """
    session = app.session()
    entries = session.queue()
    now = datetime.now(UTC)
    mode = session.mode
    if app.json:
        app.out.document([{**jsonable(q), "waiting": waiting_text(q, now, mode)} for q in entries])
        return
    app.out.table(
        ["ID", "SUBMITTED", "STATE", "WAITING FOR", "ATTEMPTS", "PENDING", "LAST ERROR", "SUBJECT"],
        [
            [
                str(q.id),
                when(q.submit_time),
                queue_state(q, now),
                waiting_text(q, now, mode),
                str(q.attempts),
                f"{q.pending}/{q.recipients}",
                q.last_error or "-",
                q.subject,
            ]
            for q in entries
        ],
        empty="(the outgoing queue is empty)",
    )


@click.command()
@json_option
@pass_app
def folders(app: App) -> None:
    """List the folders of the message store.

    Inbox, Outbox, Sent Items, … with their message counts.
    """
    items = app.session().folders()
    if app.json:
        app.out.document(
            [
                {
                    "id": f.id,
                    "name": f.name,
                    "role": f.role.value if f.role else None,
                    "parent_id": f.parent_id,
                    "count": f.count,
                    "entry_id": f.entry_id,
                }
                for f in items
            ]
        )
        return
    app.out.table(["NAME", "ID", "COUNT"], [[f.name, str(f.id), str(f.count)] for f in items])


@click.command("list")
@click.argument("folder")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many messages.")
@json_option
@pass_app
def list_(app: App, folder: str, limit: int | None) -> None:
    """List the messages in a folder.

    FOLDER is a name such as Inbox or "Sent Items", or a folder ID.
    """
    messages = app.session().list_messages(folder, limit)
    if app.json:
        app.out.document(messages)
        return
    app.out.table(
        ["ID", "CLASS", "SUBJECT", "FROM", "TO", "TIME"],
        [
            [str(m.id), m.message_class, m.subject, m.sender, m.display_to, when(m.delivery_time or m.submit_time)]
            for m in messages
        ],
        empty="(no messages)",
    )


def _flags(value: int) -> str:
    names = [f.name.lower() for f in MessageFlags if f.name and f.value and value & f.value]
    return ", ".join(names) or "-"


def _originator(message: MessageData) -> str:
    name = message.get(T.PR_SENT_REPRESENTING_NAME) or message.get(T.PR_SENDER_NAME) or ""
    address = message.get(T.PR_SENT_REPRESENTING_EMAIL_ADDRESS) or message.get(T.PR_SENDER_EMAIL_ADDRESS) or ""
    adrtype = message.get(T.PR_SENT_REPRESENTING_ADDRTYPE) or message.get(T.PR_SENDER_ADDRTYPE) or ""
    if not address:
        return str(name) or "-"
    full = f"{adrtype}:{address}" if adrtype and adrtype != "SMTP" else str(address)
    return f"{name} <{full}>" if name and name != address else full


def _show_props(app: App, message: MessageData, mid: int) -> None:
    if app.json:
        app.out.document({"message_id": mid, **message_props(message)})
        return
    columns = ["NAME", "TAG", "TYPE", "VALUE"]

    def dump(msg: MessageData, label: str) -> None:
        app.out.table(columns, prop_rows(msg.props), title=label)
        for r in msg.recipients:
            app.out.echo()
            app.out.table(columns, prop_rows(r.props), title=f"{label}, recipient {r.row_id}")
        for a in msg.attachments:
            app.out.echo()
            app.out.table(columns, prop_rows(a.props), title=f"{label}, attachment {a.num}")
            if a.embedded is not None:
                app.out.echo()
                dump(a.embedded, f"{label}, attachment {a.num}, embedded message")

    dump(message, f"Message {mid}")
    headers = message.get(T.PR_TRANSPORT_MESSAGE_HEADERS)
    if headers:  # the table cuts long text short: the Internet headers in full, as they came
        app.out.echo()
        app.out.heading("PR_TRANSPORT_MESSAGE_HEADERS")
        for line in str(headers).splitlines():
            app.out.echo(f"  {line}")


@click.command()
@click.argument("ref", metavar="ID")
@click.option("--props", is_flag=True, help="Every property by name and tag, with type and value.")
@json_option
@pass_app
def show(app: App, ref: str, props: bool) -> None:
    """Show a message, its recipients' delivery states and its history.

    The envelope, the body, the recipients (with delivery state, transport and report
    text), the attachments and the history. ID is the message number or its hex entry ID.
    """
    session = app.session()
    mid = session.message_id(ref)
    message = session.open_message(mid)
    if props:
        _show_props(app, message, mid)
        return
    events = session.events(mid)
    where = session.message_folder(mid)
    folder = where.name if where is not None else None
    recipients = recipient_rows(session.recipient_report(mid))
    attachments = [
        {
            "num": a.num,
            "filename": a.filename,
            "mime_type": a.mime_type,
            "size": a.size if a.size is not None else a.get(T.PR_ATTACH_SIZE),
            "embedded": a.embedded is not None,
        }
        for a in message.attachments
    ]
    flags = int(message.get(T.PR_MESSAGE_FLAGS, 0) or 0)
    envelope = {
        "id": mid,
        "entry_id": session.entry_id(mid),
        "folder": folder,
        "message_class": message.message_class,
        "subject": message.subject,
        "from": _originator(message),
        "to": message.get(T.PR_DISPLAY_TO) or "",
        "cc": message.get(T.PR_DISPLAY_CC) or "",
        "bcc": message.get(T.PR_DISPLAY_BCC) or "",
        "submitted": message.submit_time,
        "delivered": message.get(T.PR_MESSAGE_DELIVERY_TIME),
        "message_id_header": message.get(T.PR_INTERNET_MESSAGE_ID),
        "flags": flags,
    }
    if app.json:
        app.out.document(
            {
                **envelope,
                "body": message.body,
                "recipients": recipients,
                "attachments": attachments,
                "history": events,
            }
        )
        return
    out = app.out
    out.heading(f"Message {mid}" + (f" in {folder}" if folder else ""))
    pairs = [
        ("Class", message.message_class),
        ("Subject", message.subject),
        ("From", envelope["from"]),
        ("To", str(envelope["to"])),
    ]
    pairs += [(k, str(envelope[k.lower()])) for k in ("Cc", "Bcc") if envelope[k.lower()]]
    pairs += [
        ("Submitted", when(message.submit_time)),
    ]
    if envelope["delivered"]:
        pairs.append(("Delivered", when(envelope["delivered"])))
    pairs += [
        ("Message-ID", str(envelope["message_id_header"] or "-")),
        ("Flags", _flags(flags)),
        ("Entry ID", session.entry_id(mid).hex().upper()),
    ]
    out.fields(pairs)
    out.echo()
    out.heading("Body")
    for line in (message.body or "(empty)").splitlines() or [""]:
        out.echo(f"  {line}")
    out.echo()
    out.table(
        ["#", "TYPE", "NAME", "ADDRESS", "STATE", "TRANSPORT", "REPORT"],
        [
            [
                str(r["row_id"]),
                r["type"],
                r["display_name"],
                r["address"],
                r["state"],
                (r["waiting_for"] if r["state"] == "waiting" else r["transport"]) or "-",
                waiting_detail(r) if r["state"] == "waiting" else r["report_text"] or "",
            ]
            for r in recipients
        ],
        title="Recipients",
        state_column=4,
    )
    out.echo()
    out.table(
        ["#", "NAME", "TYPE", "SIZE"],
        [
            [str(a["num"]), a["filename"] or "(embedded message)", a["mime_type"], str(a["size"] or "-")]
            for a in attachments
        ],
        title="Attachments",
    )
    out.echo()
    out.table(
        ["TIME", "EVENT", "TRANSPORT", "DETAIL"],
        [[when(e.time), e.kind, e.transport or "-", e.detail] for e in events],
        title="History",
    )


def _target_option(flag: str, dest: str, help_text: str, *, directory: bool = False) -> Callable[[F], F]:
    """An export target as a Path: a file (FILE), or with `directory` a directory (DIR)."""
    kind = click.Path(file_okay=not directory, dir_okay=directory, path_type=Path)
    return click.option(flag, dest, metavar="DIR" if directory else "FILE", type=kind, help=help_text)


@click.command()
@click.argument("ref", metavar="[ID]", required=False)
@click.option("--crlf", is_flag=True, help="CRLF line ends (as on the wire) instead of LF.")
@click.option("--bcc", "include_bcc", is_flag=True, help="Include a Bcc header.")
@click.option(
    "--eml",
    "exact",
    is_flag=True,
    help="The bytes the message arrived as (send --eml, IMAP, POP3), exactly, unless it was edited since.",
)
@_target_option("--msg", "msg_file", "Write the message as an Outlook .msg file (MS-OXMSG) to FILE.")
@_target_option("--tnef", "tnef_file", "Write the message as TNEF (a winmail.dat, MS-OXTNEF) to FILE.")
@click.option("--folder", metavar="F", help="With --mbox or --maildir: the folder to export (a name or ID).")
@_target_option("--mbox", "mbox_file", "Append every message of --folder to the mbox FILE (created if missing).")
@_target_option(
    "--maildir",
    "maildir_dir",
    "Deliver every message of --folder into the Maildir DIR (created if missing).",
    directory=True,
)
@json_option
@pass_app
def export(
    app: App,
    ref: str | None,
    crlf: bool,
    include_bcc: bool,
    exact: bool,
    msg_file: Path | None,
    tnef_file: Path | None,
    folder: str | None,
    mbox_file: Path | None,
    maildir_dir: Path | None,
) -> None:
    """Write a message as RFC 5322 (MIME) to stdout, or as a .msg or TNEF file; or a whole folder
    as an mbox file or a Maildir directory.

    \b
    For example: postroom export 3 > m.eml
                 postroom export 3 --msg m.msg
                 postroom export 3 --tnef winmail.dat
                 postroom export --folder Inbox --mbox inbox.mbox
    """
    from .. import mime

    if mbox_file is not None or maildir_dir is not None:
        _export_folder(app, ref, folder, mbox_file, maildir_dir)
        return
    if folder is not None:
        raise click.UsageError("--folder goes with --mbox or --maildir")
    if ref is None:
        raise click.UsageError("give a message ID (or --folder F with --mbox or --maildir)")
    session = app.session()
    mid = session.message_id(ref)
    if msg_file is not None or tnef_file is not None:
        if msg_file is not None and tnef_file is not None:
            raise click.UsageError("give one of --msg and --tnef")
        target = msg_file if msg_file is not None else tnef_file
        assert target is not None
        data = session.export_msg(mid) if msg_file is not None else session.export_tnef(mid)
        target.write_bytes(data)
        if app.json:
            app.out.document({"message_id": mid, "size": len(data), "msg" if msg_file else "tnef": str(target)})
        else:
            app.out.echo(f"wrote message {mid} to {target} ({len(data)} bytes)")
        return
    message = session.open_message(mid)
    kept = mime.original_bytes(message) if exact else None
    original = kept is not None
    if kept is not None:
        data = kept
    else:
        data = mime.to_bytes(message, include_bcc=include_bcc, linesep="\r\n" if crlf else "\n")
    if app.json:
        doc = {"message_id": mid, "size": len(data), "rfc822": data.decode("utf-8", "replace")}
        app.out.document({**doc, "original": original} if exact else doc)
        return
    if exact and not original:  # say so: a rendering is not the bytes that were asked for
        click.echo(
            f"postroom: note: message {mid} has no original bytes (made here, or edited since it arrived); "
            "this is its rendering from its properties",
            err=True,
        )
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _export_folder(
    app: App, ref: str | None, folder: str | None, mbox_file: Path | None, maildir_dir: Path | None
) -> None:
    if ref is not None:
        raise click.UsageError("--mbox and --maildir export a whole --folder, not a message ID")
    if folder is None:
        raise click.UsageError("--mbox and --maildir need --folder F")
    if mbox_file is not None and maildir_dir is not None:
        raise click.UsageError("give one of --mbox and --maildir")
    session = app.session()
    target = session.folder(folder)
    progress = progress_line(app.json)
    try:
        task = progress.add_task("exporting", total=None) if progress is not None else None

        def advance(written: int, total: int) -> None:
            if progress is not None:
                progress.update(task, completed=written, total=total)

        count = session.export_folder(target, mbox=mbox_file, maildir=maildir_dir, progress=advance)
    finally:
        if progress is not None:
            progress.stop()
    where = str(mbox_file if mbox_file is not None else maildir_dir)
    if app.json:
        app.out.document({"folder": target.name, "exported": count, "to": where})
    else:
        app.out.echo(f"exported {count} message(s) from {target.name} to {where}")
