"""Issue: a transport's connection limit holds across spooler processes, on both stores.

Three real spooler processes share one store (an SQLite file, or a PostgreSQL database) and
one SMTP transport with `connections = 2`. Each process works on several messages at once, so
on its own each would open both connections: together they would open six. The sink counts
the connections open at once; it must never see more than two, and every message must
arrive exactly once (nobody is killed here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.harness.crash import free_port, start_sink
from tests.store.pgutil import skip_reason, temp_schema

pytestmark = pytest.mark.integration

MESSAGES = 300
SPOOLERS = 3
CONNECTIONS = 2


@pytest.fixture(params=["sqlite", "postgres"])
def store_setting(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "shared.sqlite")
        return
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with temp_schema("slots") as url:
        yield url


def make_profile(directory: Path, store: str, port: int) -> Path:
    from postroom.profile import Profile

    profile = Profile.create(directory, with_defaults=False)
    profile.settings.update({"store": store, "lease_seconds": 10.0, "spooler_concurrency": 4})
    service = profile.add_service(
        "smtp", "mta", {"host": "127.0.0.1", "port": port, "security": "none", "connections": CONNECTIONS}
    )
    service.policy = {"retry_min_seconds": 0.5, "retry_max_seconds": 2, "breaker_threshold": 0}
    profile.save()
    return profile.directory


def start_spooler(profile: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "postroom", "--profile", str(profile), "spooler", "--force"],
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def delivered_by(log: Path) -> int:
    text = log.read_text(errors="replace")
    return sum(int(n) for n in re.findall(r"(?m)^\d\d:\d\d:\d\d .*?(\d+) recipient\(s\) delivered", text))


def test_spooler_processes_together_keep_to_the_connection_limit(
    tmp_path: Path, store_setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import postroom
    from postroom.mapi import tags as T
    from postroom.profile import Profile

    port = free_port()
    sink_log = tmp_path / "sink.log"
    sink = start_sink(port, sink_log)
    profiles = [make_profile(tmp_path / f"node{n}", store_setting, port) for n in range(SPOOLERS)]
    logs = [tmp_path / f"spooler{n}.log" for n in range(SPOOLERS)]
    spoolers = [start_spooler(p, log) for p, log in zip(profiles, logs, strict=True)]
    try:
        with postroom.logon(Profile.load(profiles[0])) as session:
            time.sleep(2.0)  # the spoolers are up and listening
            assert all(s.poll() is None for s in spoolers), [log.read_text() for log in logs]
            ids = session.submit_many(
                [session.create_message(f"slot {i}", "body\n").to(f"ok-{i}@sink.test") for i in range(MESSAGES)]
            )
            deadline = time.monotonic() + 240
            while session.queue() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not session.queue(), [log.read_text()[-2000:] for log in logs]
            message_ids = [str(session.open_message(m).get(T.PR_INTERNET_MESSAGE_ID)) for m in ids]
    finally:
        for s in spoolers:
            s.terminate()
        for s in spoolers:
            s.wait(timeout=30)
        sink.terminate()
        sink.wait()

    counts = Counter(line.partition(" ")[0] for line in sink_log.read_text().splitlines())
    assert sorted(counts[m] for m in message_ids) == [1] * MESSAGES  # each exactly once
    last = (tmp_path / "sink.log.connections").read_text().splitlines()[-1]
    open_now, peak, opened = (int(n) for n in last.split())
    shares = [delivered_by(log) for log in logs]
    with capsys.disabled():
        print(
            f"\n[{'postgres' if store_setting.startswith('postgresql') else 'sqlite'}] {MESSAGES} messages, "
            f"{SPOOLERS} spoolers, connections={CONNECTIONS}: at most {peak} open at once, "
            f"{opened} opened in all; delivered per spooler {shares}"
        )
    assert peak <= CONNECTIONS
    assert open_now == 0
    assert sum(shares) == MESSAGES
