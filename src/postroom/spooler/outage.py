"""Riding out a message store outage: which errors are one, how long to wait, what to log.

A shared store (PostgreSQL) can be unreachable for a while: the server restarts, the network
is cut. The store reports that as MAPI_E_NETWORK_ERROR. The disk under an SQLite store can fill
up (MAPI_E_NOT_ENOUGH_DISK) or fail for a moment (MAPI_E_DISK_ERROR). A running spooler daemon must not die
of it: nothing is lost by waiting, because every claim and outcome is in the store, written
transactionally, and a claim whose outcome could not be written runs out and is taken over
("outcome unknown"). So the daemon waits with capped exponential backoff and carries on by
itself. Any other error is a refusal or a bug and still ends the daemon.
"""

from __future__ import annotations

import logging

from ..mapi.codes import MAPIError, StoreUnavailable, StoreUnreachable

log = logging.getLogger("postroom.spooler")

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


def store_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the message store cannot be used for now (unreachable, disk full, I/O error).

    Transports' network errors never get here: the spooler turns them into their recipients'
    retries, so in the daemon loop these codes can only come from the store.
    """
    return isinstance(exc, StoreUnavailable)


def retry_delay(failures: int, first: float = FIRST_RETRY_SECONDS, cap: float = MAX_RETRY_SECONDS) -> float:
    """Seconds to wait after the `failures`-th failure in a row: first, 2·first, 4·first, … at most cap."""
    if failures <= 1:
        return min(first, cap)
    return min(cap, first * 2.0 ** min(failures - 1, 64))


class StoreOutage:
    """One outage at a time: its start, its failures in a row, and the two log lines around it.

    The first failure is a warning, so the daemon's log says once that the store is gone, and
    the recovery is one too, so the log says when it was back and how long it had been away;
    the retries in between are debug lines (an outage of an hour would otherwise fill the log).
    Times are monotonic seconds, passed in so tests choose them.
    """

    def __init__(self, first: float = FIRST_RETRY_SECONDS, cap: float = MAX_RETRY_SECONDS) -> None:
        self.first = first
        self.cap = cap
        self.since: float | None = None  # when the current outage began; None: the store answers
        self.failures = 0
        self.word = "reachable"  # or "usable": what the store is not, for the log lines

    def failed(self, exc: BaseException, now: float) -> float:
        """Count a failure; returns how long to wait before trying again."""
        self.failures += 1
        delay = retry_delay(self.failures, self.first, self.cap)
        text = exc.message if isinstance(exc, MAPIError) else str(exc)
        if self.since is None:
            self.since = now
            self.word = "reachable" if isinstance(exc, StoreUnreachable) else "usable"
            log.warning("message store un%s: %s; retrying in %g s", self.word, text, delay)
        else:
            gone = now - self.since
            log.debug("message store still un%s after %.1f s: %s; retrying in %g s", self.word, gone, text, delay)
        return delay

    def recovered(self, now: float) -> float | None:
        """The store answered: returns how long the outage lasted (None if there was none)."""
        if self.since is None:
            return None
        gone = now - self.since
        self.since = None
        self.failures = 0
        log.warning("message store %s again after %.1f s; resuming", self.word, gone)
        return gone
