"""Reports that reach a person: for a message handed over with an envelope (the SMTP listener, the
sendmail command), nobody reads the profile's Inbox, so each NDR, delay warning and DR the spooler
makes is also sent to the envelope sender, as the standard RFC 3464 `multipart/report` any mail
program shows (envelope.py builds it).

What the sender asked with RFC 3461 DSN parameters (mapi/dsn.py) is obeyed per recipient: NOTIFY=NEVER
means no report at all, a NOTIFY without FAILURE no NDR, without DELAY no delay warning, and with
SUCCESS a delivery report ("delivered", or "relayed" when an SMTP relay took it but could not take
the DSN request too; a relay that offered DSN got NOTIFY passed on and reports itself, so then
none comes from here: spooler/outbound.py decides). A recipient
without NOTIFY gets NDRs and delay warnings, and DRs when the message asked MAPI for them. The
profile's own MAPI reports (in its Inbox) are not filtered: NOTIFY is about the sender's copies.

Loop protection: never to the null sender `<>` (which every such report is sent from), never about
a report or an auto-submitted message. `sender_reports = false` in [profile] turns it off.

The copy is submitted in the same store transaction as the MAPI report it mirrors
(`with_sender_copy`), so a crash between the two can neither lose it nor send it twice.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from ..envelope import ReportAction, StatusLine, SubmissionSource, dsn_bytes, envelope_message, report_to_sender
from ..mapi import tags as T
from ..mapi.dsn import wants_report
from ..mapi.message import MessageData
from ..store import FolderRole, MessageStore
from .reports import ReportRow


def _action(report_class: str) -> ReportAction:
    if report_class.endswith(".NDR"):
        return ReportAction.FAILED
    if report_class.endswith(".Delayed.DR"):
        return ReportAction.DELAYED
    return ReportAction.DELIVERED


def sender_copy(
    original: MessageData, report: MessageData, rows: Sequence[ReportRow], now: datetime, enabled: bool
) -> MessageData | None:
    """The RFC 3464 report about `rows` to `original`'s envelope sender, ready to submit; None when
    none is owed (turned off, no envelope, the null sender, or a report about a report)."""
    sender = report_to_sender(original) if enabled else None
    if sender is None or not rows:
        return None
    kind = _action(report.message_class)
    lines: list[StatusLine] = []
    for row in rows:
        props = row.recipient.props
        action = ReportAction.RELAYED if kind is ReportAction.DELIVERED and props.get(T.PR_POSTROOM_RELAYED) else kind
        if wants_report(props, action.value) is False:
            continue
        orcpt = props.get(T.PR_POSTROOM_DSN_ORCPT)
        where = orcpt if isinstance(orcpt, str) else None
        lines.append(StatusLine(row.recipient.email_address, action, row.text, row.time, where))
    if not lines:
        return None
    raw = dsn_bytes(original, sender, lines, now, socket.gethostname())
    source = str(original.get(T.PR_POSTROOM_SUBMISSION_SOURCE) or SubmissionSource.SMTP)
    copy = envelope_message(raw, "", [sender], source)
    copy.props[T.PR_DELETE_AFTER_SUBMIT] = True  # it was for the sender; nobody here reads it
    copy.props[T.PR_ORIGINATOR_NON_DELIVERY_REPORT_REQUESTED] = False
    return copy


def with_sender_copy(
    store: MessageStore, deliver: Callable[..., int], copy: MessageData | None, now: datetime
) -> Callable[..., int]:
    """`deliver` (which stores the MAPI report), then `copy` submitted from the Outbox, in the one
    transaction the caller's write runs in."""
    if copy is None:
        return deliver

    def both(*args: Any) -> int:
        result = deliver(*args)
        store.create_and_submit(store.folder(FolderRole.OUTBOX).id, copy, now)
        return result

    return both
