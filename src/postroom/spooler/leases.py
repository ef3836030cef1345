"""Keeping a spooler's claims alive: one task and one statement per interval for all of them.

A claim is a lease (store/base.py): a spooler that stops renewing it loses the message to the
next claimer once it runs out. A task per message, each renewing its own lease with its own
transaction, costs a statement and a commit per message per interval: at 64 messages in flight and
several spoolers on one store, the renewals alone queue behind each other for the writer, and
short leases ran out before their turn came. So one task per spooler renews every lease it holds
(the messages in flight and those claimed ahead, waiting for a worker) with one `renew_leases`.

A lease found lost is logged and renewed no more; the delivery goes on, and its next store write
meets LeaseLost there, so nothing it does is recorded as this spooler's (as before).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from ..mapi.codes import MAPIError, StoreUnreachable
from ..store.base import MessageStore

log = logging.getLogger("postroom.spooler")


class LeaseKeeper:
    """The leases one spooler holds, renewed together every lease_seconds / 3 (at least 1 s)."""

    def __init__(self, store: MessageStore, owner: str, clock: Callable[[], datetime], lease_seconds: float) -> None:
        self.store = store
        self.owner = owner
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.held: set[int] = set()
        self.lost: set[int] = set()  # held no more: another spooler took them over
        self._task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        return max(1.0, self.lease_seconds / 3)

    def hold(self, message_ids: Iterable[int]) -> None:
        """Just claimed: keep these leases alive until `drop`."""
        self.held.update(message_ids)
        if self.held and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._renew())

    def drop(self, message_ids: Iterable[int]) -> None:
        """Finished, released or given back: renew these no more (the task ends with the last one)."""
        for message_id in message_ids:
            self.held.discard(message_id)
            self.lost.discard(message_id)
        if not self.held and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _renew(self) -> None:
        while self.held:
            await asyncio.sleep(self.interval)
            self.renew_now()

    def renew_now(self) -> None:
        """One statement for every lease still held; those another spooler took are marked lost."""
        ids = sorted(self.held - self.lost)
        if not ids:
            return
        try:
            kept = self.store.renew_leases(self.owner, ids, self.clock(), self.lease_seconds)
        except StoreUnreachable as exc:
            # The deliveries go on; each one's next write meets the outage (or the lease's end).
            log.debug("could not renew %d lease(s): %s", len(ids), exc.message)
            return
        except MAPIError as exc:  # e.g. the writer stayed busy: try again at the next interval
            log.warning("could not renew %d lease(s): %s", len(ids), exc.message)
            return
        for message_id in ids:
            if message_id not in kept:
                log.error("lost the lease on message %s while delivering it", message_id)
                self.lost.add(message_id)
