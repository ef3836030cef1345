"""A change of routing moves the recipients that wait to the transport the new routing gives them.

A waiting recipient is stored with the transport it waits for (`waiting_for`): `flush --transport
X` and Send/Receive of a group wake what waits for their transports, the scheduler sorts messages
into lanes by it, and `queue`/`show` name it. When the routing changes while recipients wait (the
transport order, a service added, removed or reconfigured, a transport's scope), that transport
may no longer be the one online routing gives them: the first transport of the new routing that
has not declined the recipient (declines.py). This module moves them there.

It costs one read of every waiting recipient, so it runs only when the routing changed: the store
keeps the signature of the routing the waiting recipients were last placed by (meta 'routing'),
and a logon whose routing has the same signature does nothing. A process that placed recipients
by an older routing (a daemon that was delivering while another process changed the profile)
places them again once it logs on with the new one, even if the store already has its signature.

A moved recipient whose message waits for Send/Receive, and whose new transport may not be called
now either, keeps waiting quietly ("not called while offline"). Any other moved recipient's
message is made due at once (unless held): its new transport, which never saw it, is offered it
at the next pass, as online routing would; a transport that declined it is not asked again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..store.base import MessageStore, RecipientMove, WaitKind
from .declines import Declines
from .outbound import NOT_CALLED_OFFLINE
from .transports import TransportTable

log = logging.getLogger("postroom.spooler")

#: A moved recipient's words until its next pass.
ROUTED_AGAIN = "the routing changed: offered to it at the next pass"


def routing_signature(table: TransportTable) -> str:
    """A digest of everything routing depends on: the logged-on transports in transport order,
    what each registers (address types, UIDs, scope) and the fingerprint of its configuration."""
    prints = table.fingerprints()
    parts: list[Any] = []
    for name, reg in table.router().transports:
        scope = reg.scope
        parts.append(
            [
                name.lower(),
                prints.get(name.lower(), ""),
                None if reg.address_types is None else [a.upper() for a in reg.address_types],
                [bytes(u).hex() for u in reg.uids],
                None
                if scope is None
                else [
                    scope.description,
                    sorted(scope.domains) if scope.domains is not None else None,
                    scope.pattern.pattern if scope.pattern is not None else None,
                ],
            ]
        )
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def place_waiting(
    store: MessageStore,
    table: TransportTable,
    may_call: Callable[[str], bool],
    now: datetime,
    *,
    seen: str | None = None,
) -> str:
    """Move the waiting recipients if the routing changed; returns the routing's signature.

    `seen`: the signature of the routing this process last placed recipients by (None: none yet).
    `may_call(transport)`: whether that transport may be called now (the mode's rule)."""
    signature = routing_signature(table)
    if store.routing() == signature and seen in (None, signature):
        return signature
    router = table.router()
    prints = table.fingerprints()
    moves: list[RecipientMove] = []
    wake: set[int] = set()
    for w in store.waiting_recipients():
        r = w.recipient
        offers = router.offers(r.address_type, r.provider_uid, r.email_address)
        index = Declines(w.declined, prints).first_open(offers)
        target = offers[index].transport if index < len(offers) else None
        if (target or "").lower() == (w.waiting_for or "").lower():
            continue
        quiet = w.wait_kind is WaitKind.SEND_RECEIVE and target is not None and not may_call(target)
        moves.append(
            RecipientMove(w.message_id, r.row_id, w.waiting_for, target, NOT_CALLED_OFFLINE if quiet else ROUTED_AGAIN)
        )
        if not quiet:
            wake.add(w.message_id)
    moved = store.reroute(moves, sorted(wake), signature, now)
    if moved:
        log.info("the routing changed: %d waiting recipient(s) now wait for another transport", moved)
    return signature
