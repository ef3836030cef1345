"""The listener's intake commit: messages handed over by SMTP clients, their fsync off the event loop.

The SMTP listener may say `250` only once a message is durable, so every message costs a
commit, and a commit's fsync blocks for a millisecond or more. Messages that arrive while one
commit is made durable wait for the next and share it (group commit, as PostgreSQL's does); one
commit at a time, so commits never overtake each other.

Where each part runs is what limits intake (issue 18). On a store that `syncs_later` (SQLite in
WAL mode) the batch is written on the event loop without its fsync, and only the fsync
(`sync_log`) runs on the intake thread, which goes from one fsync straight to the next while the
loop writes the batch after (`SyncOnThread`); `250` goes out once the fsync returns. Written on a
thread of its own, a batch shared the interpreter lock with the event loop's parsing: every SQLite
statement gave the lock up and waited to get it back, and each commit went loop → thread → loop
before the next could start. The fsync holds no lock, neither the interpreter's nor SQLite's writer
turn, so `--processes N` write meanwhile.

Other stores (PostgreSQL: its COMMIT is a round trip that waits for the disk) run the whole
batch on the intake thread (`CommitOnThread`) while the loop goes on reading and parsing; a
connection per thread keeps the loop's reads safe while it writes.

Each message is still its own all-or-nothing unit (a savepoint inside the batch): one refused
message does not refuse the others; a commit or fsync that fails fails every message in it, and
none of them gets `250`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import datetime

from ..mapi.message import MessageData
from ..store import FolderRole
from ..store.base import MessageStore

_Answer = tuple[int | None, BaseException | None]
_Batch = list[tuple[MessageData, "asyncio.Future[int]"]]

#: The intake thread's name (and its prefix: the executor numbers its one thread).
THREAD_NAME = "postroom-intake"


class IntakeCommit:
    """Submit messages into the Outbox in shared commits; the waiting for the disk on a thread."""

    def __init__(self, store: MessageStore, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock
        self._pending: _Batch = []
        self.commits = 0
        self.writes = 0

    @staticmethod
    def for_store(store: MessageStore, clock: Callable[[], datetime]) -> IntakeCommit:
        """The way that suits `store`: only the fsync on the thread when it `syncs_later`."""
        return SyncOnThread(store, clock) if store.syncs_later else CommitOnThread(store, clock)

    async def submit(self, message: MessageData) -> int:
        """Create and submit `message` in the Outbox; returns its ID once the write is durable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append((message, future))
        self._wake(loop)
        return await future

    def close(self) -> None:
        """Wait for a commit under way (its clients are owed an answer) and stop the thread."""

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """A message joined `_pending`."""

    def _write(
        self, messages: Sequence[MessageData], batch: Callable[[], AbstractContextManager[None]]
    ) -> list[_Answer]:
        """One batch, one savepoint and one answer per message."""
        answers: list[_Answer] = []
        outbox = self.store.folder(FolderRole.OUTBOX).id
        with batch():
            now = self.clock()
            for message in messages:
                try:
                    answers.append((self.store.create_and_submit(outbox, message, now), None))
                except Exception as exc:  # this message alone is rolled back (its savepoint)
                    answers.append((None, exc))
        return answers

    def _settle(self, batch: _Batch, answers: Sequence[_Answer] | None, error: BaseException | None) -> None:
        """Answer a batch's clients: each its own outcome, or the commit's (or fsync's) error for all."""
        if error is None and answers is not None:
            self.commits += 1
            self.writes += len(batch)
            for (_, future), (mid, failed) in zip(batch, answers, strict=True):
                if future.done():
                    continue
                if failed is not None:
                    future.set_exception(failed)
                else:
                    assert mid is not None
                    future.set_result(mid)
            return
        for _, future in batch:  # nothing of the batch is known to be durable
            if not future.done():
                future.set_exception(error or asyncio.CancelledError())


class CommitOnThread(IntakeCommit):
    """The whole batch, its statements and its COMMIT, on the intake thread."""

    def __init__(self, store: MessageStore, clock: Callable[[], datetime]) -> None:
        super().__init__(store, clock)
        self._running = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._running:
            self._start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        self._running = True
        messages = [message for message, _ in batch]
        done = loop.run_in_executor(self._executor, self._write, messages, self.store.batch)
        done.add_done_callback(lambda answered: self._answer(loop, batch, answered))

    def _answer(self, loop: asyncio.AbstractEventLoop, batch: _Batch, answered: asyncio.Future[list[_Answer]]) -> None:
        self._running = False
        if answered.cancelled():
            self._settle(batch, None, asyncio.CancelledError())
        else:
            error = answered.exception()
            self._settle(batch, None if error else answered.result(), error)
        if self._pending and not loop.is_closed():
            self._start(loop)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class SyncOnThread(IntakeCommit):
    """The batch written on the event loop (store.batch_synced_later), its fsync on the intake
    thread. At most one written batch waits for the thread; the messages that end meanwhile are
    written once the thread takes it, so the next fsync has its batch ready when this one returns."""

    def __init__(self, store: MessageStore, clock: Callable[[], datetime]) -> None:
        super().__init__(store, clock)
        self._scheduled = False  # a _write_pending is due at the loop's next turn
        self._ready = threading.Condition()
        self._written: list[tuple[_Batch, list[_Answer]]] = []  # under _ready: committed, not yet synced
        self._stopping = False  # under _ready
        self._thread: threading.Thread | None = None

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._write_pending, loop)  # the messages that end in this loop turn join

    def _write_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: commit what is pending (no fsync) and hand it to the thread, unless a written
        batch still waits for the thread (which calls this again when it takes that one)."""
        self._scheduled = False
        with self._ready:
            if self._written or not self._pending:
                return
        batch, self._pending = self._pending, []
        try:
            answers = self._write([message for message, _ in batch], self.store.batch_synced_later)
        except Exception as exc:  # the commit failed: nothing of the batch is written
            self._settle(batch, None, exc)
            return
        with self._ready:
            self._written.append((batch, answers))
            self._ready.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._sync_all, args=(loop,), name=THREAD_NAME, daemon=True)
            self._thread.start()

    def _sync_all(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the intake thread: fsync what is written, answer it on the loop, and again."""
        while True:
            with self._ready:
                while not self._written and not self._stopping:
                    self._ready.wait()
                if not self._written:
                    return
                taken, self._written = self._written, []
            try:
                loop.call_soon_threadsafe(self._write_pending, loop)  # the next batch, while this one syncs
                error: BaseException | None = None
                try:
                    self.store.sync_log()
                except Exception as exc:
                    error = exc
                loop.call_soon_threadsafe(self._answer, taken, error)
            except RuntimeError:  # the loop is closed: nobody is waiting for an answer any more
                return

    def _answer(self, taken: list[tuple[_Batch, list[_Answer]]], error: BaseException | None) -> None:
        for batch, answers in taken:
            self._settle(batch, answers, error)

    def close(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join()
