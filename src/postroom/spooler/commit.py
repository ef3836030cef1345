"""Group commit: the store writes of concurrently processed messages share one durable commit.

Every write still is its own all-or-nothing unit (a savepoint inside the batch), and a worker
goes on only once its write is durable, so "record the outcome right after the transport
answers, before anything else happens to the message" still holds; only the fsync is shared.

The commonest write, finishing a message (its last outcomes, the move to Sent Items), is not
run message by message: every finish queued in a tick goes to the store as one `finish_many`,
a fixed handful of statements for the whole tick (issue 17). Each message still succeeds or
fails alone.

The "started" marks (store.mark_started: a transport is about to be called for a claimed message,
so a crash from here on leaves its outcome unknown) are gathered the same way: every mark queued
in a tick is one `mark_started` statement, in the commit of that tick. A mark is durable before
its transport is called, as an outcome is before the next one. Most marks are folded into a
commit that happens anyway: a commit that finishes n messages frees n workers, who take the next
n claimed messages at once (`upcoming`, the scheduler's queue); those are marked started in the
same statement and commit (`prestarted`), so a worker that takes one writes nothing before calling
its transport. Only a message a worker takes without a finish before it (the first batch of a
pass, a release) waits for a mark of its own, shared with every other of its tick. The price: a
crash in the moment between such a commit and the workers' taking marks those few messages
started although no transport had them yet (outcome unknown: resent, or held under "hold").

Under load the commit also waits a little for company (as PostgreSQL's commit_delay does): when
at least BUSY messages are in flight, a write is committed after at most DELAY seconds, or as
soon as half of those in flight are waiting for it. A transport that answers one message at a
time (SMTP over a couple of connections) would otherwise cost a commit per message; the
messages in flight keep the transport busy meanwhile, so the wait costs latency, not throughput.
With fewer in flight (a spooler keeping up with one-at-a-time submission), finishes and started
marks are committed at least GAP seconds apart: each commit holds SQLite's writer turn and an
fsync, and a commit per message or two kept the submitters waiting for the turn. A claim (any
`write`) is not held back: idle workers wait for it, and two spooler processes whose claims waited
stopped sharing the work fairly (one delivered 64 of 600). Measured on figure 1's pipeline (one
submitter, 10,000 messages): the daemon's CPU per message 0.83 → 0.63 ms with one process and
1.45 → 1.0 ms with two; the price is at most GAP more latency per commit a message waits for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from ..store.base import LeaseLost, MessageStore, RecipientOutcome

R = TypeVar("R")


@dataclass
class _Finish:
    message_id: int
    owner: str
    now: datetime
    outcomes: Sequence[RecipientOutcome]
    future: asyncio.Future[Any]


#: From how many messages in flight a commit waits for company, and how long at most.
BUSY = 16
DELAY = 0.05
#: With fewer in flight, commits are at least this far apart (the first one goes at once).
GAP = 0.01


class GroupCommit:
    """Queue store writes from many coroutines; commit them together at the next loop turn (or,
    under load, a little later: see the module's doc)."""

    def __init__(self, store: MessageStore, in_flight: Callable[[], int] = lambda: 0) -> None:
        self.store = store
        self.in_flight = in_flight
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._finishes: list[_Finish] = []
        self._starts: list[tuple[int, str, asyncio.Future[Any]]] = []
        #: The claimed messages free workers take next, at most n of them (the pass's scheduler).
        self.upcoming: Callable[[int], list[int]] | None = None
        #: Marked started with a finish's commit, not yet taken by a worker (the pass clears it).
        self.prestarted: set[int] = set()
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        #: `_scheduled` is the DELAY timer (not "at the next turn"). Kept apart because uvloop's
        #: timer handles are not asyncio.TimerHandle: an isinstance test never saw them, so under
        #: uvloop every commit waited the whole DELAY (issue 17: a daemon draining over SMTP ran at
        #: 692 msg/s on a quarter of a core, 2,262 msg/s on asyncio's loop).
        self._timed = False
        self._last_flush = float("-inf")  # loop.time() of the last commit
        self.commits = 0
        self.writes = 0

    async def write(self, fn: Callable[..., R], *args: Any) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, args, future))
        self._schedule(loop)
        result: R = await future
        return result

    async def finish(self, message_id: int, owner: str, now: datetime, outcomes: Sequence[RecipientOutcome]) -> str:
        """MessageStore.finish, durable when this returns, with every other finish of the tick."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._finishes.append(_Finish(message_id, owner, now, outcomes, future))
        self._schedule(loop)
        result: str = await future
        return result

    async def start(self, message_id: int, owner: str) -> None:
        """MessageStore.mark_started, durable when this returns, with every other start of the tick;
        LeaseLost if the message was taken over meanwhile (then it must not be sent)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._starts.append((message_id, owner, future))
        self._schedule(loop)
        await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        busy = self.in_flight()
        waiting = len(self._pending) + len(self._finishes) + len(self._starts)
        if busy >= BUSY:
            soon, delay = waiting * 2 >= busy, DELAY
        else:  # a claim (a write, not a finish or a mark) has idle workers waiting: no gap
            delay = self._last_flush + GAP - loop.time()
            soon = delay <= 0 or bool(self._pending)
        if self._scheduled is not None and self._timed and soon:
            self._scheduled.cancel()  # enough company: commit at the next turn
            self._scheduled = None
        if self._scheduled is None:
            self._timed = not soon
            self._scheduled = loop.call_soon(self._flush) if soon else loop.call_later(delay, self._flush)

    def _finish_all(self, finishes: list[_Finish]) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """The tick's finishes, one finish_many per owner (a spooler has one), each answer to its future."""
        out: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        for owner in dict.fromkeys(f.owner for f in finishes):
            mine = [f for f in finishes if f.owner == owner]
            try:
                answers: list[Any] = self.store.finish_many(
                    owner, [(f.message_id, f.outcomes) for f in mine], max(f.now for f in mine)
                )
            except Exception as exc:  # all of these are rolled back (finish_many's savepoint)
                answers = [exc] * len(mine)
            for f, answer in zip(mine, answers, strict=True):
                error = answer if isinstance(answer, Exception) else None
                out.append((f.future, None if error else answer, error))
        return out

    def _start_all(
        self, starts: list[tuple[int, str, asyncio.Future[Any]]], ahead: Sequence[int], ahead_owner: str | None
    ) -> tuple[list[tuple[asyncio.Future[Any], Any, BaseException | None]], set[int]]:
        """The tick's started marks and those of the messages taken next (`ahead`, claimed by
        `ahead_owner`), one mark_started per owner (a spooler has one); and which of `ahead` it marked."""
        out: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        marked: set[int] = set()
        owners = [o for _, o, _ in starts] + ([ahead_owner] if ahead_owner is not None else [])
        for owner in dict.fromkeys(owners):
            mine = [(m, f) for m, o, f in starts if o == owner]
            asked = {m for m, _ in mine}
            extra = [m for m in ahead if m not in asked] if owner == ahead_owner else []
            try:
                held = self.store.mark_started(owner, [m for m, _ in mine] + extra)
            except Exception as exc:  # that statement alone is rolled back (its savepoint)
                out += [(f, None, exc) for _, f in mine]
                continue
            marked |= held.intersection(extra)
            for m, f in mine:
                lost = None if m in held else LeaseLost(f"message {m} is no longer claimed by {owner}")
                out.append((f, None, lost))
        return out, marked

    def _flush(self) -> None:
        ops, self._pending = self._pending, []
        finishes, self._finishes = self._finishes, []
        starts, self._starts = self._starts, []
        self._scheduled = None
        self._timed = False
        self._last_flush = asyncio.get_running_loop().time()
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        ahead: list[int] = []
        if finishes and self.upcoming is not None:  # the workers these finishes free take these next
            ahead = [m for m in self.upcoming(len(finishes)) if m not in self.prestarted]
        marked: set[int] = set()
        try:
            with self.store.batch():
                if starts or ahead:
                    started, marked = self._start_all(starts, ahead, finishes[0].owner if ahead else None)
                    outcomes += started
                for fn, args, future in ops:
                    try:
                        outcomes.append((future, fn(*args), None))
                    except Exception as exc:  # this write alone is rolled back (its savepoint)
                        outcomes.append((future, None, exc))
                if finishes:
                    outcomes += self._finish_all(finishes)
        except Exception as exc:  # the commit itself failed: nothing of the batch is durable
            for future in [op[2] for op in ops] + [f.future for f in finishes] + [st[2] for st in starts]:
                if not future.done():
                    future.set_exception(exc)
            return
        self.commits += 1
        self.writes += len(ops) + len(finishes) + len(starts)
        self.prestarted |= marked  # durable now
        for future, value, error in outcomes:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
