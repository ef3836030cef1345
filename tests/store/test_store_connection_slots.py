"""Connection slots: a transport's connection limit holds across processes, and a killed holder frees its slots.

The other process is real (a subprocess opening the same store), because locks held by one
process are what the slots are made of.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from postroom.mapi.codes import HResult, MAPIError
from postroom.store import MessageStore
from postroom.store.slots import CONTENTION_SECONDS, Contention

HOLDER = """
import sys, time
from postroom.store import open_store
store = open_store(sys.argv[1])
taken = [store.connection_slots.try_acquire(sys.argv[2], int(sys.argv[3])) for _ in range(int(sys.argv[4]))]
print(" ".join(str(t) for t in taken), flush=True)
time.sleep(600)
"""


@contextmanager
def holder(target: str, transport: str, limit: int, take: int) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Another process holding `take` of the transport's slots until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, target, transport, str(limit), str(take)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        taken = proc.stdout.readline().split()
        yield proc, taken
    finally:
        proc.kill()
        proc.wait()


def eventually(take: Callable[[], int | None], seconds: float = 10.0) -> int | None:
    deadline = time.monotonic() + seconds
    while True:
        slot = take()
        if slot is not None or time.monotonic() > deadline:
            return slot
        time.sleep(0.05)


def test_slots_are_numbered_up_to_the_limit_and_come_back(store: MessageStore) -> None:
    slots = store.connection_slots
    assert [slots.try_acquire("mta", 3) for _ in range(4)] == [0, 1, 2, None]
    assert slots.held("MTA") == 3
    slots.release("mta", 1)
    slots.release("mta", 1)  # twice: the second does nothing
    assert slots.try_acquire("Mta", 3) == 1  # transport names compare case-insensitively
    assert slots.try_acquire("fax", 1) == 0  # every transport has slots of its own
    for n in range(3):
        slots.release("mta", n)
    assert slots.held("mta") == 0


def test_a_bad_limit_is_refused(store: MessageStore) -> None:
    with pytest.raises(MAPIError) as caught:
        store.connection_slots.try_acquire("mta", 0)
    assert caught.value.code == HResult.MAPI_E_INVALID_PARAMETER


def test_the_limit_holds_across_processes(store: MessageStore, store_target: str) -> None:
    with holder(store_target, "mta", 3, 2) as (_, taken):
        assert taken == ["0", "1"]
        slots = store.connection_slots
        assert slots.try_acquire("mta", 3) == 2
        assert slots.try_acquire("mta", 3) is None  # two held there, one here: the limit is reached
        assert slots.try_acquire("mta", 4) == 3  # a higher limit has room
        slots.release("mta", 2)
        slots.release("mta", 3)


def test_a_killed_process_frees_its_slots_at_once(store: MessageStore, store_target: str) -> None:
    slots = store.connection_slots
    with holder(store_target, "mta", 2, 2) as (proc, taken):
        assert taken == ["0", "1"]
        assert slots.try_acquire("mta", 2) is None
        started = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        slot = eventually(lambda: slots.try_acquire("mta", 2))
        assert slot is not None, "the killed process's slots were never freed"
        assert time.monotonic() - started < 5.0  # no lease to wait out
    slots.release("mta", slot)


def test_stores_in_one_process_share_its_slots(store: MessageStore, open_another: Callable[[], MessageStore]) -> None:
    other = open_another()
    assert store.connection_slots.try_acquire("mta", 2) == 0
    assert other.connection_slots.try_acquire("mta", 2) == 1
    assert store.connection_slots.try_acquire("mta", 2) is None
    store.connection_slots.release("mta", 0)
    other.connection_slots.release("mta", 1)


PEER = """
import sys
from postroom.store import open_store
slots = open_store(sys.argv[1]).connection_slots
for line in sys.stdin:
    verb, *args = line.split()
    if verb == "take":
        answer = slots.try_acquire("mta", int(args[0]))
    elif verb == "release":
        answer = slots.release("mta", int(args[0]))
    elif verb == "wait":
        answer = slots.set_waiting("mta", args[0] == "on")
    elif verb == "give-back?":
        answer = slots.should_give_back("mta", int(args[0]))
    print(answer, flush=True)
"""


class Peer:
    """Another process on the same store, doing what the test tells it, one line at a time."""

    def __init__(self, target: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PEER, target], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def __call__(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def settle() -> None:
    """Let what each process last learned about the other grow old enough to be asked again."""
    time.sleep(CONTENTION_SECONDS * 1.5)


def test_slots_are_shared_fairly_while_another_process_waits(store: MessageStore, store_target: str) -> None:
    slots = store.connection_slots
    peer = Peer(store_target)
    try:
        assert [peer("take 4") for _ in range(4)] == ["0", "1", "2", "3"]
        assert slots.try_acquire("mta", 4) is None
        settle()
        assert peer("give-back? 4") == "False"  # nobody waits: a busy process may use every slot
        slots.set_waiting("mta", True)
        settle()
        # Two processes want the slots: the peer's share is 2, so it gives back two and no more.
        assert peer("give-back? 4") == "True"
        peer("release 3")
        assert peer("give-back? 4") == "True"
        peer("release 2")
        assert peer("give-back? 4") == "False"
        assert slots.try_acquire("mta", 4) == 2
        assert slots.try_acquire("mta", 4) == 3
        slots.set_waiting("mta", False)
        # The peer closes one and wants it back: this process (holding its share, 2) leaves the free slot alone.
        peer("release 1")
        peer("wait on")
        settle()
        assert slots.try_acquire("mta", 4) is None
        assert peer("take 4") == "1"
        peer("wait off")
        peer("release 1")
        settle()
        assert slots.try_acquire("mta", 4) == 1  # nobody waits: a free slot may be taken beyond the share
        for slot in (1, 2, 3):
            slots.release("mta", slot)
    finally:
        peer.close()


def test_a_process_that_neither_holds_nor_waits_does_not_count(store: MessageStore, store_target: str) -> None:
    slots = store.connection_slots
    peer = Peer(store_target)
    try:
        assert peer("take 2") == "0"
        assert slots.contention("mta") == Contention(1, False)
        peer("release 0")
        settle()
        assert slots.contention("mta") == Contention(0, False)
        peer("wait on")
        settle()
        assert slots.contention("mta") == Contention(1, True)
        assert slots.contention("fax") == Contention(0, False)  # every transport on its own
    finally:
        peer.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # SQLite's file locks live as long as the process
def test_slots_whose_lock_was_lost_are_taken_again_or_given_back(
    store: MessageStore, open_another: Callable[[], MessageStore]
) -> None:
    """PostgreSQL: the connection holding the advisory locks is lost while the transport's
    connections stay open; the process learns of it when it next asks who waits (settle). The slots nobody took meanwhile are locked again; a slot another
    process took stays this process's orphan, so it opens nothing new and closes a connection
    as soon as one is free, until the orphan's connection is closed."""
    import psycopg

    from postroom.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    slots = store.connection_slots
    assert [slots.try_acquire("mta", 2) for _ in range(2)] == [0, 1]
    lock_session = slots._conn.info.backend_pid  # type: ignore[attr-defined]
    with psycopg.connect(store.url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (lock_session,))
    other = open_another()
    assert eventually(lambda: other.connection_slots.try_acquire("mta", 1)) == 0  # slot 0 was free for it

    settle()
    try:  # this process learns of the loss at its next use (as an error, or while it asks who waits)
        assert slots.try_acquire("mta", 2) is None
    except MAPIError as lost:
        assert lost.code is HResult.MAPI_E_NETWORK_ERROR
    assert slots.try_acquire("mta", 2) is None  # connected again, slot 1 locked again; slot 0 is the other's
    assert slots.held("mta") == 2
    assert slots.should_give_back("mta", 2)

    slots.release("mta", 0)  # the connection in the orphaned slot closes
    assert slots.held("mta") == 1
    assert not slots.should_give_back("mta", 2)
    other.connection_slots.release("mta", 0)
    assert slots.try_acquire("mta", 2) == 0
