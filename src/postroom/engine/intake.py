"""The listener's intake commit: messages handed over by SMTP clients, written off the event loop.

The SMTP listener may say `250` only once a message is durable, so every message costs a
commit, and a commit's fsync blocks for milliseconds. Run on the event loop (spooler/commit.py's
GroupCommit), that wait stops every other connection too: while one commit runs nothing else
is read, parsed or answered. Here the commit runs on one thread of its own, and the loop goes on
reading and parsing meanwhile; messages that arrive while a commit runs wait for the next one
and share it (group commit, as PostgreSQL's does). One thread, so commits never overtake each
other; the store's own lock (SQLite) or a connection per thread (PostgreSQL) keeps the loop's
reads safe while it writes.

Each message is still its own all-or-nothing unit (a savepoint inside the batch): one refused
message does not refuse the others; a commit that fails fails every message in it, and none of
them gets `250`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from ..mapi.message import MessageData
from ..store import FolderRole
from ..store.base import MessageStore

_Answer = tuple[int | None, BaseException | None]


class IntakeCommit:
    """Submit messages into the Outbox in shared commits, run on a thread of their own."""

    def __init__(self, store: MessageStore, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock
        self._pending: list[tuple[MessageData, asyncio.Future[int]]] = []
        self._running = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postroom-intake")
        self.commits = 0
        self.writes = 0

    async def submit(self, message: MessageData) -> int:
        """Create and submit `message` in the Outbox; returns its ID once the write is durable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append((message, future))
        if not self._running:
            self._start(loop)
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        self._running = True
        messages = [message for message, _ in batch]
        done = loop.run_in_executor(self._executor, self._write, messages)
        done.add_done_callback(lambda answered: self._answer(loop, batch, answered))

    def _write(self, messages: Sequence[MessageData]) -> list[_Answer]:
        """On the intake thread: one batch, one savepoint and one answer per message."""
        answers: list[_Answer] = []
        outbox = self.store.folder(FolderRole.OUTBOX).id
        with self.store.batch():
            now = self.clock()
            for message in messages:
                try:
                    answers.append((self.store.create_and_submit(outbox, message, now), None))
                except Exception as exc:  # this message alone is rolled back (its savepoint)
                    answers.append((None, exc))
        return answers

    def _answer(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[MessageData, asyncio.Future[int]]],
        answered: asyncio.Future[list[_Answer]],
    ) -> None:
        self._running = False
        error = answered.exception() if not answered.cancelled() else asyncio.CancelledError()
        if error is None:
            self.commits += 1
            self.writes += len(batch)
            for (_, future), (mid, failed) in zip(batch, answered.result(), strict=True):
                if future.done():
                    continue
                if failed is not None:
                    future.set_exception(failed)
                else:
                    assert mid is not None
                    future.set_result(mid)
        else:  # the commit itself failed: nothing of the batch is durable
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        if self._pending and not loop.is_closed():
            self._start(loop)

    def close(self) -> None:
        """Wait for a commit under way (its clients are owed an answer) and stop the thread."""
        self._executor.shutdown(wait=True)
