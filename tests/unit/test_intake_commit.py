"""The listener's intake commit (engine/intake.py): its fsync off the event loop, shared by the
messages that arrive while one runs, each message still all or nothing, and no answer before the
fsync of its commit returns."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from postroom.engine.intake import CommitOnThread, IntakeCommit, SyncOnThread
from postroom.envelope import SubmissionSource, envelope_message
from postroom.mapi.codes import HResult, MAPIError, StoreDiskTrouble
from postroom.mapi.message import MessageData
from postroom.store.sqlite import SQLiteStore


def message(n: int, rcpt: list[str] | None = None) -> MessageData:
    raw = f"From: a@example.org\r\nSubject: m{n}\r\nMessage-ID: <m{n}@example.org>\r\n\r\nbody {n}\r\n".encode()
    to = [f"u{n}@example.org"] if rcpt is None else rcpt
    return envelope_message(raw, "a@example.org", to, SubmissionSource.SMTP)


def clock() -> datetime:
    return datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class HeldSyncStore(SQLiteStore):
    """An SQLite store whose fsyncs (sync_log) wait until the test lets them go, on the thread
    they run on; `fail` makes them fail as a disk that reports an I/O error."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.go = threading.Event()
        self.syncs: list[str] = []  # the thread of each fsync
        self.fail = False

    def sync_log(self) -> None:
        assert self.go.wait(10)
        self.syncs.append(threading.current_thread().name)
        if self.fail:
            raise StoreDiskTrouble(HResult.MAPI_E_DISK_ERROR, "the disk reported an I/O error")
        super().sync_log()


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not come true")


def test_messages_that_end_in_one_loop_turn_share_one_commit(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    intake = IntakeCommit.for_store(store, clock)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(intake.submit(message(n)) for n in range(6))))

    try:
        ids = asyncio.run(main())
    finally:
        intake.close()
    assert isinstance(intake, SyncOnThread)
    assert len(set(ids)) == 6
    assert (intake.writes, intake.commits) == (6, 1)
    assert sorted(e.id for e in store.queue()) == sorted(ids)


def test_no_message_is_answered_before_the_fsync_of_its_commit_returns(tmp_path: Path) -> None:
    store = HeldSyncStore(tmp_path / "s.sqlite")
    intake = IntakeCommit.for_store(store, clock)

    async def main() -> None:
        first = asyncio.ensure_future(intake.submit(message(1)))
        await wait_until(lambda: len(store.queue()) == 1)  # written, its fsync held
        await asyncio.sleep(0.05)
        assert not first.done()
        store.go.set()
        assert await first == store.queue()[0].id

    try:
        asyncio.run(main())
    finally:
        store.go.set()
        intake.close()
    assert store.syncs == ["postroom-intake"]  # the fsync ran on the intake thread, not on the loop


def test_messages_that_end_during_an_fsync_are_written_meanwhile_and_share_the_next(tmp_path: Path) -> None:
    store = HeldSyncStore(tmp_path / "s.sqlite")
    intake = IntakeCommit.for_store(store, clock)

    async def main() -> list[int]:
        first = asyncio.ensure_future(intake.submit(message(1)))
        await wait_until(lambda: len(store.queue()) == 1)
        others = [asyncio.ensure_future(intake.submit(message(n))) for n in range(2, 5)]
        await wait_until(lambda: len(store.queue()) == 4)  # written while the first one's fsync runs
        assert not any(f.done() for f in [first, *others])
        store.go.set()
        return [await first, *[await f for f in others]]

    try:
        ids = asyncio.run(main())
    finally:
        store.go.set()
        intake.close()
    assert len(set(ids)) == 4
    assert (intake.writes, intake.commits, len(store.syncs)) == (4, 2, 2)


def test_an_fsync_that_fails_fails_every_message_of_its_commit(tmp_path: Path) -> None:
    store = HeldSyncStore(tmp_path / "s.sqlite")
    store.fail = True
    store.go.set()
    intake = IntakeCommit.for_store(store, clock)

    async def main() -> list[int | BaseException]:
        return list(await asyncio.gather(*(intake.submit(message(n)) for n in range(3)), return_exceptions=True))

    try:
        answers = asyncio.run(main())
    finally:
        intake.close()
    assert all(isinstance(a, StoreDiskTrouble) for a in answers)
    assert intake.writes == 0


def test_a_store_that_cannot_sync_later_commits_on_the_intake_thread(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.syncs_later = False  # as PostgreSQL: its COMMIT waits for the disk
    seen: list[str] = []

    def noting_clock() -> datetime:
        seen.append(threading.current_thread().name)
        return clock()

    intake = IntakeCommit.for_store(store, noting_clock)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(intake.submit(message(n)) for n in range(6))))

    try:
        ids = asyncio.run(main())
    finally:
        intake.close()
    assert isinstance(intake, CommitOnThread)
    assert seen and all(name.startswith("postroom-intake") for name in seen)
    assert (intake.writes, intake.commits) == (6, 2)  # the first alone, the five that came meanwhile together
    assert sorted(e.id for e in store.queue()) == sorted(ids)


def test_a_refused_message_fails_alone_and_the_others_of_its_commit_are_durable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    intake = IntakeCommit.for_store(store, clock)

    async def main() -> list[int | BaseException]:
        batch = [message(1), message(2, rcpt=[]), message(3)]
        return list(await asyncio.gather(*(intake.submit(m) for m in batch), return_exceptions=True))

    try:
        first, refused, third = asyncio.run(main())
    finally:
        intake.close()
    assert isinstance(refused, MAPIError) and refused.code == HResult.MAPI_E_NO_RECIPIENTS
    assert isinstance(first, int) and isinstance(third, int)
    assert sorted(e.id for e in store.queue()) == sorted([first, third])
