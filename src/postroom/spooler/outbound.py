"""The spooler's outbound algorithm for one claimed message (spec §5.2, §6.3).

For the pending recipients, the steps of routing are visited in order (UID pass, then
address-type pass, each in transport order). Before each submit_message the recipients
assigned to that transport are pending (PR_RESPONSIBILITY FALSE) and all others are not.
What a transport leaves pending goes on to its next matching transport; what no
transport takes gets an NDR. Each transport's answer is made durable at once, in one
transaction, before the next transport is called.

A transport that says "wait" or "busy" holds back only its own recipients: the others go
on to their transports, and the message comes back when the wait is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from weakref import WeakValueDictionary

from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from ..mapi.dsn import wants_report
from ..mapi.flags import BEGIN_DEFERRED, EndMessageFlags, NDRDiag, NDRReason, StatusCode
from ..mapi.message import MessageData, Recipient
from ..store.activity import PassTotals
from ..store.base import (
    ClaimedMessage,
    EventKind,
    LeaseLost,
    MessageStore,
    RecipientOutcome,
    RecipientState,
    RecipientWait,
    WaitKind,
)
from ..store.codec import from_epoch, to_micros
from ..transports.spi import OutboundMessage, OutboundRecipient, SubmitResult
from .commit import GroupCommit
from .declines import Declines
from .leases import LeaseKeeper
from .logline import log_outcomes, relay_of
from .policy import (
    DeliveryPolicy,
    breaker_after_error,
    breaker_blocked_until,
    breaker_closed,
    breaker_probe,
)
from .reports import ReportRow, delay_report, delivery_report, non_delivery_report
from .routing import Offer, Router
from .sender_reports import sender_copy, with_sender_copy
from .tally import Fate, Tallied, Tally
from .transports import LoadedTransport, TransportTable, call_transport, error_summary

log = logging.getLogger("postroom.spooler")

DEFERRED_BY_TRANSPORT_SECONDS = 24 * 3600.0
#: How long a message parked behind a paused transport waits at most; it is woken as soon as the
#: transport is probed and works again, so this only bounds a wait nobody ends.
PAUSED_SECONDS = 6 * 3600.0
#: A misconfigured transport's messages are looked at again this often (and at once when the profile
#: changes): a password file or a program may be fixed without touching the profile.
UNCONFIGURED_RECHECK_SECONDS = 900.0
MAX_RESEND_NOW = 3


def _epoch(when: datetime) -> float:
    return to_micros(when) / 1_000_000


def _probe_time(state: dict[str, Any]) -> float | None:
    """When an open breaker may next be probed: the end of its rest, or of a probe under way."""
    if state.get("open_until") is None:
        return None
    return max(float(state["open_until"]), float(state.get("probe_until") or 0.0))


@dataclass(frozen=True)
class SpoolerSettings:
    """Profile-wide reliability settings ([profile] in profile.toml)."""

    lease_seconds: float = 300.0
    max_queue_lifetime_hours: float = 120.0  # then pending recipients get an NDR (5 days, like Postfix)
    delay_warning_hours: float = 0.0  # 0: no delay warnings
    crash_policy: str = "resend"  # or "hold": what to do with a message whose outcome is unknown
    sender_reports: bool = True  # reports also go to the envelope sender (spooler/sender_reports.py)

    @classmethod
    def from_profile(cls, settings: dict[str, Any]) -> SpoolerSettings:
        policy = str(settings.get("crash_policy", "resend"))
        if policy not in ("resend", "hold"):
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"crash_policy is 'resend' or 'hold', not {policy!r}")
        try:
            return cls(
                lease_seconds=float(settings.get("lease_seconds", 300.0)),
                max_queue_lifetime_hours=float(settings.get("max_queue_lifetime_hours", 120.0)),
                delay_warning_hours=float(settings.get("delay_warning_hours", 0.0)),
                crash_policy=policy,
                sender_reports=bool(settings.get("sender_reports", True)),
            )
        except (TypeError, ValueError) as exc:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"bad reliability setting in the profile: {exc}") from exc


@dataclass
class MessageResult(Tallied):
    """What one pass over a message achieved (for `send`, `spooler --once` and tests)."""

    message_id: int
    #: Each recipient this pass dealt with, once, under the transport that had it.
    tally: Tally = field(default_factory=Tally)
    finished: str | None = None  # "moved" / "deleted" / "left" when the message left the queue
    offline: bool = False  # some recipients wait for Send/Receive
    held: bool = False  # held for an operator (outcome unknown, policy "hold")
    #: Every recipient outcome recorded in this pass (kept even when the message is then deleted).
    outcomes: list[RecipientOutcome] = field(default_factory=list)
    next_attempt: datetime | None = None
    errors: list[str] = field(default_factory=list)

    def count(self, transport: str, fate: Fate, n: int = 1) -> None:
        self.tally.count(transport, fate, n)


OFFLINE_TEXT = "offline: waiting for Send/Receive"
NOT_CALLED_OFFLINE = "not called while offline"  # a recipient's words while it waits for Send/Receive


@dataclass(frozen=True)
class _Wait:
    """A transport's "not now" for the recipients it was offered: how long, why, and what kind."""

    seconds: float
    reason: str  # for the message: names the transport
    kind: WaitKind = WaitKind.RETRY
    detail: str = ""  # for each recipient that waits for the transport (default: the reason)
    failure: bool = True  # a failed delivery attempt (backoff, expiry); not a throttle or a pause


@dataclass
class _Pending:
    recipient: Recipient
    offers: tuple[Offer, ...]
    declines: Declines
    index: int = 0
    last_error: str = ""  # why the last transport could not take it (for the NDR when none does)
    detail: str = ""  # the current transport's words when it asks this recipient to wait

    @classmethod
    def resume(cls, recipient: Recipient, offers: tuple[Offer, ...], declines: Declines) -> _Pending:
        """Start at the first transport of the routing now that has not declined the recipient, so a
        decliner is not asked again and a change of routing meanwhile is followed (declines.py)."""
        return cls(recipient, offers, declines, declines.first_open(offers))

    @property
    def current(self) -> Offer | None:
        return self.offers[self.index] if self.index < len(self.offers) else None

    def decline(self) -> None:
        """The current transport passed the recipient on: remember it, go on to the next one."""
        offer = self.current
        assert offer is not None
        self.declines.add(offer.transport)
        self.index = self.declines.first_open(self.offers, self.index + 1)

    def wait(self, transport: str, detail: str) -> RecipientWait:
        return RecipientWait(self.recipient.row_id, transport, detail, self.declines.stored)


class OutboundProcessor:
    """Runs the outbound algorithm for claimed messages."""

    def __init__(
        self,
        store: MessageStore,
        transports: TransportTable,
        owner: str,
        clock: Callable[[], datetime],
        may_call: Callable[[LoadedTransport], bool] = lambda t: True,
        settings: SpoolerSettings | None = None,
    ) -> None:
        self.store = store
        self.transports = transports
        self.owner = owner
        self.clock = clock
        self.may_call = may_call
        self.settings = settings or SpoolerSettings()
        self.policies: dict[str, DeliveryPolicy] = {}
        # The circuit breaker lives in the store (shared by every spooler process); this caches
        # each transport's state for a second so a busy queue does not read it per message.
        self._breakers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._unflushed: dict[int, list[RecipientOutcome]] = {}
        self._opened: WeakValueDictionary[int, MessageData] = WeakValueDictionary()  # for the log lines
        self.in_flight: set[int] = set()  # messages a pass is working on in this process
        #: Every lease this process holds (in flight, or claimed ahead), renewed together (leases.py).
        self.leases = LeaseKeeper(store, owner, clock, self.settings.lease_seconds)
        self.commit = GroupCommit(store, lambda: len(self.in_flight))
        self._calling: set[int] = set()  # messages a transport is sending now (answer not yet recorded)
        self._sending: Counter[str] = Counter()  # calls in flight per transport: its OUTBOUND_ACTIVE bit
        self._started: set[int] = set()  # messages whose claim is marked started (_start)
        self._ref = 0
        #: This process's pass totals for /metrics, written by the Spooler at the end of each pass.
        self.pass_totals = PassTotals()

    async def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A store write, durable when this returns; concurrent messages share the commit."""
        return await self.commit.write(fn, *args)

    def _stash(self, message_id: int, outcomes: Sequence[RecipientOutcome], result: MessageResult) -> None:
        """Outcomes wait to be written with the message's next store write (one transaction), which
        always comes before anything else happens to the message: another transport call, a report,
        or finishing/releasing it."""
        self._unflushed.setdefault(message_id, []).extend(outcomes)
        result.outcomes.extend(outcomes)
        log_outcomes(message_id, self._opened.get(message_id), outcomes, relay_of(self.transports), self.clock())

    def _take(self, message_id: int) -> list[RecipientOutcome]:
        return self._unflushed.pop(message_id, [])

    async def _flush(self, message_id: int) -> None:
        outcomes = self._take(message_id)
        if outcomes:
            await self.write(self.store.record_outcomes, message_id, self.owner, outcomes, self.clock())

    def _next_ref(self) -> int:
        self._ref = (self._ref + 1) & 0xFFFFFFFF or 1
        return self._ref

    def policy_of(self, transport: LoadedTransport) -> DeliveryPolicy:
        if transport.name not in self.policies:
            self.policies[transport.name] = DeliveryPolicy.from_options(transport.service.policy)
        return self.policies[transport.name]

    def _breaker(self, name: str, now: float) -> dict[str, Any]:
        cached = self._breakers.get(name)
        if cached is None or now - cached[0] > 1.0 or now < cached[0]:
            cached = (now, self.store.breaker_state(name))
            self._breakers[name] = cached
        return cached[1]

    async def process(self, message_id: int, claimed: ClaimedMessage | None = None) -> MessageResult:
        """One pass over a claimed message; it is finished or released before this returns.

        `claimed`: the message as read with its claim's batch (store.load_claimed); else it is read here."""
        self.leases.hold([message_id])  # held already when the scheduler claimed it
        self.in_flight.add(message_id)
        try:
            return await self._process(message_id, claimed)
        except (asyncio.CancelledError, KeyboardInterrupt):
            self._give_back(message_id)
            raise
        finally:
            try:
                if self._unflushed.get(message_id):  # an error cut the pass short: outcomes are kept anyway
                    with contextlib.suppress(LeaseLost):
                        await self._flush(message_id)
            finally:
                # Even if that write failed too (the store is unreachable): nothing of this pass stays
                # behind, and the lease is no longer renewed, so the claim runs out and is taken over.
                self._unflushed.pop(message_id, None)
                self.in_flight.discard(message_id)
                self._started.discard(message_id)
                self.leases.drop([message_id])

    async def _start(self, message_id: int) -> None:
        """Mark the claim started before its first transport call (store.mark_started): from here on
        a crash leaves the message's outcome unknown. Mostly folded into a write that happened
        anyway: the commit of the finishes that freed the workers marks the messages they take next
        (commit.py, `prestarted`). Otherwise the marks of every message that starts in the same tick
        (a batch reaches its transports together) are one statement in that tick's group commit,
        which raises LeaseLost if the message was taken over meanwhile: it is not sent."""
        if message_id in self._started:
            return
        if message_id in self.commit.prestarted:
            self.commit.prestarted.discard(message_id)
        else:
            await self.commit.start(message_id, self.owner)
        self._started.add(message_id)

    def _give_back(self, message_id: int) -> None:
        """Interrupted (Ctrl-C, a cancelled task): keep what transports said, and return the claim
        at once instead of letting the lease run out. When a transport call was cut short, nobody
        knows whether it sent the message: the next claim applies the crash policy to it.

        Plain store calls, not the group commit: the event loop may be shutting down."""
        unknown = message_id in self._calling
        self._calling.discard(message_id)
        try:
            outcomes = self._take(message_id)
            if outcomes:
                self.store.record_outcomes(message_id, self.owner, outcomes, self.clock())
            reason = "interrupted" + (" while a transport was sending it: outcome unknown" if unknown else "")
            self.store.give_back(message_id, self.owner, self.clock(), reason, unknown)
        except (LeaseLost, MAPIError) as exc:  # taken over already, or the store is unreachable
            log.warning("could not give message %s back: %s; its lease runs out instead", message_id, exc)

    async def _process(self, message_id: int, claimed: ClaimedMessage | None = None) -> MessageResult:
        result = MessageResult(message_id)
        if claimed is None:
            claimed = self.store.load_claimed([message_id]).get(message_id)
        if claimed is None:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no message {message_id}")
        if claimed.previous_owner:
            self._started.add(message_id)  # taken over started: it stays so (queue_sql.CLAIM_SET)
            if not await self._outcome_unknown(message_id, claimed.previous_owner):
                result.held = True
                return result
        message = self._opened[message_id] = claimed.message
        states = {s.row_id: s for s in claimed.states}
        router = self.transports.router()
        now_prints = self.transports.fingerprints()
        pending = [
            _Pending.resume(
                r,
                router.offers(r.address_type, r.provider_uid, r.email_address),
                Declines(states[r.row_id].declined, now_prints),
            )
            for r in message.recipients
            if states[r.row_id].state is RecipientState.PENDING
        ]
        # The queue lifetime counts from the first real delivery attempt (a deferred send, or an
        # offline wait, is not "in the queue" yet), and runs out only when an attempt fails.
        first_try = claimed.first_try
        tried_at: datetime | None = None
        if pending and first_try is not None:
            await self._delay_warning(message, message_id, pending, first_try)
        retry_waits: list[_Wait] = []
        waits: list[RecipientWait] = []
        offline = False
        failures = claimed.failures + 1  # this pass's, if it meets one

        await self._run_preprocessors(message, pending)

        while True:
            live = [p for p in pending if p.current is not None]
            if not live:
                break
            step = min(p.current.step for p in live if p.current is not None)
            mine = [p for p in live if p.current is not None and p.current.step == step]
            offer = mine[0].current
            assert offer is not None
            transport = self.transports.by_name(offer.transport)
            if not self.may_call(transport):
                # Offline: these recipients wait in the Outbox for this very transport, the one
                # online routing gives them next, until Send/Receive (or going online) calls it.
                for p in mine:
                    pending.remove(p)
                    waits.append(p.wait(transport.name, NOT_CALLED_OFFLINE))
                offline = True
                result.count(transport.name, Fate.WAITING, len(mine))
                continue
            outcome: _Wait | None = await self._held_back(transport, message_id)
            handled: set[int] = set()
            if outcome is None:
                tried_at = tried_at or self.clock()
                outcome, handled = await self._offer(message, message_id, transport, mine, result, failures)
            for p in mine:
                if p.recipient.row_id in handled:
                    pending.remove(p)
            if outcome is None:
                continue
            left = [p for p in mine if p in pending]  # the transport asked these to wait
            for p in left:
                pending.remove(p)
            if outcome.failure and self._lifetime_over(first_try or tried_at):
                self._expire(message, message_id, left, outcome.reason, result)
                continue
            retry_waits.append(outcome)
            for p in left:
                words = p.detail or outcome.detail or outcome.reason
                waits.append(p.wait(transport.name, words))
                result.count(transport.name, Fate.DEFERRED)

        # Recipients no transport took: NDR (MAPI_REASON_TRANSFER_IMPOSSIBLE, spec §13).
        leftovers = [p for p in pending if p.current is None]
        if leftovers:
            outcomes = [
                RecipientOutcome(
                    row_id=p.recipient.row_id,
                    state=RecipientState.FAILED,
                    transport="",
                    props={
                        T.PR_NDR_REASON_CODE: int(NDRReason.TRANSFER_IMPOSSIBLE),
                        T.PR_NDR_DIAG_CODE: int(NDRDiag.NO_DIAGNOSTIC),
                        T.PR_REPORT_TEXT: p.last_error or self._no_transport_text(p, router),
                    },
                    report=self._ndr_wanted(message),
                )
                for p in leftovers
            ]
            self._stash(message_id, outcomes, result)
            result.count("", Fate.FAILED, len(outcomes))

        owed_before = any(st.state.final and not st.reported for st in states.values())
        if owed_before or any(o.report for o in self._unflushed.get(message_id, [])):
            await self._flush(message_id)
            await self._send_reports(message_id, message)

        if retry_waits:
            delay = min(w.seconds for w in retry_waits)
            reason = "; ".join(dict.fromkeys(w.reason for w in retry_waits))
            next_attempt = self.clock() + timedelta(seconds=delay)
            kinds = {w.kind for w in retry_waits}
            kind = kinds.pop() if len(kinds) == 1 else WaitKind.RETRY
            expires = self._expiry(first_try or tried_at)
            if expires is not None and kind is WaitKind.RETRY:
                next_attempt = min(next_attempt, max(expires, self.clock()))  # come back in time to expire it
            failed = any(w.failure for w in retry_waits)
            await self._release(message_id, next_attempt, reason, kind, waits, tried_at, failed)
            if kind is WaitKind.PAUSED:
                await self._unless_closed_meanwhile({w.transport for w in waits})
            result.next_attempt = next_attempt
            result.errors.append(reason)
        elif offline:
            # Not an error: nothing is marked failed, the message waits quietly in the Outbox.
            await self._release(message_id, None, OFFLINE_TEXT, WaitKind.SEND_RECEIVE, waits, tried_at)
            result.offline = True
        else:
            result.finished = await self.commit.finish(message_id, self.owner, self.clock(), self._take(message_id))
        return result

    async def _release(
        self,
        message_id: int,
        when: datetime | None,
        reason: str,
        kind: WaitKind,
        waits: Sequence[RecipientWait],
        tried_at: datetime | None,
        failed: bool = False,
    ) -> None:
        await self.write(
            functools.partial(self.store.release, tried_at=tried_at, failed=failed),
            message_id,
            self.owner,
            self.clock(),
            when,
            reason,
            kind,
            self._take(message_id),
            waits,
        )

    # Reliability rules ------------------------------------------------------------------------------
    async def _outcome_unknown(self, message_id: int, previous: str) -> bool:
        """The previous spooler died holding this message: a transport may have sent it already.

        Policy "resend" (the default) goes on: at least once, with the same Message-ID so the
        receiver can de-duplicate. Policy "hold" parks it for an operator. Returns whether to go on.
        """
        now = self.clock()
        text = f"outcome unknown: spooler {previous} stopped while it held this message"
        if self.settings.crash_policy == "hold":
            await self.write(
                self.store.add_event,
                message_id,
                now,
                EventKind.OUTCOME_UNKNOWN,
                text + "; held for an operator (policy hold)",
            )
            await self.write(self.store.hold, message_id, now, text, self.owner)
            return False
        await self.write(
            self.store.add_event,
            message_id,
            now,
            EventKind.OUTCOME_UNKNOWN,
            text + "; resending with the same Message-ID",
        )
        return True

    def _expiry(self, first_try: datetime | None) -> datetime | None:
        """When the queue lifetime runs out: max_queue_lifetime_hours after the first real attempt."""
        hours = self.settings.max_queue_lifetime_hours
        if not hours or first_try is None:
            return None
        return first_try + timedelta(hours=hours)

    def _lifetime_over(self, first_try: datetime | None) -> bool:
        expires = self._expiry(first_try)
        return expires is not None and self.clock() >= expires

    def _expire(
        self, message: MessageData, message_id: int, pending: Sequence[_Pending], last_error: str, result: MessageResult
    ) -> None:
        """An attempt failed after the queue lifetime ran out: these recipients get an NDR (as
        Postfix's maximal_queue_lifetime: only a failure ends the wait, never the clock alone)."""
        hours = self.settings.max_queue_lifetime_hours
        text = f"Maximum time expired: not delivered within {hours:g} hours. Last error: {last_error}"
        outcomes = [
            RecipientOutcome(
                p.recipient.row_id,
                RecipientState.EXPIRED,
                "",
                {
                    T.PR_NDR_REASON_CODE: int(NDRReason.TRANSFER_FAILED),
                    T.PR_NDR_DIAG_CODE: int(NDRDiag.MAXIMUM_TIME_EXPIRED),
                    T.PR_REPORT_TEXT: text,
                },
                report=self._ndr_wanted(message),
            )
            for p in pending
        ]
        self._stash(message_id, outcomes, result)
        result.count("", Fate.FAILED, len(outcomes))

    async def _delay_warning(
        self, message: MessageData, message_id: int, pending: Sequence[_Pending], first_try: datetime
    ) -> None:
        hours = self.settings.delay_warning_hours
        if not hours or self.clock() < first_try + timedelta(hours=hours):
            return
        if any(e.kind == EventKind.DELAY_WARNING for e in self.store.events(message_id)):
            return
        now = self.clock()
        entry = self.store.queue_entry(message_id)
        why = entry.last_error if entry and entry.last_error else "not yet delivered"
        rows = [ReportRow(p.recipient, now, True, text=f"Delayed: {why}; still trying") for p in pending]
        report = delay_report(message, rows, now)
        deliver = with_sender_copy(
            self.store,
            self.store.deliver_message,
            sender_copy(message, report, rows, now, self.settings.sender_reports),
            now,
        )
        await self.write(deliver, self._report_folder(message, report.message_class), report, now)
        await self.write(
            self.store.add_event,
            message_id,
            now,
            EventKind.DELAY_WARNING,
            f"{len(rows)} recipient(s) delayed for {hours:g} h",
        )

    async def wake_probes(self) -> None:
        """For each paused transport whose rest is over, make one parked message due to probe it."""
        now = self.clock()
        t = _epoch(now)
        for transport in self.transports.transports:
            try:
                at = _probe_time(self._breaker(transport.name, t))
            except MAPIError as exc:  # the store is away: the pass meets it where it matters
                if exc.code != HResult.MAPI_E_NETWORK_ERROR:
                    raise
                return
            if at is not None and at <= t:
                await self.write(self.store.wake_paused, transport.name, now, 1)

    def next_probe(self) -> datetime | None:
        """When the next paused transport may be probed (the daemon wakes up for it)."""
        t = _epoch(self.clock())
        times = [at for x in self.transports.transports if (at := _probe_time(self._breaker(x.name, t))) is not None]
        return from_epoch(min(times)) if times else None

    async def _unless_closed_meanwhile(self, transports: set[str]) -> None:
        """A message parked behind a breaker that another worker closed while this one decided (from
        its cached state) is woken at once: the closer's wake may have come before the parking."""
        for name in transports:
            if self.store.breaker_state(name).get("open_until") is None:
                await self.write(self.store.wake_paused, name, self.clock())

    def _prober(self, message_id: int) -> str:
        """Who probes a paused transport: one message of one spooler, so exactly one call goes out."""
        return f"{self.owner}#{message_id}"

    async def _held_back(self, transport: LoadedTransport, message_id: int) -> _Wait | None:
        """A paused (circuit breaker) or throttled transport makes its recipients wait, without calling it.

        Both hold across every spooler process on the store: the breaker state and the throttle
        counts are kept in the store and changed atomically there.
        """
        policy = self.policy_of(transport)
        now = self.clock()
        t = _epoch(now)
        state = self._breaker(transport.name, t)
        if state.get("open_until") is not None:
            until = breaker_blocked_until(state, t)
            if until is None:  # the rest is over: one message, in one process, probes it
                probe = min(policy.breaker_seconds, 300.0)
                state = await self.write(
                    self.store.update_breaker_state,
                    transport.name,
                    lambda s: breaker_probe(s, t, self._prober(message_id), probe),
                    now,
                )
                self._breakers[transport.name] = (t, state)
                # Decided in the store's transaction: closed meanwhile (go on), ours to probe (go on),
                # or resting again / probed by another message (wait).
                if state.get("open_until") is not None and state.get("probe_owner") != self._prober(message_id):
                    until = _probe_time(state) or t + 1
            if until is not None:
                text = (
                    f"{transport.name} paused after repeated network errors ({state.get('last_error', '')}); "
                    f"probe at {from_epoch(until):%H:%M:%S}"
                )
                # Parked until one message has probed the transport and it works again: a paused
                # transport's backlog costs nothing meanwhile (wake_probes, wake_paused).
                return _Wait(PAUSED_SECONDS, text, WaitKind.PAUSED, failure=False)
        limits = policy.throttle_limits()
        if limits:
            wait = await self.write(self.store.reserve_send, transport.name, now, limits, self.owner)
            if wait > 0:
                self.pass_totals.add_throttle_wait(transport.name)
                return _Wait(
                    wait, f"{transport.name} throttled: limit reached, next slot in {wait:.0f} s", failure=False
                )
        return None

    @staticmethod
    def _no_transport_text(p: _Pending, router: Router) -> str:
        r = p.recipient
        if p.offers:
            tried = ", ".join(o.transport for o in p.offers)
            return f"No transport accepted {r.address} (offered to: {tried})"
        skipped = router.route(r.address_type, r.provider_uid, r.email_address).skipped
        if skipped:
            why = "; ".join(f"{k.offer.transport} {k.reason}" for k in skipped)
            return f"No transport takes {r.address} ({why})"
        return f"No transport in this profile accepts the address type {r.address_type!r} of {r.address}"

    @staticmethod
    def _ndr_wanted(message: MessageData) -> bool:
        return message.get(T.PR_ORIGINATOR_NON_DELIVERY_REPORT_REQUESTED, True) is not False

    async def _run_preprocessors(self, message: MessageData, pending: Sequence[_Pending]) -> None:
        """Preprocessors of a transport run only for messages that transport will handle (§5.5)."""
        first_choice: dict[str, list[Recipient]] = {}
        for p in pending:
            if p.current is not None:
                first_choice.setdefault(p.current.transport, []).append(p.recipient)
        for pre in self.transports.preprocessors:
            recips = first_choice.get(pre.transport, [])
            if pre.address_type:
                recips = [r for r in recips if r.address_type.upper() == pre.address_type]
            if pre.uid:
                recips = [r for r in recips if r.provider_uid == pre.uid]
            if not recips:
                continue
            view = OutboundMessage(
                message, [OutboundRecipient(r, r not in recips) for r in message.recipients], 0, False
            )
            await call_transport(pre.function, view)

    async def _offer(
        self,
        message: MessageData,
        message_id: int,
        transport: LoadedTransport,
        mine: list[_Pending],
        result: MessageResult,
        failures: int = 1,
    ) -> tuple[_Wait | None, set[int]]:
        """Call one transport for its recipients.

        Returns (seconds, why) when the remaining ones must wait, and the rows it handled.
        """
        logon = transport.logon
        assert logon is not None
        mine_rows = {p.recipient.row_id for p in mine}
        deferred = bool(message.get(T.PR_SPOOLER_STATUS))
        done: set[int] = set()
        for _attempt in range(MAX_RESEND_NOW + 1):
            view = OutboundMessage(
                message,
                [OutboundRecipient(r, r.row_id not in mine_rows) for r in message.recipients],
                self._next_ref(),
                deferred,
            )
            await self._flush(message_id)  # earlier answers are durable before the next transport is called
            await self._start(message_id)
            self._sending[transport.name] += 1
            transport.status.set(add=StatusCode.OUTBOUND_ACTIVE)
            policy = self.policy_of(transport)
            self._calling.add(message_id)
            try:
                answer: SubmitResult | None = await call_transport(
                    logon.submit_message, view, BEGIN_DEFERRED if deferred else 0
                )
                if answer is None:  # a plain "return" from a transport means S_OK
                    answer = SubmitResult.ok()
                end = EndMessageFlags.NONE
                if answer.code == HResult.S_OK:
                    end = EndMessageFlags(await call_transport(logon.end_message, view.ref) or 0)
            except Exception as exc:  # a transport's bug fails this message for that transport alone
                self._calling.discard(message_id)
                summary = error_summary(exc)
                log.warning("transport %s raised on message %s: %s", transport.name, message_id, summary)
                await self.write(
                    self.store.add_event, message_id, self.clock(), EventKind.TRANSPORT_ERROR, summary, transport.name
                )
                result.errors.append(f"{transport.name}: {summary}")
                for p in mine:
                    p.last_error = f"transport {transport.name} failed: {summary}"
                    p.decline()
                return None, done
            finally:
                self._sending[transport.name] -= 1
                if self._sending[transport.name] <= 0:  # the last call in flight: others may still send
                    del self._sending[transport.name]
                    transport.status.set(remove=StatusCode.OUTBOUND_ACTIVE)

            words = {r.row_id: r.temporary for r in view.recipients if r.temporary}
            for p in mine:
                p.detail = words.get(p.recipient.row_id, "")
            if answer.code != HResult.S_OK:  # every mark of the call is discarded: nothing was sent
                self._calling.discard(message_id)
                return await self._whole_message_answer(message_id, transport, mine, answer, failures), done
            if self._breaker(transport.name, _epoch(self.clock())):
                state = await self.write(self.store.update_breaker_state, transport.name, breaker_closed, self.clock())
                self._breakers[transport.name] = (_epoch(self.clock()), state)
                transport.status.set(remove=StatusCode.FAILURE, text="available")
                await self.write(self.store.wake_paused, transport.name, self.clock())  # it works again

            handled = await self._record_marks(message, message_id, transport, view, result)
            self._calling.discard(message_id)  # the answers are stashed: written by any later store write
            result.count(transport.name, Fate.DELIVERED, sum(1 for r in handled if r.mark and r.mark.delivered))
            result.count(transport.name, Fate.FAILED, sum(1 for r in handled if r.mark and not r.mark.delivered))
            handled_rows = {r.row_id for r in handled}
            done |= handled_rows
            still = [p for p in mine if p.recipient.row_id not in handled_rows]
            if not still:
                return None, done
            if end & EndMessageFlags.RESEND_NOW:
                mine = still
                mine_rows = {p.recipient.row_id for p in mine}
                continue
            if end & EndMessageFlags.RESEND_LATER:
                said = "; ".join(dict.fromkeys(p.detail for p in still if p.detail))
                await self.write(
                    self.store.add_event,
                    message_id,
                    self.clock(),
                    EventKind.RESEND_LATER,
                    "transport asked to resend later" + (f": {said}" if said else ""),
                    transport.name,
                )
                delay = policy.backoff(failures)
                return _Wait(delay, f"{transport.name} asked to resend later" + (f": {said}" if said else "")), done
            if end & EndMessageFlags.DONT_RESEND:
                await self.write(
                    self.store.add_event,
                    message_id,
                    self.clock(),
                    EventKind.DEFERRED,
                    "the transport keeps the message until it notifies SENTDEFERRED",
                    transport.name,
                )
                deferred_wait = _Wait(
                    DEFERRED_BY_TRANSPORT_SECONDS, f"deferred by {transport.name}", WaitKind.DEFERRED, failure=False
                )
                return deferred_wait, done
            for p in still:  # not mine: on to the next matching transport
                p.decline()
            return None, done
        return _Wait(policy.backoff(failures), f"{transport.name} asked to resend too often"), done

    async def _whole_message_answer(
        self, message_id: int, transport: LoadedTransport, mine: list[_Pending], answer: SubmitResult, failures: int
    ) -> _Wait | None:
        code = answer.code
        label = code.name
        text = f"{label}" + (f": {answer.reason}" if answer.reason else "")
        if code in (HResult.MAPI_E_NOT_ME, HResult.MAPI_E_CANCEL):
            await self.write(
                self.store.add_event,
                message_id,
                self.clock(),
                EventKind.NOT_ME if code == HResult.MAPI_E_NOT_ME else EventKind.CANCEL,
                text,
                transport.name,
            )
            for p in mine:
                p.decline()
            return None
        policy = self.policy_of(transport)
        if code == HResult.MAPI_E_UNCONFIGURED:
            transport.status.failed(f"misconfigured: {answer.reason}")
            await self.write(
                self.store.add_event, message_id, self.clock(), EventKind.UNCONFIGURED, text, transport.name
            )
            return _Wait(
                UNCONFIGURED_RECHECK_SECONDS,
                f"{transport.name} misconfigured: {answer.reason}",
                WaitKind.UNCONFIGURED,
                f"misconfigured: {answer.reason}",
                failure=False,  # waits until fixed: a typo in the profile never bounces mail
            )
        if code == HResult.MAPI_E_BUSY:
            delay = policy.backoff(failures)
        elif code in (HResult.MAPI_E_WAIT, HResult.MAPI_E_NETWORK_ERROR):
            # The transport's own "wait n seconds" is honoured exactly; without one, back off.
            delay = answer.wait_seconds if answer.wait_seconds > 0 else policy.backoff(failures)
        else:
            # Any other code: the message is released unsaved for this transport; try the next one.
            await self.write(
                self.store.add_event, message_id, self.clock(), EventKind.TRANSPORT_ERROR, text, transport.name
            )
            for p in mine:
                p.last_error = f"transport {transport.name} answered {text}"
                p.decline()
            return None
        if code == HResult.MAPI_E_NETWORK_ERROR:
            transport.status.failed(text)
            t = _epoch(self.clock())
            before = self._breaker(transport.name, t).get("open_until")
            state = await self.write(
                self.store.update_breaker_state,
                transport.name,
                lambda s: breaker_after_error(s, t, policy, text, self._prober(message_id)),
                self.clock(),
            )
            self._breakers[transport.name] = (t, state)
            if state.get("open_until") is not None and state.get("open_until") != before:
                transport.status.failed(
                    f"paused (circuit breaker) until {from_epoch(state['open_until']):%Y-%m-%d %H:%M:%S}: {text}"
                )
                await self.write(
                    self.store.add_event, message_id, self.clock(), EventKind.CIRCUIT_OPEN, text, transport.name
                )
        await self.write(
            self.store.add_event,
            message_id,
            self.clock(),
            EventKind.WAIT,
            f"{text}; retry in {delay:g} s",
            transport.name,
        )
        return _Wait(delay, f"{transport.name}: {text}", detail=answer.reason or text)

    async def _record_marks(
        self,
        message: MessageData,
        message_id: int,
        transport: LoadedTransport,
        view: OutboundMessage,
        result: MessageResult,
    ) -> list[OutboundRecipient]:
        """Make what the transport said about each recipient durable, in one transaction."""
        handled = [r for r in view.recipients if r.mark is not None]
        dr_requested = bool(message.get(T.PR_ORIGINATOR_DELIVERY_REPORT_REQUESTED))
        outcomes = []
        for r in handled:
            mark = r.mark
            assert mark is not None
            props: dict[int, Any]
            if mark.delivered:
                props = {T.PR_DELIVER_TIME: mark.time}
                if mark.text:
                    props[T.PR_REPORT_TEXT] = mark.text
                # RCPT's NOTIFY=SUCCESS asks for a report even from a relay, which then says so,
                # unless the next hop took the request (RFC 3461 §6.2.2): then it reports, not we.
                success_asked = wants_report(r.row.props, "delivered") is True and not mark.dsn_passed_on
                if success_asked and not mark.report:
                    props[T.PR_POSTROOM_RELAYED] = True
                report = (dr_requested and mark.report) or success_asked
                outcomes.append(
                    RecipientOutcome(r.row_id, RecipientState.DELIVERED, transport.name, props, report=report)
                )
            else:
                props = {
                    T.PR_NDR_REASON_CODE: int(mark.reason),
                    T.PR_NDR_DIAG_CODE: int(mark.diag),
                    T.PR_REPORT_TEXT: mark.text,
                }
                if mark.status_code is not None:
                    props[T.PR_NDR_STATUS_CODE] = int(mark.status_code)
                outcomes.append(
                    RecipientOutcome(
                        r.row_id, RecipientState.FAILED, transport.name, props, report=self._ndr_wanted(message)
                    )
                )
        if outcomes:
            self._stash(message_id, outcomes, result)
        return handled

    async def _send_reports(self, message_id: int, message: MessageData) -> None:
        """One NDR and one DR per pass for the outcomes still owed a report."""
        owed = [s for s in self.store.recipient_states(message_id) if s.state.final and not s.reported]
        if not owed:
            return
        fresh = self.store.open_message(message_id)
        rows = {r.row_id: r for r in fresh.recipients}
        ndr_rows: list[ReportRow] = []
        dr_rows: list[ReportRow] = []
        for s in owed:
            r = rows[s.row_id]
            when = s.outcome_time or self.clock()
            if s.state is RecipientState.DELIVERED:
                dr_rows.append(ReportRow(r, r.get(T.PR_DELIVER_TIME) or when, True, transport=s.transport))
            else:
                dr_or_ndr = ReportRow(
                    r,
                    when,
                    False,
                    reason=int(r.get(T.PR_NDR_REASON_CODE, NDRReason.TRANSFER_FAILED)),
                    diag=int(r.get(T.PR_NDR_DIAG_CODE, NDRDiag.NO_DIAGNOSTIC)),
                    text=str(r.get(T.PR_REPORT_TEXT) or ""),
                    status_code=r.get(T.PR_NDR_STATUS_CODE),
                    transport=s.transport or None,
                )
                ndr_rows.append(dr_or_ndr)
        now = self.clock()
        for rows_, build in ((ndr_rows, non_delivery_report), (dr_rows, delivery_report)):
            if rows_:
                report = build(fresh, rows_, now)
                folder = self._report_folder(fresh, report.message_class)
                copy = sender_copy(fresh, report, rows_, now, self.settings.sender_reports)
                await self.write(
                    with_sender_copy(self.store, self.store.deliver_report, copy, now),
                    message_id,
                    self.owner,
                    report,
                    folder,
                    [r.recipient.row_id for r in rows_],
                    now,
                )

    def _report_folder(self, message: MessageData, report_class: str) -> int:
        """The folder named by PR_REPORT_ENTRYID if it is one of ours, else the receive folder."""
        target = message.get(T.PR_REPORT_ENTRYID)
        if target:
            # PR_REPORT_ENTRYID may name a recipient rather than a folder, or a folder since deleted.
            with contextlib.suppress(MAPIError):
                return self.store.find_folder(bytes(target)).id
        return self.store.get_receive_folder(report_class)[0]
