"""SQLite writers take turns through a kernel lock beside the store (store/writer_turns.py).

The turn is what saves SQLite's busy-handler sleeps, so these tests check that a write really
waits for it, that the kernel frees the turn of a process killed with SIGKILL, and that a thread
holding a turn through one store object is not made to wait for itself through another.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from postroom.store.sqlite import SQLiteStore
from postroom.store.writer_turns import WriterTurns

HOLD_TURN = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_a_write_waits_for_the_turn_and_gets_it_when_the_holder_is_killed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite")
    turn_file = tmp_path / "store.sqlite-writer"
    assert turn_file.exists()
    assert turn_file.stat().st_mode & 0o777 == 0o600
    holder = subprocess.Popen([sys.executable, "-c", HOLD_TURN, str(turn_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        done = threading.Event()
        writer = threading.Thread(target=lambda: (store.create_folder("Waited"), done.set()), daemon=True)
        writer.start()
        assert not done.wait(0.5), "the write did not wait for the other process's turn"
        holder.send_signal(signal.SIGKILL)
        assert done.wait(10), "the turn of a killed process was not freed"
    finally:
        holder.kill()
        holder.wait()
    assert store.find_folder("Waited").name == "Waited"
    store.close()


def test_a_thread_holding_the_turn_does_not_wait_for_itself(tmp_path: Path) -> None:
    first = WriterTurns(tmp_path / "turn")
    second = WriterTurns(tmp_path / "turn")
    with first.turn(), second.turn():
        pass
    blocked = threading.Event()

    def other_thread() -> None:
        with second.turn():
            blocked.set()

    with first.turn():
        thread = threading.Thread(target=other_thread, daemon=True)
        thread.start()
        assert not blocked.wait(0.3), "another thread got the turn while this one held it"
    thread.join(10)
    assert blocked.is_set()
    first.close()
    second.close()
    second.close()  # closing twice is harmless
