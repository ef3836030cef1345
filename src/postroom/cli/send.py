"""`postroom send`: compose a message in the Outbox, submit it, and (online) deliver it at once."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from .. import Draft, EventKind, Mode, PassSummary, Session
from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError, NotFound
from ..mapi.flags import RecipientType, StatusCode
from ..mapi.message import MessageData, Recipient
from .context import App, CliError, interruptible, json_option, pass_app
from .messages import recipient_rows, waiting_detail
from .output import when


def read_input(path: str, what: str) -> bytes:
    """The bytes of FILE, or of stdin for `-`; an unreadable file is a one-line error naming it."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from exc


def _copy_eml(draft: Draft, data: MessageData, with_recipients: bool) -> None:
    for tag, value in data.props.items():
        if tag not in T.STORE_SETS:
            draft.data.props[tag] = value
    if with_recipients:
        for r in data.recipients:
            props = {k: v for k, v in r.props.items() if k not in (T.PR_ROWID, T.PR_RESPONSIBILITY)}
            draft.data.recipients.append(Recipient(props=props, row_id=len(draft.data.recipients)))
    for att in data.attachments:
        att.num = len(draft.data.attachments)
        draft.data.attachments.append(att)
    draft.data.original = data.original  # the file's exact bytes: sent as they are while unedited


def _check_routes(session: Session, recipients: list[Recipient]) -> None:
    """Refuse recipients whose address type no logged-on transport registers."""
    addresses = list(dict.fromkeys(r.address for r in recipients))
    answers = session.route(addresses)
    unknown = list(dict.fromkeys(a.address.address_type for a in answers if not a.offers and not a.skipped))
    if unknown:
        known = ", ".join(session.enum_adr_types()) or "none"
        what = "address type" if len(unknown) == 1 else "address types"
        failed = [r.display_name for r in session.status() if r.status_code & StatusCode.FAILURE]
        hint = f"; not available: {', '.join(failed)} (see `postroom status`)" if failed else ""
        raise CliError(f"no transport in this profile takes {what} {', '.join(unknown)} (known: {known}){hint}")


_CLOCK = re.compile(r"^(?:(today|tomorrow)\s+)?(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s+(today|tomorrow))?$", re.IGNORECASE)
_DELAY_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)
_DELAY = re.compile(r"^(?:\d+(?:\.\d+)?\s*[smhd]\s*)+$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DEFER = timedelta(days=366)


def _bad_time(option: str, message: str) -> MAPIError:
    """A refused --at/--delay: one line with its MAPI code, exit 2, nothing submitted."""
    return MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"{option}: {message}")


def parse_at(text: str, now: datetime | None = None) -> datetime:
    """--at: ISO 8601 (`2026-11-22T15:00`, local time unless it has an offset) or `HH:MM`.

    `HH:MM` is the next time the clock shows it: today, or tomorrow when that has passed
    (`HH:MM today` / `HH:MM tomorrow` say which). Returns an aware UTC datetime in the future;
    anything else is MAPI_E_INVALID_PARAMETER.
    """
    local_now = (now or datetime.now(UTC)).astimezone()
    raw = text.strip()
    clock = _CLOCK.match(raw)
    if clock:
        day_word = (clock.group(1) or clock.group(5) or "").lower()
        hour, minute, second = int(clock.group(2)), int(clock.group(3)), int(clock.group(4) or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise _bad_time("--at", f"{text!r} is not a time of day (HH:MM)")
        naive = local_now.replace(tzinfo=None).replace(hour=hour, minute=minute, second=second, microsecond=0)
        if day_word == "tomorrow" or (not day_word and naive <= local_now.replace(tzinfo=None)):
            naive += timedelta(days=1)
        when = naive.astimezone()  # local wall-clock time
    else:
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise _bad_time("--at", f"{text!r} is neither an ISO 8601 time (2026-11-22T15:00) nor HH:MM") from None
        try:
            # The ends of the calendar (year 1 at +14:00, year 9999 at -14:00) have no UTC time.
            when = parsed if parsed.tzinfo is not None else parsed.astimezone()
            when = when.astimezone(UTC)
        except (OverflowError, ValueError, OSError):
            raise _bad_time("--at", f"{text!r} is out of range") from None
    when = when.astimezone(UTC)
    if when <= local_now:
        raise _bad_time("--at", f"{text!r} is in the past ({when.astimezone():%Y-%m-%d %H:%M:%S})")
    if when - local_now > MAX_DEFER:
        raise _bad_time("--at", f"{text!r} is more than a year ahead")
    return when


def parse_delay(text: str) -> timedelta:
    """--delay: `90s`, `5m`, `2h`, `1d`, or a sum such as `1h30m`; else MAPI_E_INVALID_PARAMETER."""
    raw = text.strip()
    if not _DELAY.match(raw):
        example = "use a number and a unit, e.g. 90s, 5m, 2h, 1d or 1h30m"
        raise _bad_time("--delay", f"{text!r} is not a duration: {example}")
    seconds = sum(float(n) * _UNIT_SECONDS[unit.lower()] for n, unit in _DELAY_PART.findall(raw))
    if seconds <= 0:
        raise _bad_time("--delay", f"{text!r} is no delay at all")
    # Compared as seconds: a timedelta of 999999999999999 s cannot even be made.
    if seconds > MAX_DEFER.total_seconds():
        raise _bad_time("--delay", f"{text!r} is more than a year")
    return timedelta(seconds=seconds)


@click.command()
@click.option("--to", multiple=True, metavar="ADDRESS", help="A To recipient; repeatable.")
@click.option("--cc", multiple=True, metavar="ADDRESS", help="A Cc recipient; repeatable.")
@click.option("--bcc", multiple=True, metavar="ADDRESS", help="A Bcc recipient; repeatable.")
@click.option(
    "--from",
    "from_",
    default=None,
    metavar="ADDRESS",
    help='Send as ADDRESS ("Name <a@b>" or a@b): the From, ahead of the account\'s from_address and '
    "`postroom identity` (PR_SENDER_*, PR_SENT_REPRESENTING_*).",
)
@click.option("--subject", "-s", default=None, help="The subject (PR_SUBJECT).")
@click.option("--body", "-b", default=None, help="The text body (PR_BODY).")
@click.option("--body-file", default=None, metavar="FILE", help="Read the body from FILE (UTF-8; '-' = stdin).")
@click.option("--attach", "-a", multiple=True, metavar="FILE", help="Attach FILE by value; repeatable.")
@click.option(
    "--eml",
    default=None,
    metavar="FILE",
    help="Build the message from an RFC 5322 file ('-' = stdin); its To/Cc/Bcc are the recipients "
    "unless --to/--cc/--bcc are given. It goes out as the file's own bytes (Bcc removed, a missing "
    "Date or Message-ID added) unless other options change it.",
)
@click.option("--later", is_flag=True, help="Only submit: leave the message queued in the Outbox for the spooler.")
@click.option(
    "--at",
    "at_text",
    default=None,
    metavar="TIME",
    help="Send it at TIME (PR_DEFERRED_SEND_TIME): ISO 8601 such as 2026-11-22T15:00 (local time "
    "unless an offset is given), or HH:MM (today, or tomorrow when that time has passed).",
)
@click.option(
    "--delay",
    "delay_text",
    default=None,
    metavar="DURATION",
    help="Send it after DURATION: 90s, 5m, 2h, 1d (or sums such as 1h30m).",
)
@click.option(
    "--delivery-report", is_flag=True, help="Ask for a delivery report (PR_ORIGINATOR_DELIVERY_REPORT_REQUESTED)."
)
@click.option(
    "--no-ndr", is_flag=True, help="No NDR for failed recipients (PR_ORIGINATOR_NON_DELIVERY_REPORT_REQUESTED false)."
)
@click.option(
    "--delete-after-submit",
    is_flag=True,
    help="Delete the message once handled instead of moving it to Sent Items (PR_DELETE_AFTER_SUBMIT).",
)
@json_option
@pass_app
@click.pass_context
def send(
    ctx: click.Context,
    app: App,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    from_: str | None,
    subject: str | None,
    body: str | None,
    body_file: str | None,
    attach: tuple[str, ...],
    eml: str | None,
    later: bool,
    at_text: str | None,
    delay_text: str | None,
    delivery_report: bool,
    no_ndr: bool,
    delete_after_submit: bool,
) -> None:
    """Compose a message in the Outbox and submit it.

    The Outbox is the folder where a submitted message waits until the spooler has offered
    each recipient to a transport (the component that delivers for an address type).

    ADDRESS is ADRTYPE:address (FAX:+15551234), "Name <ADRTYPE:address>", or a bare e-mail
    address, which means address type SMTP. An address type no transport of the profile
    registers is refused before anything is submitted.

    The spooler runs before the command returns and one line per recipient says: delivered
    (by which transport), failed (why; an NDR, a non-delivery report, goes to your Inbox) or
    waiting (why, and the next try). Offline (`postroom offline`) only transports marked
    call-when-offline are called; the other recipients wait in the Outbox for
    `postroom sendreceive`. Exit code 0 when every recipient was delivered or is waiting, 1
    when any failed.

    With --at or --delay the message is submitted now and sent at that time by a running
    `postroom spooler` (or the next `spooler --once` after it); `postroom cancel ID` before
    then takes it back.
    """
    if body is not None and body_file is not None:
        raise click.UsageError("give --body or --body-file, not both", ctx)
    if body_file == "-" and eml == "-":
        raise click.UsageError("only one of --body-file and --eml can read stdin ('-')", ctx)
    if at_text is not None and delay_text is not None:
        raise click.UsageError("give --at or --delay, not both", ctx)
    deferred: datetime | None = None
    if at_text is not None:
        deferred = parse_at(at_text)
    elif delay_text is not None:
        deferred = datetime.now(UTC) + parse_delay(delay_text)
    body_text = body
    if body_file is not None:
        raw = read_input(body_file, "--body-file")
        try:
            body_text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(f"cannot read --body-file {body_file!r}: not UTF-8 text ({exc.reason})") from exc
    eml_data = None
    if eml is not None:
        from .. import mime

        eml_data = mime.from_mime(read_input(eml, "--eml file"), submission=True)

    session = app.session()
    draft = session.create_message()
    if eml_data is not None:
        _copy_eml(draft, eml_data, with_recipients=not (to or cc or bcc))
    if from_ is not None:
        draft.set_sender(from_)
    if subject is not None:
        draft.subject = subject
    if body_text is not None:
        draft.body = body_text
    for kind, addresses in ((RecipientType.TO, to), (RecipientType.CC, cc), (RecipientType.BCC, bcc)):
        for address in addresses:
            draft.add_recipient(address, kind=kind)
    for path in attach:
        draft.attach_file(path)
    if delivery_report:
        draft.set(T.PR_ORIGINATOR_DELIVERY_REPORT_REQUESTED, True)
    if no_ndr:
        draft.set(T.PR_ORIGINATOR_NON_DELIVERY_REPORT_REQUESTED, False)
    if delete_after_submit:
        draft.set(T.PR_DELETE_AFTER_SUBMIT, True)
    if deferred is not None:
        draft.set(T.PR_DEFERRED_SEND_TIME, deferred)
    if not draft.data.recipients:
        raise click.UsageError("no recipients: give --to, --cc or --bcc (or an --eml file with To/Cc/Bcc)", ctx)
    _check_routes(session, draft.data.recipients)

    mid = draft.submit()
    count = len(draft.data.recipients)
    if deferred is not None:
        if app.json:
            app.out.document(
                {
                    "message_id": mid,
                    "submitted": True,
                    "spooler_ran": False,
                    "deferred_until": deferred,
                    "reason": "deferred send (PR_DEFERRED_SEND_TIME)",
                }
            )
            return
        app.out.echo(
            f"Message {mid} submitted ({count} recipient(s)); it will be sent at {when(deferred)}; "
            f"`postroom cancel {mid}` before then to undo."
        )
        app.out.echo("A running `postroom spooler` sends it then (or `postroom spooler --once` after that time).")
        return
    if later:
        if app.json:
            app.out.document({"message_id": mid, "submitted": True, "spooler_ran": False, "reason": "--later"})
            return
        app.out.echo(f"Message {mid} submitted ({count} recipient(s)); queued in the Outbox (--later).")
        app.out.echo("Run `postroom spooler --once` to deliver it, `postroom queue` to see it.")
        return

    summary = interruptible(app, lambda stop: session.deliver(stop=stop))
    failed = _report_delivery(app, session, mid, draft.data.recipients, summary)
    if failed:
        ctx.exit(1)


def _report_delivery(
    app: App, session: Session, mid: int, draft_recipients: list[Recipient], summary: PassSummary
) -> bool:
    """Print what became of each recipient; True when any failed."""
    result = next((m for m in summary.messages if m.message_id == mid), None)
    recipients = recipient_rows(session.delivery_report(mid, draft_recipients, summary))
    try:
        events = session.events(mid)
    except NotFound:  # deleted once handled (PR_DELETE_AFTER_SUBMIT)
        events = []
    reports = [e.detail for e in events if e.kind == EventKind.REPORT]
    if recipients:
        failed = any(r["state"] in ("failed", "expired") for r in recipients)
    else:
        failed = bool(result and result.failed)
    finished = result.finished if result is not None else None
    offline = any(r["state"] == "waiting" for r in recipients) and session.mode is Mode.OFFLINE
    if app.json:
        doc: dict[str, Any] = {
            "message_id": mid,
            "submitted": True,
            "spooler_ran": True,
            "mode": session.mode,
            "finished": finished,
            "recipients": recipients,
            "reports": reports,
        }
        if result is not None and finished == "deleted":
            doc["counts"] = {"delivered": result.delivered, "failed": result.failed, "waiting": result.waiting}
        app.out.document(doc)
        return failed
    app.out.echo(f"Message {mid} submitted ({len(draft_recipients)} recipient(s)).")
    if recipients:
        rows = []
        for r in recipients:
            if r["state"] == "delivered" and r["transport"] is None:  # a resend's MAPI_SUBMITTED row
                detail = "earlier (a resend: shown in the headers, not sent again)"
            elif r["state"] == "delivered":
                detail = f"by {r['transport']}" + (f": {r['report_text']}" if r["report_text"] else "")
            elif r["state"] == "waiting":
                detail = waiting_detail(r)
            else:
                detail = str(r["report_text"] or "no reason given")
            rows.append([r["state"], r["address"], detail])
        app.out.table(["STATE", "RECIPIENT", "DETAIL"], rows, state_column=0)
    elif result is not None:
        app.out.echo(f"  delivered {result.delivered}, failed {result.failed}, waiting {result.waiting}")
    for text in reports:
        app.out.echo(f"Report: {text}")
    if finished == "moved":
        app.out.echo("The message is now in Sent Items.")
    elif finished == "deleted":
        app.out.echo("The message was deleted once handled (PR_DELETE_AFTER_SUBMIT).")
    if offline:
        app.out.echo("Offline: the waiting recipients stay in the Outbox until `postroom sendreceive` or `online`.")
    return failed
