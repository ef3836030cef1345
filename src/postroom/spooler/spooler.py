"""The spooler: takes submitted messages oldest first and runs the outbound algorithm.

It holds nothing a crash can lose: every message it works on is claimed in the store
with a lease, and each transport's answer is recorded before the next call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..store.base import LeaseLost, MessageStore
from .outbound import MessageResult, OutboundProcessor, SpoolerSettings
from .scheduler import FairScheduler, LaneMemory
from .tally import Tallied, Tally
from .transports import LoadedTransport, TransportTable

log = logging.getLogger("postroom.spooler")

DEFAULT_LEASE_SECONDS = 300.0
#: How many messages one spooler works on at once (`spooler_concurrency`). A tick finishes at most
#: that many, and its commit also carries the next batch's claim and started marks (commit.py),
#: so the commits per delivered message cannot fall much below 1 / concurrency: 64 keeps a
#: full-load drain under issue 17's 0.05 (measured 0.025 through a local transport, 0.036 over
#: SMTP on 2 connections), with room for ticks that finish less than a whole batch; 32 would not.
#: Leases cost one statement per interval whatever the number (leases.py), and after a crash only
#: the messages handed to a transport are of unknown outcome, not those claimed ahead. The cost is
#: in the README (what a SIGKILL leaves as outcome unknown, a time-limited pass's overrun).
DEFAULT_CONCURRENCY = 64


def spooler_id() -> str:
    """A name for this spooler process in leases: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class PassSummary(Tallied):
    """What one run over the queue did: running totals, and each message's result when kept.

    A long flush or a spooler daemon keeps only the totals, so memory does not grow with the
    number of messages (`keep=False` in Spooler.process_due).
    """

    messages: list[MessageResult] = field(default_factory=list)
    processed: int = 0
    finished: int = 0
    deferred: int = 0  # messages left waiting (a retry time, or Send/Receive)
    #: Every recipient the pass dealt with, once, under the transport that had it.
    tally: Tally = field(default_factory=Tally)
    cut_short: bool = False  # the pass stopped at its time limit: more may be due

    def add(self, result: MessageResult, keep: bool = True) -> None:
        self.processed += 1
        self.finished += 1 if result.finished else 0
        self.deferred += 1 if (result.next_attempt is not None or result.offline) else 0
        self.tally.merge(result.tally)
        if keep:
            self.messages.append(result)

    def merge(self, other: PassSummary) -> None:
        """Add another pass's totals (not its per-message results)."""
        self.processed += other.processed
        self.finished += other.finished
        self.deferred += other.deferred
        self.tally.merge(other.tally)


class Spooler:
    """Outbound spooling over one store and one session's transports."""

    def __init__(
        self,
        store: MessageStore,
        transports: TransportTable,
        *,
        clock: Callable[[], datetime] | None = None,
        owner: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        concurrency: int = DEFAULT_CONCURRENCY,
        may_call: Callable[[LoadedTransport], bool] = lambda t: True,
        settings: SpoolerSettings | None = None,
    ) -> None:
        self.store = store
        self.transports = transports
        self.clock = clock or (lambda: datetime.now(UTC))
        self.owner = owner or spooler_id()
        self.settings = settings or SpoolerSettings(lease_seconds=lease_seconds)
        self.lease_seconds = self.settings.lease_seconds
        self.concurrency = max(1, concurrency)
        self.processor = OutboundProcessor(store, transports, self.owner, self.clock, may_call, self.settings)
        self.lanes = LaneMemory()  # each due message's lane, from one pass to the next

    async def _record_pass(self, seconds: float) -> None:
        """Count the pass in this process's totals and write them (one upsert, for /metrics); a
        store that cannot take it now loses nothing, the next pass writes the totals again."""
        totals = self.processor.pass_totals
        totals.add_pass(seconds)
        try:
            await self.processor.write(self.store.record_pass, self.owner, self.clock(), totals)
        except Exception as exc:
            log.warning("could not record the pass for /metrics: %s", exc)

    @property
    def may_call(self) -> Callable[[LoadedTransport], bool]:
        return self.processor.may_call

    @may_call.setter
    def may_call(self, rule: Callable[[LoadedTransport], bool]) -> None:
        self.processor.may_call = rule

    async def process_due(
        self,
        limit: int | None = None,
        stop: asyncio.Event | None = None,
        keep: bool = True,
        summary: PassSummary | None = None,
        max_seconds: float | None = None,
    ) -> PassSummary:
        """Claim and process due messages until none is due (or `limit` were processed, or
        `max_seconds` have passed: then `summary.cut_short` says that more may be due).

        Workers take messages fairly across transports (see scheduler.py), each message at most
        once per pass.

        Several messages are worked on concurrently; each is claimed in the store first,
        so another spooler process on the same store never gets the same message. When one
        worker fails (the store is unreachable, or a bug), the others finish the message they
        hold and take no new one, then the pass raises that error: no worker is left running
        behind the caller, and no delivery in flight is cut short. A `summary` passed in is
        filled as messages finish, so the caller can count what a pass cut short achieved.
        """
        if summary is None:
            summary = PassSummary()
        started = time.monotonic()
        remaining = limit
        errors: list[Exception] = []
        await self.processor.wake_probes()
        scheduler = FairScheduler(
            self.store,
            self.transports.router,
            self.owner,
            self.clock,
            self.lease_seconds,
            self.lanes,
            self.processor.write,
            self.processor.leases,
            prestarted=self.processor.commit.prestarted,
        )
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        commit = self.processor.commit
        commit.upcoming = scheduler.upcoming  # a finish's commit marks the messages taken next started

        async def worker() -> None:
            nonlocal remaining
            while (remaining is None or remaining > 0) and not errors:
                if stop is not None and stop.is_set():
                    return  # shutting down: take nothing new; what is in flight finishes
                if deadline is not None and time.monotonic() >= deadline:
                    summary.cut_short = True  # the caller comes back for the rest
                    return
                if remaining is not None:
                    remaining -= 1
                message_id: int | None = None
                try:
                    # A batch is at most one message per worker (fewer near the pass's limit).
                    want = self.concurrency if remaining is None else min(self.concurrency, remaining + 1)
                    message_id = await scheduler.take(self.processor.in_flight, want)
                    if message_id is None:
                        return
                    claimed = scheduler.loaded.pop(message_id, None)
                    summary.add(await self.processor.process(message_id, claimed), keep)
                except LeaseLost as exc:  # e.g. after a store outage longer than the lease
                    log.warning("%s; it is left to the spooler that took it over", exc)
                except Exception as exc:  # the others finish what they hold, then the pass ends with this
                    errors.append(exc)
                finally:
                    if message_id is not None:
                        scheduler.done(message_id)

        try:
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        finally:
            try:
                await scheduler.settle()
            except Exception as exc:  # the store is away: those leases run out instead
                log.warning("could not give back the claimed messages this pass did not reach: %s", exc)
            # Marked but never taken: given back above, and a claim of them is a fresh one.
            commit.upcoming = None
            commit.prestarted.clear()
            if not errors:  # a pass the store's outage cut short is not waited on to record it
                await self._record_pass(time.monotonic() - started)
        if errors:
            raise errors[0]
        summary.messages.sort(key=lambda m: m.message_id)
        return summary
