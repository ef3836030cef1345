"""A message handed over with an SMTP envelope (the submission listener, a sendmail command).

Such a message comes as exact bytes plus an envelope: the reverse path (`MAIL FROM`) and the
forward paths (`RCPT TO`). The envelope, not the header, says whom to deliver to: a Bcc
recipient is only in the envelope, and a mailing-list copy names none of its readers in `To`.
In MAPI's words (spec §6.5) the header rows are shown but not sent again (MAPI_SUBMITTED), and
each forward path is an envelope-only row (MAPI_P1), exactly as `sendmail -t` treats a resend.
Neither changes what the header-dependent fingerprint of the original sees (original.py), so
the message still goes out as the bytes it came in.

Two provider-defined properties mark where the message came from and who gets reports about it
(spooler/sender_reports.py): PR_POSTROOM_SUBMISSION_SOURCE ("smtp" from the listener, "sendmail"
from the sendmail command; both may set it) and PR_POSTROOM_ENVELOPE_FROM (the reverse path,
"" for the null sender `<>`). What the sender asked of those reports (RFC 3461 DSN parameters)
goes on the message and its envelope rows too (mapi/dsn.py).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, make_msgid
from enum import StrEnum

from . import mime
from .mapi import tags as T
from .mapi.dsn import DsnReturn, MessageDsn, RecipientDsn
from .mapi.entryid import one_off_entry_id, search_key
from .mapi.flags import MAPI_P1, MAPI_SUBMITTED, RecipientType
from .mapi.message import MessageData, Recipient

__all__ = [
    "ReportAction",
    "StatusLine",
    "SubmissionSource",
    "dsn_bytes",
    "envelope_message",
    "is_report",
    "report_to_sender",
]

_MAPI_MAILUSER = 6


class SubmissionSource(StrEnum):
    """Who handed a message over with an envelope (PR_POSTROOM_SUBMISSION_SOURCE)."""

    SMTP = "smtp"  # the SMTP submission listener
    SENDMAIL = "sendmail"  # the sendmail-compatible command


def _envelope_row(address: str, row_id: int, dsn: RecipientDsn | None) -> Recipient:
    props: dict[int, object] = {
        T.PR_DISPLAY_NAME: address,
        T.PR_ADDRTYPE: "SMTP",
        T.PR_EMAIL_ADDRESS: address,
        T.PR_RECIPIENT_TYPE: int(RecipientType.BCC) | MAPI_P1,
        T.PR_ENTRYID: one_off_entry_id(address, "SMTP", address),
        T.PR_SEARCH_KEY: search_key("SMTP", address),
        T.PR_OBJECT_TYPE: _MAPI_MAILUSER,
    }
    if dsn is not None:
        props.update(dsn.props())
    return Recipient(props=props, row_id=row_id)


def envelope_message(
    raw: bytes,
    mail_from: str,
    rcpt_to: Sequence[str],
    source: SubmissionSource | str,
    dsn: MessageDsn | None = None,
    rcpt_dsn: Mapping[str, RecipientDsn] | None = None,
) -> MessageData:
    """The MAPI message for `raw` sent to the envelope's forward paths, keeping `raw` as its
    original: header recipients become MAPI_SUBMITTED rows, each forward path a MAPI_P1 row.
    `dsn` and `rcpt_dsn` (by forward path) are the RFC 3461 parameters MAIL and RCPT gave."""
    md = mime.from_mime(raw, submission=True)
    for row in md.recipients:
        row[T.PR_RECIPIENT_TYPE] = int(row.get(T.PR_RECIPIENT_TYPE) or RecipientType.TO) | MAPI_SUBMITTED
    for address in dict.fromkeys(rcpt_to):
        md.recipients.append(_envelope_row(address, len(md.recipients), (rcpt_dsn or {}).get(address)))
    md.props[T.PR_POSTROOM_SUBMISSION_SOURCE] = str(SubmissionSource(source))
    md.props[T.PR_POSTROOM_ENVELOPE_FROM] = mail_from
    if dsn is not None:
        md.props.update(dsn.props())
    return md


# --- reports to the envelope sender (RFC 3464) -------------------------------------------------------
class ReportAction(StrEnum):
    """What a delivery status notification says of a recipient (RFC 3464 §2.3.3 `Action`)."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"  # handed on to a server that will not confirm final delivery


_DEFAULT_STATUS = {
    ReportAction.FAILED: "5.0.0",
    ReportAction.DELAYED: "4.0.0",
    ReportAction.DELIVERED: "2.0.0",
    ReportAction.RELAYED: "2.0.0",
}
_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_HUMAN = {
    ReportAction.FAILED: ("Undelivered Mail Returned to Sender", "could not be delivered to"),
    ReportAction.DELAYED: ("Delayed Mail (still being retried)", "has not yet been delivered to"),
    ReportAction.DELIVERED: ("Successful Mail Delivery Report", "was delivered to"),
    ReportAction.RELAYED: ("Successful Mail Delivery Report", "was handed on (no further reports) for"),
}


@dataclass(frozen=True)
class StatusLine:
    """One recipient of a delivery status notification."""

    address: str
    action: ReportAction
    text: str = ""  # the server's or transport's own words
    when: datetime | None = None
    original_recipient: str | None = None  # RCPT's ORCPT, "rfc822;user@example.org"


def is_report(md: MessageData) -> bool:
    """Whether `md` is itself a report (a DSN, an MDN, a MAPI report, an auto-submitted message):
    nothing is ever reported to its sender, so two mailers never bounce reports at each other."""
    if md.message_class.upper().startswith("REPORT."):
        return True
    raw = md.original.read_all() if md.original is not None else b""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].lower()
    if b"multipart/report" in head:
        return True
    auto = re.search(rb"^auto-submitted:[ \t]*([a-z-]+)", head, re.MULTILINE)
    return auto is not None and auto.group(1) != b"no"


def report_to_sender(md: MessageData) -> str | None:
    """The envelope sender that reports about `md` also go to: None unless it was handed over with
    an envelope (listener, sendmail), has a sender that is not `<>`, and is no report itself."""
    if not md.get(T.PR_POSTROOM_SUBMISSION_SOURCE):
        return None
    sender = str(md.get(T.PR_POSTROOM_ENVELOPE_FROM) or "").strip().strip("<>")
    if not sender or "@" not in sender or is_report(md):
        return None
    return sender


def dsn_bytes(original: MessageData, sender: str, lines: Sequence[StatusLine], now: datetime, mta: str) -> bytes:
    """An RFC 3464 `multipart/report; report-type=delivery-status` to `sender` about `original`: a
    text part for people, the machine-readable status, and the original's header block (the whole
    original instead, in a failure report, when MAIL said RET=FULL). The ENVID and each ORCPT the
    sender gave are echoed (Original-Envelope-Id, Original-Recipient)."""
    action = lines[0].action
    subject, verb = _HUMAN[action]
    boundary = f"{uuid.uuid4().hex}/{mta}"
    human = [
        f"This is the mail system at {mta}.",
        "",
        f"Your message {verb} the following recipient(s):",
        "",
    ]
    for line in lines:
        human.append(f"<{line.address}>: {line.text or action.value}")
    human.append("")
    envid = original.get(T.PR_POSTROOM_DSN_ENVID)
    status = [f"Original-Envelope-Id: {envid}"] if isinstance(envid, str) and envid else []
    status += [f"Reporting-MTA: dns; {mta}", f"Arrival-Date: {format_datetime(_submitted(original, now))}", ""]
    for line in lines:
        found = _ENHANCED.search(line.text)
        if line.original_recipient:
            kind, _, address = line.original_recipient.partition(";")
            status.append(f"Original-Recipient: {kind}; {address}")
        status += [
            f"Final-Recipient: rfc822; {line.address}",
            f"Action: {line.action.value}",
            f"Status: {found.group(1) if found else _DEFAULT_STATUS[line.action]}",
        ]
        if line.text:
            status.append("Diagnostic-Code: x-postroom; " + " ".join(line.text.split()))
        status.append(f"Last-Attempt-Date: {format_datetime(line.when or now)}")
        status.append("")
    raw = original.original.read_all() if original.original is not None else b""
    full = action is ReportAction.FAILED and original.get(T.PR_POSTROOM_DSN_RET) == DsnReturn.FULL and bool(raw)
    headers = raw if full else re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0] if raw else b""
    crlf = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: {make_msgid(domain=mta)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *human,
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        *status,
        f"--{boundary}",
        _returned_part(action, full),
        "Content-Type: message/rfc822" if full else "Content-Type: text/rfc822-headers",
        "",
    ]
    tail = f"\r\n--{boundary}--\r\n".encode()
    returned = re.sub(rb"\r?\n", b"\r\n", headers)
    if not returned.endswith(b"\r\n"):
        returned += b"\r\n"  # the part ends with its last line; the boundary's CRLF is its own
    return "\r\n".join(crlf).encode("utf-8") + b"\r\n" + returned + tail


def _returned_part(action: ReportAction, full: bool) -> str:
    if full:
        return "Content-Description: Undelivered Message"
    if action is ReportAction.FAILED:
        return "Content-Description: Undelivered Message Headers"
    return "Content-Description: Message Headers"


def _submitted(md: MessageData, now: datetime) -> datetime:
    when = md.get(T.PR_CLIENT_SUBMIT_TIME)
    return when if isinstance(when, datetime) else now
