"""Which due message a spooler worker takes next: fair across transports.

Oldest-first alone lets one slow transport starve the others: 300 messages for a slow SMTP
server, submitted first, hold every worker while a maildir message behind them waits minutes.
So due messages are sorted into lanes, one per transport: the transport a message will be
offered to next (the first step of its pending recipients' routing, where the last pass left
them). A free worker takes the oldest message of the lane with the fewest messages in flight
in this process, so a busy lane never holds more workers than its share while another lane
has work, yet takes them all when it is the only one. A message for a transport that keeps
everyone waiting is delayed by at most the one message a worker is sending.

Candidates are read without locks, a window at a time, oldest first; the chosen one is then
claimed in the store (`claim_message`), which fails harmlessly when another spooler process
took it meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ..mapi.message import Recipient
from ..store.base import MessageStore
from .routing import Router

#: Due messages looked at per refill: enough to find every lane that has work.
WINDOW = 256
NO_LANE = ""  # no transport takes any pending recipient: the message only needs its NDR


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
    ) -> None:
        self.store = store
        self.router = router
        self.owner = owner
        self.clock = clock
        self.lease_seconds = lease_seconds
        self._lanes: dict[str, list[int]] = {}  # lane -> due message IDs, oldest first
        self._busy: dict[str, int] = {}  # lane -> messages in flight here
        self._lane_of: dict[int, str] = {}  # in flight: message -> lane
        self._taken: set[int] = set()  # this pass's, in flight or done

    def take(self, in_flight: set[int]) -> int | None:
        """Claim the next message to work on, or None when nothing is due (for now)."""
        while True:
            if not any(self._lanes.values()) and not self._refill(in_flight):
                return None  # nothing due that this pass has not taken already
            lane = min(
                (name for name, queue in self._lanes.items() if queue),
                key=lambda name: (self._busy.get(name, 0), self._lanes[name][0]),
            )
            message_id = self._lanes[lane].pop(0)
            if message_id in in_flight or message_id in self._taken:
                continue
            self._taken.add(message_id)
            if self.store.claim_message(self.owner, message_id, self.clock(), self.lease_seconds):
                self._busy[lane] = self._busy.get(lane, 0) + 1
                self._lane_of[message_id] = lane
                return message_id

    def done(self, message_id: int) -> None:
        lane = self._lane_of.pop(message_id, None)
        if lane is not None:
            self._busy[lane] -= 1

    def _refill(self, in_flight: set[int]) -> bool:
        """Read the next window of due messages, leaving out what this pass took already (a message
        given back due at once must not keep a pass going round it)."""
        window = self.store.due_messages(self.clock(), WINDOW, in_flight)
        due = [m for m in window if m not in self._taken]
        if not due:
            return False
        router = self.router()
        pending = self.store.pending_recipients(due)
        self._lanes = {}
        for message_id in due:
            lane = self._lane(router, pending.get(message_id, []))
            self._lanes.setdefault(lane, []).append(message_id)
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
