"""The message store interface: what every store (SQLite now, PostgreSQL later) provides.

The store is the only durable state. Spoolers claim queued messages with a lease
(never an in-memory lock), record each recipient's outcome in one transaction, and
release or finish the message. A process that dies simply lets its lease expire.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import IO, Any

from ..mapi.codes import MAPIError
from ..mapi.message import MessageData, Props, Recipient
from .activity import PassTotals
from .notify import NotificationBus
from .receive import match_receive_folder
from .slots import ConnectionSlots
from .stats import StatementCount
from .words import StoredWords


class FolderRole(StrEnum):
    """The special folders every store has."""

    ROOT = "root"
    IPM_SUBTREE = "ipm_subtree"
    INBOX = "inbox"
    OUTBOX = "outbox"
    SENT_ITEMS = "sentmail"
    DELETED_ITEMS = "wastebasket"


SPECIAL_FOLDER_NAMES: dict[FolderRole, str] = {
    FolderRole.INBOX: "Inbox",
    FolderRole.OUTBOX: "Outbox",
    FolderRole.SENT_ITEMS: "Sent Items",
    FolderRole.DELETED_ITEMS: "Deleted Items",
}


class QueueState(StrEnum):
    """Where a submitted message is in the outgoing queue."""

    QUEUED = "queued"  # ready, or waiting until next_attempt
    HELD = "held"  # held by an operator
    DONE = "done"  # every recipient has its outcome (message left the queue)


class WaitKind(StrEnum):
    """Why a queued message is not due now."""

    RETRY = "retry"  # a transport said wait / busy / network error; due at next_attempt
    SEND_RECEIVE = "send_receive"  # offline: waits for Send/Receive or going online
    DEFERRED = "deferred"  # the transport keeps it until it notifies SENTDEFERRED
    SCHEDULED = "scheduled"  # PR_DEFERRED_SEND_TIME: not before that time (only an explicit retry ID forces it)
    UNCONFIGURED = "unconfigured"  # a transport cannot work as configured: until the profile changes (or a recheck)
    PAUSED = "paused"  # its transport's circuit breaker is open: until one message probes it and it closes


class RecipientState(StrEnum):
    """A recipient's delivery outcome; exactly one final state per recipient."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self is not RecipientState.PENDING


@dataclass(frozen=True)
class Folder:
    id: int
    name: str
    parent_id: int | None
    role: FolderRole | None
    entry_id: bytes
    count: int | None = None  # messages in the folder, when the listing counted them


@dataclass(frozen=True)
class MessageSummary:
    """One row of a contents table."""

    id: int
    folder_id: int | None
    entry_id: bytes
    message_class: str
    subject: str
    flags: int
    submit_time: datetime | None
    delivery_time: datetime | None
    display_to: str
    sender: str


@dataclass(frozen=True)
class RetryAll:
    """What `retry_all` did: the messages now due, and the deferred sends it left waiting."""

    retried: list[int]
    left_scheduled: list[int]


@dataclass(frozen=True)
class QueueEntry:
    """One row of the outgoing queue table, with what a user needs to see why it waits."""

    id: int
    entry_id: bytes
    subject: str
    display_to: str
    submit_time: datetime | None
    state: QueueState
    locked: bool
    lease_owner: str | None
    attempts: int
    next_attempt: datetime | None
    last_error: str | None
    pending: int
    recipients: int
    waiting_for: WaitKind | None = None
    previous_owner: str | None = None  # set when this claim took over an expired lease
    hold_reason: str | None = None
    #: The transports its pending recipients wait for (in recipient order), once each.
    waiting_transports: tuple[str, ...] = ()
    lease_until: datetime | None = None  # while locked: when the claim runs out unless renewed
    first_try: datetime | None = None  # when a transport was first really called for it
    failures: int = 0  # passes that met a temporary failure (the retry backoff grows with them)


# --- what the status page and /metrics read (store/activity.py says from where) ---
@dataclass(frozen=True)
class QueuePage:
    """One page of the outgoing queue, and where the next one starts (None: this is the last)."""

    entries: list[QueueEntry]
    next_after: int | None


@dataclass(frozen=True)
class QueueCounts:
    """How many queued messages there are by state and by the transport they wait for."""

    by_state: dict[str, int] = field(default_factory=dict)
    by_transport: dict[str, int] = field(default_factory=dict)
    #: (state, transport) -> messages; transport "" when no pending recipient names one.
    by_state_transport: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_submit: datetime | None = None

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


@dataclass(frozen=True)
class ActivityBucket:
    """One step of the overview's chart: outcomes recorded in it, and the queue's depth at its end."""

    start: datetime
    delivered: int
    failed: int
    depth: int


@dataclass(frozen=True)
class DeliveryStats:
    """Totals since the store was made, read from the history (the /metrics counters)."""

    #: (transport, outcome) -> recipients.
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: transport -> temporary failures (each one a retry to come).
    retries: dict[str, int] = field(default_factory=dict)
    #: operator retries ("retry now").
    operator_retries: int = 0
    inbound: int = 0
    #: Seconds from submission to each recipient's outcome, by transport: a histogram over the
    #: `latency_bounds` asked for (counted in the database: the history may hold millions).
    latency_bounds: tuple[float, ...] = ()
    #: transport -> how many outcomes took at most each bound (cumulative, as Prometheus has them).
    latency_buckets: dict[str, list[int]] = field(default_factory=dict)
    latency_count: dict[str, int] = field(default_factory=dict)
    latency_sum: dict[str, float] = field(default_factory=dict)


@dataclass
class SpoolerStats:
    """What the spooler processes on the store reported about their passes, summed over them, and the
    connection slots in use now (the /metrics series no message's history holds).

    Each spooler process keeps one row of running totals that it rewrites at the end of each pass
    (store.record_pass): summing the rows counts every process once. The row of a process that
    wrote nothing for an hour is folded into one retired row, with what it counted: the table
    does not grow with restarts, and the counters never go down.
    """

    #: Spooler processes that ever reported a pass on this store (a process that was idle for an
    #: hour and goes on counts twice).
    processes: int = 0
    passes: int = 0
    pass_seconds: float = 0.0
    #: The histogram's upper bounds (seconds) and how many passes took at most each (cumulative).
    pass_bounds: tuple[float, ...] = ()
    pass_buckets: list[int] = field(default_factory=list)
    #: transport -> how often its throttle made a message's recipients wait.
    throttle_waits: dict[str, int] = field(default_factory=dict)
    #: transport -> connection slots held now, by every process on the store.
    slots_in_use: dict[str, int] = field(default_factory=dict)


@dataclass
class RecipientOutcome:
    """A recipient's outcome as recorded by the spooler, right after the transport answered."""

    row_id: int
    state: RecipientState
    transport: str
    props: Props = field(default_factory=dict)  # PR_NDR_*, PR_REPORT_TEXT, PR_DELIVER_TIME ...
    report: bool = True  # a DR/NDR is still owed for this outcome


#: The transports that declined a pending recipient: name (lower case) -> the fingerprint of the
#: transport's configuration when it declined (spooler/declines.py says what that means).
Declined = Mapping[str, str]


@dataclass
class ClaimedMessage:
    """A message a spooler has just claimed, read with the others of its batch (load_claimed):
    what the outbound algorithm needs before it calls the first transport."""

    message: MessageData
    states: list[RecipientStatus]
    previous_owner: str | None  # set when this claim took over an expired lease
    first_try: datetime | None
    failures: int


@dataclass(frozen=True)
class RecipientWait:
    """Why a recipient is still pending after a pass: the transport it waits for, its words, and
    the transports that declined it so far.

    The next pass resumes the recipient's routing at the first transport that has not declined
    it, so a transport that already said "not mine" is not offered it again, and offline it
    waits for exactly the transport online routing would give it next.
    """

    row_id: int
    transport: str
    detail: str
    declined: Declined = field(default_factory=dict)


@dataclass(frozen=True)
class WaitingRecipient:
    """A pending recipient that waits for a transport, as a change of routing needs to see it
    (`waiting_for` None: an earlier change left it to no transport, and its NDR is due)."""

    message_id: int
    recipient: Recipient
    waiting_for: str | None
    declined: Declined
    wait_kind: WaitKind | None  # its message's
    held: bool


@dataclass(frozen=True)
class RecipientMove:
    """A waiting recipient that a new routing gives another transport (None: none; its NDR is due)."""

    message_id: int
    row_id: int
    was: str | None  # the transport it waited for (written only if it still waits for it)
    transport: str | None
    detail: str


@dataclass(frozen=True)
class RecipientStatus:
    """The stored delivery state of one recipient."""

    row_id: int
    state: RecipientState
    transport: str | None
    outcome_time: datetime | None
    reported: bool
    waiting_for: str | None = None  # pending: the transport it waits for (its next offer)
    detail: str | None = None  # pending: why it waits, in that transport's words
    declined: Declined = field(default_factory=dict)  # pending: the transports that declined it


class EventKind(StoredWords):
    """What one line of a message's history says happened."""

    SUBMITTED = "submitted"
    WAITING = "waiting"  # a pass left recipients waiting (its detail says for what)
    WAIT = "wait"  # a transport said wait (MAPI_E_WAIT, busy, a network error)
    NOT_ME = "not-me"  # a transport left the whole message to the next one
    CANCEL = "cancel"  # a transport cancelled its part of the message
    RESEND_LATER = "resend-later"
    DEFERRED = "deferred"  # the transport keeps the message until it notifies SENTDEFERRED
    UNCONFIGURED = "unconfigured"
    TRANSPORT_ERROR = "transport-error"
    CIRCUIT_OPEN = "circuit-open"
    DELIVERED = "delivered"  # a recipient's outcome (RecipientState)
    FAILED = "failed"
    EXPIRED = "expired"
    REPORT = "report"  # an NDR, DR or delay report was stored
    DELAY_WARNING = "delay-warning"
    OUTCOME_UNKNOWN = "outcome-unknown"  # a spooler died while a transport had the message
    GIVEN_BACK = "given-back"  # a spooler gave its claim back
    HELD = "held"
    RELEASED = "released"
    RETRY = "retry"  # an operator made it due now, ignoring backoff
    CONFIRMED_DELIVERED = "confirmed-delivered"
    ABORTED = "aborted"  # AbortSubmit
    FINISHED = "finished"  # left the queue: moved, left or deleted
    RECEIVED = "received"  # came in (inbound)
    REROUTED = "rerouted"  # the routing changed while recipients waited: they wait for another transport


@dataclass(frozen=True)
class Event:
    """One line of a message's history (`postroom show ID`)."""

    time: datetime
    kind: EventKind | str  # a str only for a kind this postroom does not know (written by another)
    transport: str | None
    detail: str


class LeaseLost(Exception):
    """The spooler's claim on a message expired and was taken over; it must stop working on it."""


class MessageStore(abc.ABC):
    """A MAPI message store with an outgoing queue."""

    #: Cross-process notifications of this store (submit, new mail, mode changes).
    bus: NotificationBus
    #: Each transport's connection limit, held across every spooler process on this store.
    connection_slots: ConnectionSlots
    #: Statements and commits this store object ran (stats.py); statements once count_statements() was called.
    statements: StatementCount

    def count_statements(self) -> StatementCount:
        """Start counting every statement (commits are always counted); the live totals."""
        self.statements.counting = True
        return self.statements

    # --- lifecycle ------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def store_uid(self) -> bytes: ...

    def check_file(self) -> None:
        """Raise MAPI_E_NOT_FOUND when the store's file was deleted or replaced under this process
        (a store with no file of its own, like PostgreSQL, has nothing to check)."""
        return None

    # --- folders --------------------------------------------------------------------------
    @abc.abstractmethod
    def folders(self) -> list[Folder]: ...

    @abc.abstractmethod
    def folder(self, role: FolderRole) -> Folder: ...

    @abc.abstractmethod
    def find_folder(self, name_or_id: str | int | bytes) -> Folder:
        """By ID, entry ID, role name or display name (case-insensitive); MAPI_E_NOT_FOUND."""

    @abc.abstractmethod
    def create_folder(self, name: str, parent_id: int | None = None) -> Folder: ...

    # --- messages -------------------------------------------------------------------------
    @abc.abstractmethod
    def create_message(self, folder_id: int, message: MessageData) -> int:
        """Save a whole message (props, recipients, attachments) in one transaction."""

    @abc.abstractmethod
    def import_message(self, folder_id: int, message: MessageData, key: str) -> int | None:
        """Save a message read from a file (`postroom import`) unless one with the same import
        key (a digest of its bytes) is still in the store: the key and the message are written in
        one transaction, so an import that is run again, or broken off and rerun, never saves a
        message twice. Returns the new message's ID, or None when it was already there."""

    @abc.abstractmethod
    def open_message(self, message_id: int) -> MessageData:
        """Load a message; attachments stream their content from the store on open()."""

    @abc.abstractmethod
    def set_props(self, message_id: int, props: Props, delete: Iterable[int] = ()) -> None:
        """Modify an unsubmitted message; MAPI_E_SUBMITTED once it was submitted."""

    @abc.abstractmethod
    def add_attachment(self, message_id: int, props: Props, content: IO[bytes] | bytes, size: int | None = None) -> int:
        """Attach by value, streaming `content` into the store; returns PR_ATTACH_NUM."""

    @abc.abstractmethod
    def list_messages(self, folder_id: int, limit: int | None = None) -> list[MessageSummary]: ...

    @abc.abstractmethod
    def message_folder(self, message_id: int) -> int | None: ...

    @abc.abstractmethod
    def entry_id_of(self, message_id: int) -> bytes: ...

    @abc.abstractmethod
    def resolve_message(self, ref: str | int | bytes) -> int:
        """A message ID from its number or hex entry ID; MAPI_E_NOT_FOUND."""

    @abc.abstractmethod
    def delete_message(self, message_id: int) -> None: ...

    @abc.abstractmethod
    def move_message(self, message_id: int, folder_id: int) -> None: ...

    # --- submission (client side) ---------------------------------------------------------
    @abc.abstractmethod
    def batch(self) -> AbstractContextManager[None]:
        """Group operations into one durable commit (group commit); each still all-or-nothing."""

    @abc.abstractmethod
    def create_and_submit(self, folder_id: int, message: MessageData, now: datetime) -> int:
        """Save and submit a new message in one transaction."""

    @abc.abstractmethod
    def create_and_submit_many(self, folder_id: int, messages: Sequence[MessageData], now: datetime) -> list[int]:
        """Save and submit new messages in one transaction (batch submission); their IDs in order."""

    @abc.abstractmethod
    def submit(self, message_id: int, now: datetime, stamp: Props | None = None) -> None:
        """IMessage::SubmitMessage: MSGFLAG_SUBMIT, PR_RESPONSIBILITY FALSE, submit time, queued.

        MAPI_E_NO_RECIPIENTS for an empty recipient table; MAPI_E_SUBMITTED if already queued.
        """

    @abc.abstractmethod
    def abort_submit(self, message_id: int, now: datetime) -> None:
        """IMsgStore::AbortSubmit: returns when removed; MAPI_E_NOT_IN_QUEUE; MAPI_E_UNABLE_TO_ABORT."""

    # --- the outgoing queue (spooler side) ------------------------------------------------
    @abc.abstractmethod
    def queue(self, only: int | None = None) -> list[QueueEntry]:
        """The outgoing queue, oldest submit time first."""

    @abc.abstractmethod
    def queue_entry(self, message_id: int) -> QueueEntry | None: ...

    @abc.abstractmethod
    def hold(self, message_id: int, now: datetime, reason: str, owner: str | None = None) -> None:
        """Hold a queued message (operator, or "outcome unknown"); MAPI_E_NOT_IN_QUEUE, MAPI_E_UNABLE_TO_ABORT."""

    @abc.abstractmethod
    def release_hold(self, message_id: int, now: datetime) -> None: ...

    @abc.abstractmethod
    def confirm_delivered(self, message_id: int, now: datetime, detail: str) -> str:
        """Finish a held message as delivered on an operator's word (no report is sent); see finish()."""

    @abc.abstractmethod
    def retry_now(self, message_id: int | None, now: datetime) -> int:
        """Make one queued message (or, with None, `retry_all`'s) due now, ignoring backoff;
        returns how many."""

    @abc.abstractmethod
    def retry_all(self, now: datetime) -> RetryAll:
        """`retry --all`: make every queued, unclaimed message that waits (for a retry, a
        Send/Receive, a paused or unconfigured transport) due now. A deferred send whose time has
        not come is left alone (`retry ID` forces one), and so is a held message."""

    @abc.abstractmethod
    def claim(self, owner: str, now: datetime, lease_seconds: float, limit: int = 1) -> list[int]:
        """Lock up to `limit` due messages for `owner` (SUBMITFLAG_LOCKED), oldest first."""

    @abc.abstractmethod
    def due_messages(self, now: datetime, limit: int, exclude: Iterable[int] = ()) -> list[int]:
        """Up to `limit` messages a spooler may claim now, oldest first (read only: nothing is locked)."""

    @abc.abstractmethod
    def pending_recipients(self, message_ids: Sequence[int]) -> dict[int, list[tuple[Recipient, str | None]]]:
        """The pending recipients of these messages, each with the transport it waits for (if any)."""

    @abc.abstractmethod
    def claim_message(self, owner: str, message_id: int, now: datetime, lease_seconds: float) -> bool:
        """Claim one chosen message if it is still due and free; False when another spooler has it."""

    def claim_messages(self, owner: str, message_ids: Sequence[int], now: datetime, lease_seconds: float) -> list[int]:
        """Claim those of the chosen messages that are still due and free, in one go (a lease each);
        the claimed ones, in the order given."""
        return [m for m in message_ids if self.claim_message(owner, m, now, lease_seconds)]

    def load_claimed(self, message_ids: Sequence[int]) -> dict[int, ClaimedMessage]:
        """What the spooler reads of each claimed message before its first transport, for a batch."""
        out: dict[int, ClaimedMessage] = {}
        for mid in message_ids:
            entry = self.queue_entry(mid)
            out[mid] = ClaimedMessage(
                self.open_message(mid),
                self.recipient_states(mid),
                entry.previous_owner if entry else None,
                entry.first_try if entry else None,
                entry.failures if entry else 0,
            )
        return out

    def unclaim(self, owner: str, message_ids: Sequence[int]) -> None:
        """Return claimed messages that no transport was called for, as if never claimed (a pass
        ended before it reached them): no history, and a taken-over lease stays taken over."""
        for mid in message_ids:
            self.give_back(mid, owner, datetime.now(UTC), "not started in this pass", False)

    @abc.abstractmethod
    def mark_started(self, owner: str, message_ids: Sequence[int]) -> set[int]:
        """Record that a transport is about to be called for these claimed messages, durably before
        it is: if `owner` dies holding one, the next claim treats it as "outcome unknown" (crash
        policy), while a message it only claimed (ahead, never started) is simply due again.
        Returns the IDs still claimed by `owner` (a message taken over meanwhile must not be sent)."""

    @abc.abstractmethod
    def give_back(self, message_id: int, owner: str, now: datetime, reason: str, outcome_unknown: bool) -> None:
        """Return a claimed message unfinished (the spooler was interrupted); due at once."""

    @abc.abstractmethod
    def renew_lease(self, message_id: int, owner: str, now: datetime, lease_seconds: float) -> None:
        """Extend a claim; LeaseLost if another process took the message over."""

    @abc.abstractmethod
    def renew_leases(self, owner: str, message_ids: Sequence[int], now: datetime, lease_seconds: float) -> set[int]:
        """Extend every claim of `owner` on these messages at once; the IDs still held (one that
        another process took over is left out, and its lease is not touched)."""

    # --- what the status page and /metrics read (store/activity.py) ----------------------------
    @abc.abstractmethod
    def queue_page(
        self,
        after: int | None,
        limit: int,
        state: QueueState | None = None,
        transport: str | None = None,
        text: str | None = None,
    ) -> QueuePage:
        """One page of the queue after message `after` (keyset paging)."""

    @abc.abstractmethod
    def queue_counts(self) -> QueueCounts: ...

    @abc.abstractmethod
    def activity(self, since: datetime, until: datetime, step_seconds: int) -> list[ActivityBucket]: ...

    @abc.abstractmethod
    def delivery_stats(self, latency_bounds: Sequence[float] = ()) -> DeliveryStats: ...

    @abc.abstractmethod
    def record_pass(self, owner: str, now: datetime, totals: PassTotals) -> None:
        """Write this spooler process's running pass totals (one upsert of its own row)."""

    @abc.abstractmethod
    def spooler_stats(self, transports: Sequence[str]) -> SpoolerStats:
        """Every process's pass totals summed, and the connection slots in use for `transports`."""

    @abc.abstractmethod
    def count_waiting(self, kind: WaitKind) -> int:
        """How many queued messages wait for this reason (e.g. Send/Receive), without loading them."""

    @abc.abstractmethod
    def next_due(self) -> datetime | None:
        """When the earliest waiting message becomes due (None: nothing queued)."""

    @abc.abstractmethod
    def recipient_states(self, message_id: int) -> list[RecipientStatus]: ...

    @abc.abstractmethod
    def record_outcomes(self, message_id: int, owner: str, outcomes: Sequence[RecipientOutcome], now: datetime) -> None:
        """Make recipients' outcomes durable (one transaction; LeaseLost if not ours)."""

    @abc.abstractmethod
    def deliver_report(
        self, message_id: int, owner: str, report: MessageData, folder_id: int, row_ids: Sequence[int], now: datetime
    ) -> int:
        """Store a DR/NDR and mark those recipients reported, in one transaction."""

    @abc.abstractmethod
    def release(
        self,
        message_id: int,
        owner: str,
        now: datetime,
        next_attempt: datetime | None,
        error: str | None,
        wait_kind: WaitKind = WaitKind.RETRY,
        outcomes: Sequence[RecipientOutcome] = (),
        waits: Sequence[RecipientWait] = (),
        *,
        tried_at: datetime | None = None,
        failed: bool = False,
    ) -> None:
        """Unlock a message that still has pending recipients; it is due again at next_attempt.

        `outcomes` are recorded first, then `waits` (what each pending recipient waits for), in
        the same transaction. `tried_at`: when this pass first called a transport (kept as the
        message's first try if it has none); `failed`: the pass met a temporary failure."""

    @abc.abstractmethod
    def wake(self, now: datetime, kinds: Sequence[WaitKind] = (WaitKind.SEND_RECEIVE,)) -> int:
        """Make messages waiting for these reasons due now (Send/Receive, back online); returns how many."""

    @abc.abstractmethod
    def wake_for(
        self, transports: Sequence[str], now: datetime, known: Sequence[str] | None = None, *, retries: bool = True
    ) -> int:
        """Send/Receive of these transports: make due now every unclaimed queued message with a
        recipient waiting for one of them (offline or, with `retries`, for a retry), or not yet
        routed. Scheduled (deferred-send) and held messages stay as they are. Returns how many.
        A group's own schedule passes `retries=False`: only a person's Send/Receive cuts a retry
        wait short, or the schedule would defeat the backoff.

        With `known` (every transport of the profile), a recipient waiting for a transport that is
        none of them (it was removed) wakes its message too: no Send/Receive could ever call the
        transport it waits for, and its routing starts over."""

    @abc.abstractmethod
    def waiting_recipients(self) -> list[WaitingRecipient]:
        """Every pending recipient of a queued or held message that waits for a transport."""

    @abc.abstractmethod
    def routing(self) -> str | None:
        """The signature of the routing the waiting recipients were last placed by (None: never)."""

    @abc.abstractmethod
    def reroute(self, moves: Sequence[RecipientMove], wake: Sequence[int], routing: str, now: datetime) -> int:
        """In one transaction: move waiting recipients to the transports a new routing gives them
        (each only if it still waits for the one it waited for), make the messages `wake` due now
        (unless held, or claimed by a spooler), note each moved message in its history, and record
        `routing` as the routing waiting recipients are placed by. Returns how many were moved."""

    @abc.abstractmethod
    def wake_paused(self, transport: str, now: datetime, limit: int | None = None) -> int:
        """Make due the messages parked because `transport` was paused (at most `limit`, oldest
        first: one to probe it; all once it works again). Returns how many."""

    @abc.abstractmethod
    def deliver_message(self, folder_id: int, message: MessageData, now: datetime) -> int:
        """Store an incoming message in a folder and notify new mail (fnevNewMail)."""

    @abc.abstractmethod
    def save_status_rows(self, owner: str, rows: Sequence[tuple[str, dict[str, Any]]], now: datetime) -> None:
        """Publish the status table of the process that runs the transports."""

    @abc.abstractmethod
    def status_rows(self) -> list[tuple[str, dict[str, Any], datetime, str]]: ...

    @abc.abstractmethod
    def finish(self, message_id: int, owner: str, now: datetime, outcomes: Sequence[RecipientOutcome] = ()) -> str:
        """FinishedMsg/DoSentMail: unlock, then move to PR_SENTMAIL_ENTRYID, delete, or leave (§6.3).

        `outcomes` (the last transport's answers) are recorded first, in the same transaction.

        Returns what happened: "moved", "deleted" or "left".
        """

    def finish_many(
        self, owner: str, items: Sequence[tuple[int, Sequence[RecipientOutcome]]], now: datetime
    ) -> list[str | Exception]:
        """finish() for several messages in one transaction (group commit of a tick's outcomes).

        Each message succeeds or fails alone: its entry in the answer is finish()'s result, or the
        error finish() would have raised (LeaseLost, MAPIError), and then nothing of it is written."""
        out: list[str | Exception] = []
        for mid, outcomes in items:
            try:
                out.append(self.finish(mid, owner, now, outcomes))
            except (LeaseLost, MAPIError) as exc:
                out.append(exc)
        return out

    # --- limits shared by every spooler process on this store --------------------------------
    @abc.abstractmethod
    def record_send(self, transport: str, now: datetime, owner: str | None = None) -> None:
        """Count one message handed to `transport` now (throttles hold across processes)."""

    @abc.abstractmethod
    def count_sends(self, transport: str, since: datetime) -> int: ...

    @abc.abstractmethod
    def reserve_send(
        self, transport: str, now: datetime, limits: Sequence[tuple[int, float]], owner: str | None = None
    ) -> float:
        """Take a throttle slot atomically: 0.0 when recorded, else seconds until a slot frees.

        `limits` are (maximum, window seconds) pairs, e.g. [(100, 60), (1000, 3600)]."""

    @abc.abstractmethod
    def breaker_state(self, transport: str) -> dict[str, Any]:
        """A transport's circuit breaker as the spooler stored it ({} when closed / never set)."""

    @abc.abstractmethod
    def set_breaker_state(self, transport: str, state: Mapping[str, Any], now: datetime) -> None: ...

    @abc.abstractmethod
    def update_breaker_state(
        self, transport: str, change: Callable[[dict[str, Any]], Mapping[str, Any] | None], now: datetime
    ) -> dict[str, Any]:
        """Read, change and write the breaker state in one transaction; `change` returning None writes nothing."""

    # --- history --------------------------------------------------------------------------
    @abc.abstractmethod
    def add_event(
        self, message_id: int, now: datetime, kind: EventKind, detail: str, transport: str | None = None
    ) -> None: ...

    @abc.abstractmethod
    def events(self, message_id: int) -> list[Event]: ...

    # --- receive folders ------------------------------------------------------------------
    @abc.abstractmethod
    def set_receive_folder(self, message_class: str, folder_id: int | None) -> None:
        """Associate a message class with a folder ("" = default); None removes the association."""

    @abc.abstractmethod
    def receive_folders(self) -> dict[str, int]:
        """Every association, class upper-cased ("" is the default)."""

    def get_receive_folder(self, message_class: str) -> tuple[int, str]:
        """The folder for the longest dotted prefix of the class (case-insensitive), and that prefix."""
        return match_receive_folder(self.receive_folders(), message_class)
