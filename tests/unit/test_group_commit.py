"""The group commit's wait for company (spooler/commit.py), on asyncio's loop and on uvloop.

Under load a commit waits up to DELAY for more writes, and goes at the next loop turn once half of
the messages in flight wait for it. uvloop's timer handles are not asyncio.TimerHandle, and an
isinstance test made every commit under uvloop wait the whole DELAY: the daemon (which runs on
uvloop when it is installed) drained at a third of its rate, its workers idle (issue 17).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from postroom.spooler.commit import BUSY, DELAY, GAP, GroupCommit

from support.smtp_transport import needs_uvloop, run

LOOPS = ["asyncio", pytest.param("uvloop", marks=needs_uvloop)]


class CountingStore:
    """Just what GroupCommit needs of a store: batch() as one transaction, counted."""

    def __init__(self) -> None:
        self.commits = 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield
        self.commits += 1


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("loop", LOOPS)
def test_enough_company_commits_at_the_next_turn(loop: str) -> None:
    async def scenario() -> None:
        store = CountingStore()
        commit = GroupCommit(store, in_flight=lambda: 2 * BUSY)  # type: ignore[arg-type]
        first = asyncio.ensure_future(commit.write(lambda: 0))
        await turns(3)
        assert not first.done()  # alone under load: it waits for company
        rest = [asyncio.ensure_future(commit.write(lambda i=i: i)) for i in range(1, BUSY)]
        await turns(3)  # BUSY of 2 × BUSY in flight wait now: no more waiting (DELAY is far longer)
        assert first.done() and all(f.done() for f in rest)
        assert [f.result() for f in [first, *rest]] == list(range(BUSY))
        assert store.commits == 1

    run(scenario(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_write_alone_under_load_commits_after_the_delay(loop: str) -> None:
    async def scenario() -> None:
        store = CountingStore()
        commit = GroupCommit(store, in_flight=lambda: 2 * BUSY)  # type: ignore[arg-type]
        assert await asyncio.wait_for(commit.write(lambda: "done"), DELAY * 40) == "done"
        assert store.commits == 1

    run(scenario(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_little_in_flight_commits_at_the_next_turn(loop: str) -> None:
    async def scenario() -> None:
        store = CountingStore()
        commit = GroupCommit(store, in_flight=lambda: BUSY - 1)  # type: ignore[arg-type]
        write = asyncio.ensure_future(commit.write(lambda: 1))
        await turns(3)
        assert write.done() and store.commits == 1

    run(scenario(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_with_little_in_flight_commits_are_a_gap_apart(loop: str) -> None:
    """A spooler keeping up with a trickle would otherwise commit (and take SQLite's writer turn)
    for every message or two."""

    async def scenario() -> None:
        store = CountingStore()
        commit = GroupCommit(store, in_flight=lambda: 2)  # type: ignore[arg-type]
        assert await commit.write(lambda: 1) == 1  # the first goes at once
        second = asyncio.ensure_future(commit.write(lambda: 2))
        third = asyncio.ensure_future(commit.write(lambda: 3))
        await turns(3)
        assert not second.done()  # GAP after the last commit
        assert await asyncio.wait_for(asyncio.gather(second, third), GAP * 100) == [2, 3]
        assert store.commits == 2  # the two waited together

    run(scenario(), loop=loop)
