"""Which due message a spooler worker takes next: fair across transports.

Oldest-first alone lets one slow transport starve the others: 300 messages for a slow SMTP
server, submitted first, hold every worker while a maildir message behind them waits minutes.
So due messages are sorted into lanes, one per transport: the transport a message will be
offered to next (the first step of its pending recipients' routing, where the last pass left
them). A free worker takes the oldest message of the lane with the fewest messages in flight
in this process, so a busy lane never holds more workers than its share while another lane
has work, yet takes them all when it is the only one. A message for a transport that keeps
everyone waiting is delayed by at most the one message a worker is sending.

Candidates are read without locks, oldest first, up to SCAN of them at a time; the chosen one
is then claimed in the store (`claim_message`), which fails harmlessly when another spooler
process took it meanwhile. Every lane with a message among those SCAN is found, so a backlog of
thousands for one transport does not hide another transport's message behind it (Postfix's
active queue has the same kind of bound). Placing a message in its lane means reading its
recipients, so the lane of each due message is remembered across passes (`LaneMemory`) and a
long backlog is read once, not at every pass. They are read again every REREAD_SECONDS even
while the lanes still hold work: a pass without a time limit (deliver(), a Send/Receive) may
last minutes, and a message submitted meanwhile must not wait for its end.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

from ..mapi.message import Recipient
from ..store.base import MessageStore
from .routing import Router

#: Due messages looked at per refill (IDs only); those beyond wait for the ones ahead of them.
SCAN = 20_000
#: Messages whose recipients are read in one query when they are placed in lanes.
CHUNK = 500
#: How often the due messages are read again while the lanes still hold work.
REREAD_SECONDS = 1.0
NO_LANE = ""  # no transport takes any pending recipient: the message only needs its NDR


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
    ) -> None:
        self.store = store
        self.router = router
        self.owner = owner
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.memory = memory or LaneMemory()
        self._lanes: dict[str, deque[int]] = {}  # lane -> due message IDs, oldest first
        self._busy: dict[str, int] = {}  # lane -> messages in flight here
        self._lane_of: dict[int, str] = {}  # in flight: message -> lane
        self._taken: set[int] = set()  # this pass's, in flight or done
        self._read_at = 0.0  # time.monotonic() of the last read of the due messages

    def take(self, in_flight: set[int]) -> int | None:
        """Claim the next message to work on, or None when nothing is due (for now)."""
        while True:
            stale = time.monotonic() - self._read_at >= REREAD_SECONDS
            if (stale or not any(self._lanes.values())) and not self._refill(in_flight):
                return None  # nothing due that this pass has not taken already
            lane = min(
                (name for name, queue in self._lanes.items() if queue),
                key=lambda name: (self._busy.get(name, 0), self._lanes[name][0]),
            )
            message_id = self._lanes[lane].popleft()
            if message_id in in_flight or message_id in self._taken:
                continue
            self._taken.add(message_id)
            self.memory.lanes.pop(message_id, None)  # worked on now: its lane may change
            if self.store.claim_message(self.owner, message_id, self.clock(), self.lease_seconds):
                self._busy[lane] = self._busy.get(lane, 0) + 1
                self._lane_of[message_id] = lane
                return message_id

    def done(self, message_id: int) -> None:
        lane = self._lane_of.pop(message_id, None)
        if lane is not None:
            self._busy[lane] -= 1

    def _refill(self, in_flight: set[int]) -> bool:
        """Read the due messages again, leaving out what this pass took already (a message given
        back due at once must not keep a pass going round it), and sort them into lanes."""
        self._read_at = time.monotonic()
        due = [m for m in self.store.due_messages(self.clock(), SCAN, in_flight) if m not in self._taken]
        if not due:
            self._lanes = {}
            return False
        router = self.router()
        memory = self.memory
        if memory.router is not router:
            memory.router, memory.lanes = router, {}
        unknown = [m for m in due if m not in memory.lanes]
        for start in range(0, len(unknown), CHUNK):
            chunk = unknown[start : start + CHUNK]
            pending = self.store.pending_recipients(chunk)
            for message_id in chunk:
                memory.lanes[message_id] = self._lane(router, pending.get(message_id, []))
        memory.lanes = {m: memory.lanes[m] for m in due}  # what is no longer due is forgotten
        self._lanes = {}
        for message_id in due:
            self._lanes.setdefault(memory.lanes[message_id], deque()).append(message_id)
        return True

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
