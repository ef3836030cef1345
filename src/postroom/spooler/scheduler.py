"""Which due message a spooler worker takes next: fair across transports.

Oldest-first alone lets one slow transport starve the others: 300 messages for a slow SMTP
server, submitted first, hold every worker while a maildir message behind them waits minutes.
So due messages are sorted into lanes, one per transport: the transport a message will be
offered to next (the first step of its pending recipients' routing, where the last pass left
them). A free worker takes the oldest message of the lane with the fewest messages in flight
in this process, so a busy lane never holds more workers than its share while another lane
has work, yet takes them all when it is the only one. A message for a transport that keeps
everyone waiting is delayed by at most the one message a worker is sending.

Candidates are read without locks, oldest first, up to SCAN of them at a time. A free worker
that finds no claimed message waiting picks a batch (up to one per worker, lane by lane as
above) and claims it with one statement (`claim_messages`, through the group commit, so the
claim shares its commit with the outcomes of the same tick); a message another spooler process
took meanwhile is left out harmlessly. The batch's bags, recipients and attachments are then
read with one query each (`load_claimed`), and the workers take the claimed messages in the
order they were picked. The messages that workers already waiting for this claim take at once
are marked started in the claim's own transaction (`prestarted`, as commit.py does for a finish):
a spooler that keeps up with one-at-a-time submission works in passes of a few messages, and a
started mark of their own cost each such pass a commit, holding the store's writer turn while
submitters wait for it (issue 17, figure 1). A claim made ahead, while every worker is busy,
marks nothing. A claimed message waits at most for one worker to come free; its lease
is renewed meanwhile with every other lease the spooler holds (leases.py), and one found lost is
skipped. Those no worker took when the pass ends are given back as if never claimed (`unclaim`).

Every lane with a message among those SCAN is found, so a backlog of
thousands for one transport does not hide another transport's message behind it (Postfix's
active queue has the same kind of bound). Placing a message in its lane means reading its
recipients, so the lane of each due message is remembered across passes (`LaneMemory`) and a
long backlog is read once, not at every pass. Messages are placed CHUNK at a time: the first
chunk at the read, one more at each claim, so a message behind a backlog of k is found within
k / CHUNK claims, and a pass that takes a few messages out of 100,000 due does not read the
recipients of 20,000 first (figure 8: that read cost a 300-message pass 0.9 s, 3× per message).
The due messages are read again every REREAD_SECONDS even while the lanes still hold work: a pass
without a time limit (deliver(), a Send/Receive) may last minutes, and a message submitted
meanwhile must not wait for its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from ..mapi.message import Recipient
from ..store.base import ClaimedMessage, MessageStore
from .leases import LeaseKeeper
from .routing import Router

#: Due messages looked at per refill (IDs only); those beyond wait for the ones ahead of them.
SCAN = 20_000
#: Messages whose recipients are read in one query when they are placed in lanes.
CHUNK = 500
#: How often the due messages are read again while the lanes still hold work.
REREAD_SECONDS = 1.0
NO_LANE = ""  # no transport takes any pending recipient: the message only needs its NDR


async def _write_now(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class LaneMemory:
    """The lane of each due message, kept by a spooler from one pass to the next.

    A message's lane changes only when its pending recipients do, that is when a spooler works
    on it: a message this spooler claims is forgotten, and so is one that is no longer due. One
    that another spooler process worked on meanwhile may sit in its old lane for a pass; that
    costs fairness for a moment, never a delivery. A new routing forgets everything."""

    def __init__(self) -> None:
        self.router: Router | None = None
        self.lanes: dict[int, str] = {}


class FairScheduler:
    """Picks and claims messages for one pass of one spooler's workers (in one event loop).

    Each message is taken at most once per pass, so a pass always ends."""

    def __init__(
        self,
        store: MessageStore,
        router: Callable[[], Router],
        owner: str,
        clock: Callable[[], datetime],
        lease_seconds: float,
        memory: LaneMemory | None = None,
        write: Callable[..., Awaitable[Any]] | None = None,
        leases: LeaseKeeper | None = None,
        prestarted: set[int] | None = None,
    ) -> None:
        self.store = store
        #: Marked started with their claim, not yet taken by a worker (the group commit's set, which
        #: the pass clears; None: every worker marks its own).
        self.prestarted = prestarted
        self._waiting = 0  # workers waiting in take() for the claim under way
        #: Who renews the claims (the spooler's keeper, shared with its deliveries).
        self.leases = leases or LeaseKeeper(store, owner, clock, lease_seconds)
        #: How claims are written (the spooler's group commit); else each one commits alone.
        self.write = write or _write_now
        self._claiming: asyncio.Future[bool] | None = None  # the claim under way
        self._claim_task: asyncio.Task[None] | None = None
        self._claim_error: Exception | None = None
        self._dry = False  # the last claim found nothing due: claim ahead no more
        self._ready: deque[int] = deque()  # claimed, not yet taken
        #: The claimed messages' reads, by ID, until a worker takes each (pop it).
        self.loaded: dict[int, ClaimedMessage] = {}
        self.router = router
        self.owner = owner
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.memory = memory or LaneMemory()
        self._lanes: dict[str, deque[int]] = {}  # lane -> due message IDs, oldest first
        self._unplaced: deque[int] = deque()  # due, lane not known yet (placed CHUNK at a time)
        self._busy: dict[str, int] = {}  # lane -> messages in flight here
        self._lane_of: dict[int, str] = {}  # in flight: message -> lane
        self._taken: set[int] = set()  # this pass's, in flight or done
        self._read_at = 0.0  # time.monotonic() of the last read of the due messages

    async def take(self, in_flight: set[int], want: int = 1) -> int | None:
        """The next claimed message to work on, or None when nothing is due (for now). Its batch's
        reads are in `loaded`.

        Claims run one at a time, in batches of up to `want`; every worker waiting for one wakes
        when its batch is in, so they reach their transports (and their finishes share a commit)
        together. When a worker takes a message and fewer than `want` are left waiting, the next
        batch is claimed at once, in the background: its claim then shares the commit of the
        outcomes written in the same tick, instead of costing a commit of its own."""
        while True:
            if self._claim_error is not None:
                error, self._claim_error = self._claim_error, None
                raise error
            if self._ready:
                message_id = self._pop_ready()
                if message_id is None:
                    continue
                if len(self._ready) < want and self._claiming is None and not self._dry:
                    self._start_claim(in_flight, want)
                return message_id
            claiming = self._claiming or self._start_claim(in_flight, want)
            self._waiting += 1
            try:
                found = await asyncio.shield(claiming)
            finally:
                self._waiting -= 1
            if not found and not self._ready and self._claim_error is None:
                return None  # nothing due that this pass has not taken already

    def _pop_ready(self) -> int | None:
        message_id = self._ready.popleft()
        if message_id not in self.leases.lost:
            return message_id
        # Taken over while it waited for a worker (the renewals could not reach the store in time).
        self.leases.drop([message_id])
        self.loaded.pop(message_id, None)
        self.done(message_id)
        return None

    def upcoming(self, n: int) -> list[int]:
        """The (at most n) claimed messages the next free workers take, in order (commit.py)."""
        return [m for m in itertools.islice(self._ready, n) if m not in self.leases.lost]

    def _start_claim(self, in_flight: set[int], want: int) -> asyncio.Future[bool]:
        claiming: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._claiming = claiming

        async def claim() -> None:
            found = True  # after an error a waiting worker raises it (take)
            try:
                found = await self._claim_batch(in_flight, max(1, want))
            except Exception as exc:
                self._claim_error = exc
            finally:
                self._dry = not found
                self._claiming = None
                claiming.set_result(found)

        self._claim_task = asyncio.create_task(claim())
        return claiming

    async def settle(self) -> None:
        """The pass ends: let a claim under way finish, then give back what no worker took."""
        if self._claim_task is not None:
            with contextlib.suppress(Exception):
                await self._claim_task
        self.unclaim_waiting()

    async def _claim_batch(self, in_flight: set[int], want: int) -> bool:
        """Pick up to `want` messages, lane by lane, and claim them together; False when none is due."""
        stale = time.monotonic() - self._read_at >= REREAD_SECONDS
        if (stale or not self._any_due()) and not self._refill(in_flight):
            return False
        self._place(CHUNK)  # the backlog's next chunk: its lanes compete from this claim on
        while self._unplaced and not any(self._lanes.values()):
            self._place(CHUNK)
        busy = dict(self._busy)
        picked: list[tuple[int, str]] = []
        while len(picked) < want and any(self._lanes.values()):
            lane = min(
                (name for name, queue in self._lanes.items() if queue),
                key=lambda name: (busy.get(name, 0), self._lanes[name][0]),
            )
            message_id = self._lanes[lane].popleft()
            if message_id in in_flight or message_id in self._taken:
                continue
            self._taken.add(message_id)
            self.memory.lanes.pop(message_id, None)  # worked on now: its lane may change
            busy[lane] = busy.get(lane, 0) + 1
            picked.append((message_id, lane))
        if not picked:
            return True  # only messages taken already were left: read the due ones again
        ids = [m for m, _ in picked]
        in_order, marked = await self.write(self._claim_and_mark, ids)
        claimed = set(in_order)
        self.leases.hold(claimed)
        if self.prestarted is not None:
            self.prestarted |= marked  # durable now, before any waiting worker wakes
        for message_id, lane in picked:
            if message_id in claimed:
                self._busy[lane] = self._busy.get(lane, 0) + 1
                self._lane_of[message_id] = lane
                self._ready.append(message_id)
        if claimed:
            self.loaded.update(self.store.load_claimed([m for m in ids if m in claimed]))
        return True

    def _claim_and_mark(self, ids: list[int]) -> tuple[list[int], set[int]]:
        """Claim `ids`; in the same transaction, mark started those that the workers waiting now
        take first (the front of the ready queue, in claim order). Run by the group commit, so the
        number waiting is read when the batch is written. A mark that fails costs nothing: those
        workers mark their messages themselves."""
        claimed = self.store.claim_messages(self.owner, ids, self.clock(), self.lease_seconds)
        takers = 0 if self.prestarted is None else max(0, self._waiting - len(self._ready))
        marked: set[int] = set()
        if takers and claimed:
            try:
                marked = self.store.mark_started(self.owner, claimed[:takers])
            except Exception:  # that statement alone is rolled back (its savepoint)
                marked = set()
        return claimed, marked

    def done(self, message_id: int) -> None:
        lane = self._lane_of.pop(message_id, None)
        if lane is not None:
            self._busy[lane] -= 1

    def unclaim_waiting(self) -> None:
        """The pass ends: the claimed messages no worker took are given back untouched."""
        ids = list(self._ready)
        self._ready.clear()
        for message_id in ids:
            self.loaded.pop(message_id, None)
            self.done(message_id)
        self.leases.drop(ids)
        if ids:
            self.store.unclaim(self.owner, ids)

    def _any_due(self) -> bool:
        return bool(self._unplaced) or any(self._lanes.values())

    def _refill(self, in_flight: set[int]) -> bool:
        """Read the due messages again, leaving out what this pass took already (a message given
        back due at once must not keep a pass going round it); those with a remembered lane go
        into it, the others wait to be placed (`_place`)."""
        self._read_at = time.monotonic()
        due = [m for m in self.store.due_messages(self.clock(), SCAN, in_flight) if m not in self._taken]
        self._lanes, self._unplaced = {}, deque()
        if not due:
            return False
        memory = self.memory
        router = self.router()
        if memory.router is not router:
            memory.router, memory.lanes = router, {}
        memory.lanes = {m: memory.lanes[m] for m in due if m in memory.lanes}  # no longer due: forgotten
        for message_id in due:
            lane = memory.lanes.get(message_id)
            if lane is None:
                self._unplaced.append(message_id)
            else:
                self._lanes.setdefault(lane, deque()).append(message_id)
        return True

    def _place(self, n: int) -> None:
        """Read the recipients of the next `n` unplaced due messages and put each in its lane."""
        if not self._unplaced:
            return
        chunk = [self._unplaced.popleft() for _ in range(min(n, len(self._unplaced)))]
        router = self.router()
        memory = self.memory
        if memory.router is not router:
            memory.router, memory.lanes = router, {}
        pending = self.store.pending_recipients(chunk)
        for message_id in chunk:
            lane = memory.lanes[message_id] = self._lane(router, pending.get(message_id, []))
            self._lanes.setdefault(lane, deque()).append(message_id)

    @staticmethod
    def _lane(router: Router, recipients: list[tuple[Recipient, str | None]]) -> str:
        """The transport the message's pending recipients are offered to first in the next pass."""
        best: tuple[tuple[int, int], str] | None = None
        for r, waiting_for in recipients:
            offers = router.offers(r.address_type, r.provider_uid, r.email_address)
            if not offers:
                continue
            start = offers[0]
            if waiting_for:
                start = next((o for o in offers if o.transport.lower() == waiting_for.lower()), start)
            if best is None or start.step < best[0]:
                best = (start.step, start.transport)
        return best[1].lower() if best is not None else NO_LANE
