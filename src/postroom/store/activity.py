"""The history words the status page and /metrics count (their value types, QueuePage,
QueueCounts, ActivityBucket and DeliveryStats, are in base.py with the store's other ones).

The history (the events table) is the one record every spooler process writes, on SQLite and on a
shared PostgreSQL store alike, and it is never rewritten: counters and charts read from it count
each delivery once, however many processes made them, and survive restarts. Since schema 6 they
are read from running totals of it kept as it is written (history_totals.py), so a read does not
cost more as the history grows.

What no message's history holds (how long the spooler's passes take, how often a throttle made a
recipient wait) each spooler process keeps as running totals, PassTotals, in a row of its own
(schema 5, spooler_passes; the rows of processes gone for an hour are folded into one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The history words that are a recipient's outcome.
OUTCOME_KINDS = ("delivered", "failed", "expired")
#: The history words that are a temporary failure (the message waits for a retry).
RETRY_KINDS = ("wait", "transport-error")
#: The history words after which a message is no longer queued.
LEFT_KINDS = ("finished", "aborted")

#: Upper bounds (seconds) of the spooler pass duration histogram: an idle pass takes milliseconds,
#: a flush of a large queue minutes.
PASS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0)
#: The spooler_passes row that holds the totals of the processes that are gone (folded into it).
RETIRED_PASSES = "(retired)"


@dataclass
class PassTotals:
    """One spooler process's running totals since it started, kept in memory and written whole at
    the end of each pass (store.record_pass): one statement a pass, none per message.

    Totals rather than increments, so a write lost with the store (an outage) is made good by
    the next pass's, and the row never counts a pass twice.
    """

    passes: int = 0
    seconds: float = 0.0
    #: How many passes took at most each of PASS_BUCKETS (cumulative, as Prometheus has them).
    buckets: list[int] = field(default_factory=lambda: [0] * len(PASS_BUCKETS))
    #: transport -> how often its throttle made a message's recipients wait.
    throttle_waits: dict[str, int] = field(default_factory=dict)

    def add_pass(self, seconds: float) -> None:
        self.passes += 1
        self.seconds += max(0.0, seconds)
        for i, bound in enumerate(PASS_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1

    def add_throttle_wait(self, transport: str) -> None:
        name = transport.lower()
        self.throttle_waits[name] = self.throttle_waits.get(name, 0) + 1
