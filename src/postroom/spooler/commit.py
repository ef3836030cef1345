"""Group commit: the store writes of concurrently processed messages share one durable commit.

Every write still is its own all-or-nothing unit (a savepoint inside the batch), and a worker
goes on only once its write is durable, so "record the outcome right after the transport
answers, before anything else happens to the message" still holds; only the fsync is shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from ..store.base import MessageStore

R = TypeVar("R")


class GroupCommit:
    """Queue store writes from many coroutines; commit them together at the next loop turn."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._scheduled = False
        self.commits = 0
        self.writes = 0

    async def write(self, fn: Callable[..., R], *args: Any) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        result: R = await future
        return result

    def _flush(self) -> None:
        ops, self._pending = self._pending, []
        self._scheduled = False
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            with self.store.batch():
                for fn, args, future in ops:
                    try:
                        outcomes.append((future, fn(*args), None))
                    except Exception as exc:  # this write alone is rolled back (its savepoint)
                        outcomes.append((future, None, exc))
        except Exception as exc:  # the commit itself failed: nothing of the batch is durable
            for _, _, future in ops:
                if not future.done():
                    future.set_exception(exc)
            return
        self.commits += 1
        self.writes += len(ops)
        for future, value, error in outcomes:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
