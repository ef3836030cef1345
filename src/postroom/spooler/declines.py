"""Which transports declined a pending recipient, remembered between passes (spec §5.2).

A transport declines a recipient by leaving it pending ("not mine"), by answering the whole
message MAPI_E_NOT_ME, or by an error that passes the recipient on to the next transport. The
recipient then goes on in its routing. When it has to wait (offline, a retry), the transports
that declined it are stored with it, so that the next pass, and a change of routing meanwhile,
start it at the first transport of the routing *now* that has not declined it: a decliner is
not called again, and a transport the new order puts first, which never saw it, is.

A decline is an answer of a transport as it was configured then, so each one is kept with the
fingerprint of that configuration (its kind, options and provider UID). A transport whose
configuration changed since has not declined the recipient as it is now: it is offered it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from ..profile import Service
from .routing import Offer


def fingerprint(service: Service) -> str:
    """A short digest of what decides a transport's answers: its kind, options and provider UID
    (not call_when_offline, its polling or its retry policy, which change when, not whether)."""
    text = json.dumps([service.kind, bytes(service.provider_uid).hex(), service.options], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Declines:
    """One recipient's declines, read against the transports' configurations now.

    `stored`: transport name (lower case) -> fingerprint when it declined, as in the store;
    `now`: transport name (lower case) -> fingerprint now, for every transport of the session.
    """

    def __init__(self, stored: Mapping[str, str], now: Mapping[str, str]) -> None:
        self.stored = dict(stored)
        self.now = now

    def by(self, transport: str) -> bool:
        """Whether `transport`, as configured now, declined the recipient."""
        name = transport.lower()
        return name in self.stored and self.stored[name] == self.now.get(name)

    def add(self, transport: str) -> None:
        name = transport.lower()
        self.stored[name] = self.now.get(name, "")

    def first_open(self, offers: Sequence[Offer], start: int = 0) -> int:
        """The index of the first offer from `start` on whose transport has not declined the
        recipient (len(offers) when every one has: it needs its NDR)."""
        index = start
        while index < len(offers) and self.by(offers[index].transport):
            index += 1
        return index
