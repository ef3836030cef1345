"""Recipient routing: which transports are offered a recipient, in which order (spec §5.2).

A pure function of the recipients, the registrations and the transport order, so the
dry run (`postroom route`) and the spooler can never disagree. All UID registrations
are tried first (in transport order), then all address-type registrations (in
transport order, the wildcard "any" matching every type). A transport appears at most
once in a recipient's list: its first match decides its place. A transport whose
registration has a scope (it serves only some domains, say) is left out for the
recipients outside it: it would only answer "not mine". The rule is the same online and
offline; the mode changes when a transport is called, never which one.

Lookups are indexed by UID and by address type, so the cost of routing one recipient
does not grow with the number of transports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from ..transports.spi import Registration


class RoutingPass(StrEnum):
    """How a transport matched a recipient: by the provider UID in its entry ID, or by its address
    type. The UID pass comes first, whatever the transport order."""

    UID = "UID"
    ADDRESS_TYPE = "address type"

    @property
    def rank(self) -> int:
        return 0 if self is RoutingPass.UID else 1


UID_PASS = RoutingPass.UID
ADDRTYPE_PASS = RoutingPass.ADDRESS_TYPE

ANSWERS_KEPT = 65536
"""How many (address type, UID) answers a router keeps; all are dropped when it is full."""


@dataclass(frozen=True, order=True)
class Offer:
    """One place in a recipient's routing: offer it to `transport` at this step (offers sort in
    routing order: "UID" sorts before "address type", as the UID pass comes first)."""

    pass_kind: RoutingPass
    position: int  # the transport's position in transport order
    transport: str

    @property
    def matched_by(self) -> str:
        return self.pass_kind.value

    @property
    def step(self) -> tuple[int, int]:
        """Global order of steps: every recipient's offers are a subsequence of it."""
        return (self.pass_kind.rank, self.position)


@dataclass(frozen=True)
class Skip:
    """A transport that matched a recipient but is not offered it, and why (its scope)."""

    offer: Offer
    reason: str


@dataclass(frozen=True)
class Route:
    """A recipient's routing: the offers in order, and the matching transports skipped."""

    offers: tuple[Offer, ...]
    skipped: tuple[Skip, ...] = ()


class Router:
    """Routing over a fixed list of (transport name, registration), in transport order."""

    def __init__(self, transports: Sequence[tuple[str, Registration]]) -> None:
        self.transports = tuple(transports)  # a tuple: the indexes and answers below depend on it
        self._scoped = any(reg.scope is not None for _, reg in self.transports)
        self._by_uid: dict[bytes, list[int]] = {}
        self._by_type: dict[str, list[int]] = {}
        self._wildcards: list[int] = []
        for pos, (_, reg) in enumerate(self.transports):
            for uid in reg.uids:
                self._by_uid.setdefault(bytes(uid), []).append(pos)
            if reg.is_wildcard:
                self._wildcards.append(pos)
            else:
                for adrtype in reg.named_types():
                    self._by_type.setdefault(adrtype.upper(), []).append(pos)
        # The address-type pass for each named type, the wildcards merged in at their places.
        self._type_pass = {t: sorted(set(ps) | set(self._wildcards)) for t, ps in self._by_type.items()}
        # Answers by UID, then address type, exactly as asked: a hit costs two dict lookups, with no
        # upper-casing or copying of the UID (the recipients' UIDs are shared objects, see
        # provider_uid_of). The router is built anew whenever the transport order or a registration
        # changes (TransportTable), so an answer never outlives what it was computed from.
        self._answers: dict[bytes | None, dict[str, tuple[Offer, ...]]] = {}
        self._answers_kept = 0

    def offers(self, address_type: str, provider_uid: bytes | None, address: str | None = None) -> tuple[Offer, ...]:
        """The transports a recipient is offered to, first chance first.

        With the recipient's `address`, transports whose scope leaves it out are not offered it.
        """
        try:
            matched = self._answers[provider_uid][address_type]
        except KeyError:
            matched = self._answer(address_type, provider_uid)
        except TypeError:  # an unhashable UID (a bytearray) is answered as its bytes
            matched = self._answer(address_type, bytes(provider_uid or b""))
        if not self._scoped or address is None:
            return matched
        return tuple(o for o in matched if self.transports[o.position][1].takes(address_type, address))

    def route(self, address_type: str, provider_uid: bytes | None, address: str) -> Route:
        """The offers for one recipient, with the transports its address skips and why (the dry run)."""
        matched = self.offers(address_type, provider_uid)
        offers: list[Offer] = []
        skipped: list[Skip] = []
        for o in matched:
            reg = self.transports[o.position][1]
            if reg.takes(address_type, address):
                offers.append(o)
            else:
                assert reg.scope is not None
                skipped.append(Skip(o, reg.scope.description))
        return Route(tuple(offers), tuple(skipped))

    def _answer(self, address_type: str, provider_uid: bytes | None) -> tuple[Offer, ...]:
        matched = self._compute(address_type.upper(), bytes(provider_uid) if provider_uid else b"")
        if self._answers_kept >= ANSWERS_KEPT:  # a flood of distinct UIDs must not grow the router
            self._answers.clear()
            self._answers_kept = 0
        self._answers.setdefault(provider_uid, {})[address_type] = matched
        self._answers_kept += 1
        return matched

    def _compute(self, address_type: str, uid: bytes) -> tuple[Offer, ...]:
        seen: set[int] = set()
        out: list[Offer] = []
        for pos in self._by_uid.get(uid, ()) if uid else ():
            seen.add(pos)
            out.append(Offer(UID_PASS, pos, self.transports[pos][0]))
        for pos in self._type_pass.get(address_type, self._wildcards):
            if pos not in seen:
                seen.add(pos)
                out.append(Offer(ADDRTYPE_PASS, pos, self.transports[pos][0]))
        return tuple(out)


def route(
    recipients: Sequence[tuple[str, bytes | None]], transports: Sequence[tuple[str, Registration]]
) -> list[tuple[Offer, ...]]:
    """For each (address type, provider UID), its ordered offers (scopes aside). Empty means NDR."""
    router = Router(transports)
    return [router.offers(adrtype, uid) for adrtype, uid in recipients]
