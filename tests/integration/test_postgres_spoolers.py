"""Issue: several spooler processes on one PostgreSQL store share the work, and a killed one loses nothing.

Four real spooler processes (`python -m postroom --profile DIR spooler --force`), each with its own
profile pointing at one PostgreSQL database, deliver 2,000 messages over SMTP to a counting sink.
They sit idle when the messages are submitted: LISTEN/NOTIFY wakes them, not polling. One of them
is killed with SIGKILL mid-run; the others take its claims over when its 3-second leases expire.

With `crash_policy = "resend"` (the default) every message must reach the sink exactly once,
except a message the killed spooler may have handed to the server in the moment before it died
(its outcome is unknown: it is resent with the same Message-ID, and recorded as
"outcome-unknown"). None may be lost.

With `crash_policy = "hold"` the messages whose outcome is unknown are held instead, and the
test does what an operator does: it looks each one up in the server's log (the sink's) and
either confirms it delivered (`release --as-delivered`) or releases it to be sent. Then every
message must reach the sink exactly once, with no exception.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.harness.spoolers import (
    delivered_by,
    free_port,
    resolve_held,
    sink_lines,
    smtp_profile,
    start_sink,
    start_spooler,
    stop,
    tally,
)
from tests.store.pgutil import temp_schema

from postroom.spooler.spooler import DEFAULT_CONCURRENCY

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
]

MESSAGES = 2000
SPOOLERS = 4
LEASE_SECONDS = 3.0
SAFETY_SCAN_SECONDS = 30.0  # protocol.SAFETY_SCAN_SECONDS: a spooler that only polled would wait this long


def make_profile(directory: Path, url: str, port: int, crash_policy: str) -> Path:
    settings = {"store": url, "lease_seconds": LEASE_SECONDS, "crash_policy": crash_policy}
    return smtp_profile(directory, port, settings, {"connections": 2 * SPOOLERS})


def kill_when_due(spooler: subprocess.Popen[bytes], sink_log: Path) -> int | None:
    """SIGKILL the spooler once 30% of the messages arrived; returns how many had arrived then."""
    lines = len(sink_lines(sink_log))
    if lines < MESSAGES * 0.3:
        return None
    spooler.send_signal(signal.SIGKILL)
    spooler.wait()
    return lines


@pytest.mark.timeout(900)  # longer than its own 600 s wait for the queue to drain, so that its report comes first
@pytest.mark.parametrize("crash_policy", ["resend", "hold"])
def test_four_spoolers_on_postgresql_share_the_work_and_survive_a_kill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], crash_policy: str
) -> None:
    import postroom
    from postroom.profile import Profile

    port = free_port()
    sink_log = tmp_path / "sink.log"
    sink_log.touch()
    with temp_schema("spool") as url:
        profiles = [make_profile(tmp_path / f"node{n}", url, port, crash_policy) for n in range(SPOOLERS)]
        sink = start_sink(port, sink_log)
        logs = [tmp_path / f"spooler{n}.log" for n in range(SPOOLERS)]
        spoolers = [start_spooler(p, log, env={"POSTROOM_DEBUG": "1"}) for p, log in zip(profiles, logs, strict=True)]
        killed_at = None
        resolved = 0
        try:
            with postroom.logon(Profile.load(profiles[0])) as watcher:
                time.sleep(3.0)  # the spoolers are up and idle, listening
                assert all(s.poll() is None for s in spoolers), [log.read_text() for log in logs]
                started = time.monotonic()
                ids: list[int] = []
                first_delivery = None
                for first in range(0, MESSAGES, 100):
                    drafts = [
                        watcher.create_message(f"pg {i}", f"message {i}\n").to(f"ok-{i}@sink.test")
                        for i in range(first, min(first + 100, MESSAGES))
                    ]
                    ids += watcher.submit_many(drafts)
                    if first == 0:
                        while first_delivery is None and time.monotonic() - started < SAFETY_SCAN_SECONDS * 2:
                            if sink_lines(sink_log):
                                first_delivery = time.monotonic() - started
                            time.sleep(0.02)
                    killed_at = killed_at or kill_when_due(spoolers[0], sink_log)
                submitted = time.monotonic() - started
                deadline = started + 600
                while time.monotonic() < deadline:
                    lines = len(sink_lines(sink_log))
                    if first_delivery is None and lines:
                        first_delivery = time.monotonic() - started
                    killed_at = killed_at or kill_when_due(spoolers[0], sink_log)
                    if crash_policy == "hold":
                        resolved += resolve_held(watcher, sink_log)
                    if killed_at is not None and not watcher.queue():
                        break
                    time.sleep(0.2)
                seconds = time.monotonic() - started
                left = watcher.queue()
                outcome = tally(watcher, ids, sink_log)
        finally:
            stop(spoolers, sink)
        shares = [delivered_by(log) for log in logs]
        with capsys.disabled():
            print(
                f"\n{SPOOLERS} spoolers on PostgreSQL, crash_policy {crash_policy}: "
                f"{MESSAGES} messages submitted in {submitted:.1f} s, "
                f"first delivery after {first_delivery or 0:.2f} s, all done in {seconds:.1f} s; "
                f"1 SIGKILL after {killed_at} deliveries; delivered exactly once {outcome.once}, "
                f"duplicates {outcome.duplicates} (outcome unknown {outcome.unknown_duplicates}), "
                f"outcome-unknown {outcome.unknown}, lost {outcome.lost}; held and resolved by the operator {resolved}; "
                f"recipients each spooler reported (the killed one first) {shares}"
            )
            for p in outcome.problems[:20]:
                print("problem:", p)
        assert killed_at is not None, "the run ended before the kill"
        assert not left, f"{len(left)} message(s) still queued"
        assert outcome.lost == 0 and not outcome.problems
        assert outcome.once + outcome.duplicates == MESSAGES
        # At most the killed spooler's messages in flight: one per worker (spooler_concurrency), counting
        # those the server had answered while their outcome waited for the group commit.
        assert outcome.unknown_duplicates <= DEFAULT_CONCURRENCY
        if crash_policy == "hold":
            assert outcome.duplicates == 0 and outcome.once == MESSAGES  # exactly once, with the operator's help
            assert resolved == outcome.unknown
        # Woken by NOTIFY at submit, not by the safety scan.
        assert first_delivery is not None and first_delivery < SAFETY_SCAN_SECONDS / 2
        # Every surviving spooler took part.
        assert all(n > 0 for n in shares[1:]), shares
