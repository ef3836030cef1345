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
    """Just what GroupCommit needs of a store: batch() as one transaction (counted), mark_started."""

    def __init__(self) -> None:
        self.commits = 0
        self.started: list[list[int]] = []

    def mark_started(self, owner: str, ids: list[int]) -> set[int]:
        self.started.append(list(ids))
        return set(ids)

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
def test_with_little_in_flight_marks_are_committed_a_gap_apart(loop: str) -> None:
    """A spooler keeping up with a trickle would otherwise commit (and take SQLite's writer turn)
    for every message or two."""

    async def scenario() -> None:
        store = CountingStore()
        commit = GroupCommit(store, in_flight=lambda: 2)  # type: ignore[arg-type]
        await commit.start(1, "me")  # the first goes at once
        second = asyncio.ensure_future(commit.start(2, "me"))
        third = asyncio.ensure_future(commit.start(3, "me"))
        await turns(3)
        assert not second.done()  # GAP after the last commit
        await asyncio.wait_for(asyncio.gather(second, third), GAP * 100)
        assert store.commits == 2 and store.started == [[1], [2, 3]]  # the two waited together

    run(scenario(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_claim_is_not_held_back_by_the_gap(loop: str) -> None:
    """Idle workers wait for a claim; two spooler processes whose claims waited stopped sharing
    the work fairly (test_connection_limit)."""

    async def scenario() -> None:
        store = CountingStore()
        commit = GroupCommit(store, in_flight=lambda: 2)  # type: ignore[arg-type]
        await commit.start(1, "me")
        claim = asyncio.ensure_future(commit.write(lambda: "claimed"))
        await turns(3)
        assert claim.done() and claim.result() == "claimed" and store.commits == 2

    run(scenario(), loop=loop)
