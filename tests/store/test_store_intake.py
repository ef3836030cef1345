"""The listener's intake commit (engine/intake.py) on both stores: its thread writes while the
event loop's thread reads, and what it answered is durable."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from postroom.engine.intake import IntakeCommit
from postroom.envelope import SubmissionSource, envelope_message
from postroom.store.base import MessageStore


def test_the_intake_thread_writes_while_the_loop_reads_and_every_answered_message_is_queued(
    store: MessageStore,
) -> None:
    intake = IntakeCommit(store, lambda: datetime(2026, 12, 2, 12, 0, tzinfo=UTC))

    async def main() -> list[int]:
        async def one(n: int) -> int:
            raw = f"From: a@example.org\r\nSubject: s{n}\r\n\r\nbody\r\n".encode()
            mid = await intake.submit(envelope_message(raw, "a@example.org", [f"u{n}@x.test"], SubmissionSource.SMTP))
            store.queue()  # a read on the loop's thread between two commits
            return mid

        return list(await asyncio.gather(*(one(n) for n in range(20))))

    try:
        ids = asyncio.run(main())
    finally:
        intake.close()
    assert len(set(ids)) == 20 and intake.commits < 20
    assert sorted(e.id for e in store.queue()) == sorted(ids)
