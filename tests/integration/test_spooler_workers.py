"""`postroom spooler --workers N`: one parent, N spooler processes on one store (issue 17, point 2).

The workers share the queue through its leases and the limits through the store, as spoolers on
several hosts do; the parent only supervises. Judged by a real counting SMTP sink on loopback: every
message arrives exactly once (or twice only when the store recorded its outcome as unknown, after a
SIGKILL), none is lost, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from tests.harness.spoolers import (
    child_pids,
    free_port,
    sink_lines,
    smtp_profile,
    start_sink,
    start_spooler,
    stop,
    tally,
)
from tests.store.pgutil import temp_schema

from support.cli import wait_for

pytestmark = [pytest.mark.integration]

MESSAGES = 300
LEASE_SECONDS = 3.0


def workers(profile: Path, log: Path, n: int = 2) -> subprocess.Popen[bytes]:
    return start_spooler(profile, log, flags=("--workers", str(n)))


def submit(session: Any, n: int) -> list[int]:
    drafts = [session.create_message(f"w {i}", f"message {i}\n").to(f"ok-{i}@sink.test") for i in range(n)]
    return list(session.submit_many(drafts))


def drained(session: Any, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while session.queue():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def deliver_with_two_workers(tmp_path: Path, settings: dict[str, Any]) -> None:
    import postroom
    from postroom.profile import Profile

    port = free_port()
    sink_log = tmp_path / "sink.log"
    sink_log.touch()
    profile = smtp_profile(tmp_path / "profile", port, {"lease_seconds": LEASE_SECONDS, **settings}, {"connections": 4})
    sink = start_sink(port, sink_log)
    log = tmp_path / "spooler.log"
    parent = workers(profile, log)
    try:
        wait_for(lambda: len(child_pids(parent.pid)) == 2)
        with postroom.logon(Profile.load(profile)) as session:
            ids = submit(session, MESSAGES)
            assert drained(session), log.read_text()
            outcome = tally(session, ids, sink_log)
        assert (profile / "spooler.pid").read_text().strip() == str(parent.pid)
    finally:
        stop([parent], sink)
    text = log.read_text()
    assert parent.returncode == 0, text
    assert outcome.once == MESSAGES and outcome.lost == 0 and not outcome.problems
    assert f"{MESSAGES} recipient(s) delivered" in text.splitlines()[-1]  # the parent's totals
    assert "(worker 0)" in text and "(worker 1)" in text  # both took part
    assert not (profile / "spooler.pid").exists()


def test_two_workers_on_sqlite_deliver_every_message_exactly_once(tmp_path: Path) -> None:
    deliver_with_two_workers(tmp_path, {})


@pytest.mark.postgres
def test_two_workers_on_postgresql_deliver_every_message_exactly_once(tmp_path: Path) -> None:
    with temp_schema("workers") as url:
        deliver_with_two_workers(tmp_path, {"store": url})


def test_a_worker_killed_mid_drain_is_started_again_and_nothing_is_lost(tmp_path: Path) -> None:
    import postroom
    from postroom.profile import Profile

    port = free_port()
    sink_log = tmp_path / "sink.log"
    sink_log.touch()
    profile = smtp_profile(tmp_path / "profile", port, {"lease_seconds": LEASE_SECONDS}, {"connections": 4})
    sink = start_sink(port, sink_log, ["--data-delay", "0.005:0.02"])
    log = tmp_path / "spooler.log"
    parent = workers(profile, log)
    try:
        wait_for(lambda: len(child_pids(parent.pid)) == 2)
        before = child_pids(parent.pid)
        with postroom.logon(Profile.load(profile)) as session:
            ids = submit(session, MESSAGES)
            wait_for(lambda: len(sink_lines(sink_log)) >= MESSAGES * 0.2, 60)
            victim = before[0]
            subprocess.run(["kill", "-KILL", str(victim)], check=True)
            wait_for(lambda: len(child_pids(parent.pid)) == 2 and victim not in child_pids(parent.pid))
            assert drained(session), log.read_text()
            outcome = tally(session, ids, sink_log)
    finally:
        stop([parent], sink)
    text = log.read_text()
    assert parent.returncode == 0, text
    assert "ended (exit status -9); starting it again" in text
    assert outcome.lost == 0 and not outcome.problems, outcome.problems[:5]
    assert outcome.once + outcome.duplicates == MESSAGES
    assert outcome.duplicates == outcome.unknown_duplicates  # each resend recorded as "outcome unknown"


def test_a_store_that_cannot_be_opened_is_an_error_before_any_worker_starts(tmp_path: Path) -> None:
    nowhere = f"postgresql://postroom@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    profile = smtp_profile(tmp_path / "profile", free_port(), {"store": nowhere})
    log = tmp_path / "spooler.log"
    parent = workers(profile, log)
    try:
        status = parent.wait(60)
    finally:
        if parent.poll() is None:
            parent.kill()
    text = log.read_text()
    assert status == 2, text
    (line,) = text.strip().splitlines()
    assert line.startswith("postroom: error: MAPI_E_NETWORK_ERROR")
    assert not (profile / "spooler.pid").exists()


def test_the_parent_gives_up_with_an_error_when_its_workers_keep_dying(tmp_path: Path) -> None:
    profile = smtp_profile(tmp_path / "profile", free_port(), {})
    log = tmp_path / "spooler.log"
    parent = workers(profile, log)
    killed: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while parent.poll() is None and time.monotonic() < deadline:
            for pid in set(child_pids(parent.pid)) - killed:
                subprocess.run(["kill", "-KILL", str(pid)], check=False)
                killed.add(pid)
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.send_signal(signal.SIGTERM)
            parent.wait(30)
    text = log.read_text()
    assert parent.returncode == 2, text
    # RestartPolicy.max_failures: the first worker to die a 4th time ends it; each was started again, with backoff
    assert 7 <= len(killed) <= 8, text
    # Every death but the last of each worker was followed by a restart (the parent may have stopped
    # before it saw the other worker's last death).
    assert len(killed) - 2 <= text.count("ended (exit status -9); starting it again in") <= len(killed) - 1
    last = text.strip().splitlines()[-1]
    assert re.fullmatch(
        r"postroom: error: MAPI_E_CALL_FAILED: spooler worker [01] failed 4 times in a row \(last exit status -9\); "
        r"stopped the others \(their errors are above\)",
        last,
    ), last
    assert not (profile / "spooler.pid").exists()
