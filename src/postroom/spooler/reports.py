"""Delivery and non-delivery reports (spec §7).

Class `REPORT.<original class>.NDR` / `.DR`. One recipient row per reported recipient
with the MAPI report properties; an NDR carries the original message, as submitted,
as an embedded message so it can be resent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..mapi import tags as T
from ..mapi.entryid import search_key
from ..mapi.flags import AttachMethod, NDRDiag, NDRReason
from ..mapi.message import Attachment, MessageData, Recipient

MAIL_DELIVERY_SYSTEM = "Mail Delivery System"
MAPI_MAILUSER = 6


@dataclass(frozen=True)
class ReportRow:
    """One recipient's outcome as a report states it."""

    recipient: Recipient
    time: datetime
    delivered: bool
    reason: int = NDRReason.TRANSFER_FAILED
    diag: int = NDRDiag.NO_DIAGNOSTIC
    text: str = ""
    status_code: int | None = None
    transport: str | None = None


def _original_props(original: MessageData, now: datetime) -> dict[int, object]:
    p = original.props
    return {
        T.PR_ORIGINAL_SUBJECT: original.subject,
        T.PR_ORIGINAL_SUBMIT_TIME: p.get(T.PR_CLIENT_SUBMIT_TIME),
        T.PR_ORIGINAL_DISPLAY_TO: p.get(T.PR_DISPLAY_TO, ""),
        T.PR_ORIGINAL_DISPLAY_CC: p.get(T.PR_DISPLAY_CC, ""),
        T.PR_ORIGINAL_DISPLAY_BCC: p.get(T.PR_DISPLAY_BCC, ""),
        T.PR_ORIG_MESSAGE_CLASS: original.message_class,
        T.PR_ORIGINAL_ENTRYID: p.get(T.PR_ENTRYID),
        T.PR_CONVERSATION_TOPIC: p.get(T.PR_CONVERSATION_TOPIC, original.subject),
        T.PR_REPORT_TIME: now,
        T.PR_MESSAGE_DELIVERY_TIME: now,
        T.PR_CLIENT_SUBMIT_TIME: now,
        T.PR_SENDER_NAME: MAIL_DELIVERY_SYSTEM,
        T.PR_SENT_REPRESENTING_NAME: MAIL_DELIVERY_SYSTEM,
        T.PR_MESSAGE_FLAGS: 0,
        T.PR_RECEIVED_BY_NAME: p.get(T.PR_SENDER_NAME),
        T.PR_RECEIVED_BY_EMAIL_ADDRESS: p.get(T.PR_SENDER_EMAIL_ADDRESS),
        T.PR_RECEIVED_BY_ADDRTYPE: p.get(T.PR_SENDER_ADDRTYPE),
    }


def _report_row(row: ReportRow) -> Recipient:
    r = row.recipient
    props: dict[int, object] = {
        T.PR_DISPLAY_NAME: r.display_name,
        T.PR_ADDRTYPE: r.address_type,
        T.PR_EMAIL_ADDRESS: r.email_address,
        T.PR_RECIPIENT_TYPE: r.recipient_type,
        T.PR_SEARCH_KEY: r.get(T.PR_SEARCH_KEY) or search_key(r.address_type, r.email_address),
        T.PR_REPORT_TEXT: row.text,
        T.PR_REPORT_TIME: row.time,
        T.PR_DISPLAY_TYPE: 0,
        T.PR_OBJECT_TYPE: MAPI_MAILUSER,
        T.PR_ORIGINAL_DISPLAY_NAME: r.display_name,
    }
    if r.entry_id:
        props[T.PR_ENTRYID] = r.entry_id
    if row.delivered:
        props[T.PR_DELIVER_TIME] = row.time
    else:
        props[T.PR_NDR_REASON_CODE] = int(row.reason)
        props[T.PR_NDR_DIAG_CODE] = int(row.diag)
        if row.status_code is not None:
            props[T.PR_NDR_STATUS_CODE] = int(row.status_code)
    return Recipient(props={k: v for k, v in props.items() if v is not None})


def _diag_name(value: int) -> str:
    try:
        return "MAPI_DIAG_" + NDRDiag(value).name
    except ValueError:
        return str(value)


def _reason_name(value: int) -> str:
    try:
        return "MAPI_REASON_" + NDRReason(value).name
    except ValueError:
        return str(value)


def transmittable_copy(message: MessageData) -> MessageData:
    """The original as submitted, without the properties that never leave the client."""
    props = {k: v for k, v in message.props.items() if k not in T.NON_TRANSMITTABLE and k != T.PR_ENTRYID}
    recipients = [
        Recipient(props={k: v for k, v in r.props.items() if k not in T.NON_TRANSMITTABLE}) for r in message.recipients
    ]
    attachments = [
        Attachment(props=dict(a.props), opener=a.opener, data=a.data, size=a.size, embedded=a.embedded)
        for a in message.attachments
    ]
    # The original MIME stream goes along: the returned message is what was sent, byte for byte.
    return MessageData(props=props, recipients=recipients, attachments=attachments, original=message.original)


def non_delivery_report(original: MessageData, rows: Sequence[ReportRow], now: datetime) -> MessageData:
    """REPORT.<class>.NDR with one row per failed recipient and the original attached."""
    lines = [
        "Your message could not be delivered to the following recipients:",
        "",
    ]
    for row in rows:
        r = row.recipient
        lines.append(f"  {r.display_name} <{r.address}>")
        lines.append(f"    {row.text or 'no transport accepted this recipient'}")
        lines.append(f"    reason {_reason_name(row.reason)}, diagnostic {_diag_name(row.diag)}")
        if row.transport:
            lines.append(f"    transport: {row.transport}")
    props = _original_props(original, now)
    props.update(
        {
            T.PR_MESSAGE_CLASS: f"REPORT.{original.message_class}.NDR",
            T.PR_SUBJECT: f"Undeliverable: {original.subject}",
            T.PR_REPORT_TEXT: "\n".join(lines[2:]),
            T.PR_BODY: "\n".join(lines) + "\n",
        }
    )
    embedded = Attachment(
        props={
            T.PR_ATTACH_METHOD: int(AttachMethod.EMBEDDED_MSG),
            T.PR_DISPLAY_NAME: original.subject or "Original message",
            T.PR_RENDERING_POSITION: -1,
        },
        embedded=transmittable_copy(original),
    )
    return MessageData(
        props={k: v for k, v in props.items() if v is not None},
        recipients=[_report_row(r) for r in rows],
        attachments=[embedded],
    )


def delivery_report(original: MessageData, rows: Sequence[ReportRow], now: datetime) -> MessageData:
    """REPORT.<class>.DR with PR_DELIVER_TIME per delivered recipient; no original attached."""
    lines = ["Your message was delivered to the following recipients:", ""]
    for row in rows:
        lines.append(
            f"  {row.recipient.display_name} <{row.recipient.address}> at {row.time.isoformat(timespec='seconds')}"
        )
    props = _original_props(original, now)
    props.update(
        {
            T.PR_MESSAGE_CLASS: f"REPORT.{original.message_class}.DR",
            T.PR_SUBJECT: f"Delivered: {original.subject}",
            T.PR_REPORT_TEXT: "\n".join(lines[2:]),
            T.PR_BODY: "\n".join(lines) + "\n",
        }
    )
    return MessageData(
        props={k: v for k, v in props.items() if v is not None}, recipients=[_report_row(r) for r in rows]
    )


def delay_report(original: MessageData, rows: Sequence[ReportRow], now: datetime) -> MessageData:
    """REPORT.<class>.Delayed.DR: a warning that delivery is taking long; nothing failed yet."""
    lines = ["Your message has not been delivered yet to the following recipients; postroom keeps trying:", ""]
    for row in rows:
        lines.append(f"  {row.recipient.display_name} <{row.recipient.address}>: {row.text}")
    props = _original_props(original, now)
    props.update(
        {
            T.PR_MESSAGE_CLASS: f"REPORT.{original.message_class}.Delayed.DR",
            T.PR_SUBJECT: f"Delayed: {original.subject}",
            T.PR_REPORT_TEXT: "\n".join(lines[2:]),
            T.PR_BODY: "\n".join(lines) + "\n",
        }
    )
    recipients = []
    for row in rows:
        r = _report_row(row)
        r.props.pop(T.PR_DELIVER_TIME, None)
        recipients.append(r)
    return MessageData(props={k: v for k, v in props.items() if v is not None}, recipients=recipients)
