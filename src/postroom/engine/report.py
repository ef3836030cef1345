"""What became of each recipient of a message, in words a user reads: delivered, failed or expired
(final), waiting (for which transport, why, and until when), unsent or received.

The one builder of that report: `postroom show`, `postroom send` and Python callers all read it
through the face (`Session.recipient_report`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from ..mapi import tags as T
from ..mapi.codes import NotFound
from ..mapi.flags import MessageFlags
from ..mapi.message import Recipient
from ..spooler import MessageResult
from ..store import MessageStore, QueueState, WaitKind


@dataclass(frozen=True)
class RecipientReport:
    """What became of one recipient, in words a user reads (`postroom show`, `postroom send`).

    `state` is delivered, failed or expired (final); waiting (still in the queue: `waiting_for`
    names the transport it waits for and `why` says why, in that transport's words); unsent (a
    draft, or taken back with `cancel`); or received (a message that came in, or a report).
    """

    row_id: int
    type: str  # to / cc / bcc
    display_name: str
    address: str
    state: str
    transport: str | None  # the transport that gave the final outcome
    outcome_time: datetime | None
    report_text: str | None
    waiting_for: str | None = None
    why: str | None = None
    next_attempt: datetime | None = None  # None while waiting: due now, or at the next Send/Receive
    at_send_receive: bool = False  # waits for a Send/Receive (offline)


def recipient_report(store: MessageStore, mid: int) -> list[RecipientReport]:
    """Each recipient's outcome, or what it waits for and why (one row per recipient)."""
    message = store.open_message(mid)
    states = {s.row_id: s for s in store.recipient_states(mid)}
    entry = store.queue_entry(mid)
    unsent = bool(int(message.get(T.PR_MESSAGE_FLAGS, 0) or 0) & MessageFlags.UNSENT)
    out = []
    for r in message.recipients:
        st = states.get(r.row_id)
        final = st is not None and st.state.final
        report = RecipientReport(
            row_id=r.row_id,
            type=r.kind.name.lower(),
            display_name=r.display_name,
            address=r.address,
            state=st.state.value if st is not None and final else "unsent" if unsent else "received",
            transport=(st.transport or None) if st is not None else None,
            outcome_time=st.outcome_time if st is not None else None,
            report_text=r.get(T.PR_REPORT_TEXT),
        )
        if entry is not None and not final:
            at_send_receive = entry.waiting_for is WaitKind.SEND_RECEIVE
            why = (st.detail if st is not None else None) or entry.last_error or "queued for the spooler"
            if entry.state is QueueState.HELD:
                why = f"held: {entry.hold_reason or 'by an operator'}"
            report = replace(
                report,
                state="waiting",
                waiting_for=st.waiting_for if st is not None else None,
                why=why,
                next_attempt=None if at_send_receive else entry.next_attempt,
                at_send_receive=at_send_receive,
            )
        out.append(report)
    return out


def delivery_report(
    store: MessageStore, mid: int, recipients: Sequence[Recipient], result: MessageResult | None
) -> list[RecipientReport]:
    """`recipient_report` of a message a pass has just handled; for one that pass deleted once
    handled (PR_DELETE_AFTER_SUBMIT), the pass's own outcomes for `recipients` (its rows as
    submitted), since the store no longer has them."""
    try:
        return recipient_report(store, mid)
    except NotFound:
        if result is None:
            return []
    outcomes = {o.row_id: o for o in result.outcomes}
    out = []
    for r in recipients:
        o = outcomes.get(r.row_id)
        out.append(
            RecipientReport(
                row_id=r.row_id,
                type=r.kind.name.lower(),
                display_name=r.display_name,
                address=r.address,
                state=o.state.value if o is not None else "unknown",
                transport=(o.transport or None) if o is not None else None,
                outcome_time=None,
                report_text=o.props.get(T.PR_REPORT_TEXT) if o is not None else None,
            )
        )
    return out
