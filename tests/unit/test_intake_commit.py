"""The listener's intake commit (engine/intake.py): written off the event loop, shared by the
messages that arrive while a commit runs, each message still all or nothing."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path

from postroom.engine.intake import IntakeCommit
from postroom.envelope import SubmissionSource, envelope_message
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.message import MessageData
from postroom.store.sqlite import SQLiteStore


def message(n: int, rcpt: list[str] | None = None) -> MessageData:
    raw = f"From: a@example.org\r\nSubject: m{n}\r\nMessage-ID: <m{n}@example.org>\r\n\r\nbody {n}\r\n".encode()
    to = [f"u{n}@example.org"] if rcpt is None else rcpt
    return envelope_message(raw, "a@example.org", to, SubmissionSource.SMTP)


def clock() -> datetime:
    return datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_messages_that_arrive_while_a_commit_runs_share_the_next_commit(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    intake = IntakeCommit(store, clock)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(intake.submit(message(n)) for n in range(6))))

    try:
        ids = asyncio.run(main())
    finally:
        intake.close()
    assert len(set(ids)) == 6
    assert (intake.writes, intake.commits) == (6, 2)  # the first alone, the five that came meanwhile together
    assert sorted(e.id for e in store.queue()) == sorted(ids)


def test_the_commit_runs_on_a_thread_of_its_own_not_on_the_event_loop(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    seen: list[str] = []

    def noting_clock() -> datetime:
        seen.append(threading.current_thread().name)
        return clock()

    intake = IntakeCommit(store, noting_clock)
    try:
        asyncio.run(intake.submit(message(1)))
    finally:
        intake.close()
    assert seen and all(name.startswith("postroom-intake") for name in seen)


def test_a_refused_message_fails_alone_and_the_others_of_its_commit_are_durable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    intake = IntakeCommit(store, clock)

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
