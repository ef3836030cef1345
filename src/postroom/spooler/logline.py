"""One log line per recipient outcome, as Postfix writes one per delivery attempt:

    id=7 msgid=<…@example.org> to=<bob@example.org> transport=work relay=mail.example.org:587
    delay=1.2 status=sent (250 2.0.0 Ok: queued as 3F2A1)

Called at the one place the outbound algorithm records outcomes (OutboundProcessor._stash), so
every outcome (delivered, failed, expired, no transport) gets exactly one line, from one function.
The line names no credentials: a transport's options give only host and port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from ..mapi import tags as T
from ..mapi.codes import MAPIError
from ..mapi.message import MessageData
from ..store import RecipientOutcome, RecipientState
from .transports import TransportTable

log = logging.getLogger("postroom.delivery")

#: A recipient state as Postfix's `status=` word says it.
STATUS_WORDS = {
    RecipientState.DELIVERED: "sent",
    RecipientState.FAILED: "bounced",
    RecipientState.EXPIRED: "expired",
}


def outcome_line(
    message_id: int,
    message: MessageData | None,
    outcome: RecipientOutcome,
    relay: str,
    now: datetime,
) -> str:
    """The line for one outcome (a pure function: the tests read it)."""
    address = "?"
    msgid = ""
    delay = "?"
    if message is not None:
        row = next((r for r in message.recipients if r.row_id == outcome.row_id), None)
        if row is not None:
            address = row.email_address
        msgid = str(message.get(T.PR_INTERNET_MESSAGE_ID) or "")
        submitted = message.get(T.PR_CLIENT_SUBMIT_TIME)
        if isinstance(submitted, datetime):
            delay = f"{max(0.0, (now - submitted).total_seconds()):.2g}"
    words = str(outcome.props.get(T.PR_REPORT_TEXT) or "").replace("\n", " ").strip()
    status = STATUS_WORDS.get(outcome.state, str(outcome.state))
    return (
        f"id={message_id} msgid={msgid or '-'} to=<{address}> transport={outcome.transport or 'none'} "
        f"relay={relay} delay={delay} status={status}" + (f" ({words})" if words else "")
    )


def log_outcomes(
    message_id: int,
    message: MessageData | None,
    outcomes: Sequence[RecipientOutcome],
    relay_of: Callable[[str], str],
    now: datetime,
) -> None:
    """One INFO line per delivered recipient, one WARNING line per failed one."""
    for outcome in outcomes:
        level = logging.INFO if outcome.state is RecipientState.DELIVERED else logging.WARNING
        if log.isEnabledFor(level):
            log.log(level, "%s", outcome_line(message_id, message, outcome, relay_of(outcome.transport), now))


def relay_of(table: TransportTable) -> Callable[[str], str]:
    """`relay=` for a transport by name: its server's host:port, or its kind (`maildir`, `pipe`)."""

    def relay(name: str) -> str:
        if not name:
            return "none"
        try:
            service = table.by_name(name).service
        except MAPIError:
            return "none"
        host = service.options.get("host")
        if isinstance(host, str) and host:
            port = service.options.get("port")
            return f"{host}:{port}" if port else host
        return service.kind

    return relay
