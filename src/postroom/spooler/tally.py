"""Counting recipients: each one once, under the transport that had it, by what became of it.

One tally type for a message's pass, a spooler pass and a Send/Receive, so their totals are
always the sums of their per-transport lines (the transport "" stands for "no transport":
recipients nobody takes, and those whose queue lifetime ran out).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from enum import StrEnum


class Fate(StrEnum):
    """What one pass made of a recipient."""

    DELIVERED = "delivered"
    FAILED = "failed"  # an NDR is owed (or was sent)
    DEFERRED = "deferred"  # the transport asked to try again later (a retry time)
    WAITING = "waiting"  # the transport may not be called now (offline): it waits for Send/Receive


@dataclass
class Counts:
    """Recipients by fate."""

    delivered: int = 0
    failed: int = 0
    deferred: int = 0
    waiting: int = 0

    def add(self, fate: Fate, n: int = 1) -> None:
        setattr(self, fate.value, getattr(self, fate.value) + n)

    def merge(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def total(self) -> int:
        return self.delivered + self.failed + self.deferred + self.waiting


@dataclass
class Tally:
    """Counts per transport, in the order transports first appeared."""

    by_transport: dict[str, Counts] = field(default_factory=dict)

    def count(self, transport: str, fate: Fate, n: int = 1) -> None:
        if n > 0:
            self.of(transport).add(fate, n)

    def of(self, transport: str) -> Counts:
        counts = self.by_transport.get(transport)
        if counts is None:
            counts = self.by_transport[transport] = Counts()
        return counts

    def merge(self, other: Tally) -> None:
        for name, counts in other.by_transport.items():
            self.of(name).merge(counts)

    def totals(self) -> Counts:
        out = Counts()
        for counts in self.by_transport.values():
            out.merge(counts)
        return out

    def by(self, fate: Fate) -> dict[str, int]:
        """{transport: n} for one fate, without the transports that have none."""
        return {name: n for name, c in self.by_transport.items() if (n := getattr(c, fate.value))}

    def __iter__(self) -> Iterator[tuple[str, Counts]]:
        return iter(self.by_transport.items())


class Tallied:
    """The totals of anything that keeps a `tally` (a message's pass, a spooler pass)."""

    tally: Tally

    @property
    def delivered(self) -> int:
        return self.tally.totals().delivered

    @property
    def failed(self) -> int:
        return self.tally.totals().failed

    @property
    def waiting(self) -> int:
        """Recipients still pending: deferred to a retry, or waiting for Send/Receive."""
        totals = self.tally.totals()
        return totals.deferred + totals.waiting

    @property
    def delivered_by(self) -> dict[str, int]:
        return self.tally.by(Fate.DELIVERED)

    @property
    def failed_by(self) -> dict[str, int]:
        return self.tally.by(Fate.FAILED)
