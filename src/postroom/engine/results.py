"""What the engine hands back: the lines and totals of a Send/Receive, a receive run's count, and
the routing dry run for one address."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..addressing import ParsedAddress
from ..spooler import PassSummary
from ..spooler.routing import Offer, Skip
from ..spooler.tally import Counts


@dataclass
class TransportFlush:
    """One line of a Send/Receive summary: the recipients a transport had, and what it received.

    `waiting` counts recipients that wait for this transport because it may not be called now
    (offline, outside the group); `deferred` those it asked to try again later.
    """

    transport: str  # "" for recipients no transport takes (their NDRs)
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    waiting: int = 0
    received: int = 0
    error: str = ""

    def add(self, counts: Counts) -> None:
        self.sent += counts.delivered
        self.failed += counts.failed
        self.deferred += counts.deferred
        self.waiting += counts.waiting


@dataclass
class SendReceiveSummary:
    """What a Send/Receive did, transport by transport; the totals are the sums of the lines.

    The group's transports come first, in transport order. The outbound pass of a flush sends
    every message that is due, so a transport outside the group can have a line too (a
    call-when-offline transport, or one that recipients still wait for), and recipients no
    transport takes are counted on the line of transport "" (no transport).
    """

    group: str
    transports: list[TransportFlush] = field(default_factory=list)

    def entry(self, transport: str) -> TransportFlush:
        for t in self.transports:
            if t.transport.lower() == transport.lower():
                return t
        entry = TransportFlush(transport)
        self.transports.append(entry)
        return entry

    def absorb(self, passes: PassSummary) -> None:
        """Count a spooler pass's recipients under the transports that had them."""
        for name, counts in passes.tally:
            self.entry(name).add(counts)

    @property
    def sent(self) -> int:
        return sum(t.sent for t in self.transports)

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.transports)

    @property
    def deferred(self) -> int:
        return sum(t.deferred for t in self.transports)

    @property
    def waiting(self) -> int:
        return sum(t.waiting for t in self.transports)

    @property
    def received(self) -> int:
        return sum(t.received for t in self.transports)

    @property
    def errors(self) -> list[str]:
        return [f"{t.transport}: {t.error}" for t in self.transports if t.error]

    @property
    def ok(self) -> bool:
        """Nothing failed: no NDR, and every transport could log on, flush and fetch."""
        return self.failed == 0 and not self.errors


class Received(int):
    """How many messages a receive run stored (it is that number), and which transports failed.

    `errors` lists "transport: why" for each transport that could not log on, connect or
    fetch, so a caller can tell "nothing new" from "could not look".
    """

    errors: tuple[str, ...]

    def __new__(cls, count: int, errors: Iterable[str] = ()) -> Received:
        obj = super().__new__(cls, count)
        obj.errors = tuple(errors)
        return obj

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class RouteAnswer:
    """The dry run for one address: who would be offered it first, and who after; and which
    transports of its address type are skipped because their scope leaves it out (and why)."""

    address: ParsedAddress
    offers: tuple[Offer, ...]
    skipped: tuple[Skip, ...] = ()

    @property
    def transport(self) -> str | None:
        return self.offers[0].transport if self.offers else None
