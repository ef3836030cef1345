"""Issue: a running spooler daemon rides out a PostgreSQL outage and resumes by itself.

A real spooler process (`python -m postroom --profile DIR spooler --force`) reaches the shared
PostgreSQL test server through a TCP proxy (tests/harness/tcpproxy.py); the test's own session
connects directly. While the spooler delivers a batch over SMTP to a counting sink, the proxy is
cut for several seconds (every connection dropped, new ones closed at once; a table lock taken
just before makes sure a statement of the spooler is in flight at that moment) and more messages
are submitted; then it is restored. The spooler must still be running, say in its log that the
store was unreachable and when it was back, and deliver every message: at most once, except a
message whose outcome is unknown (its outcome write failed with the connection; it stays claimed
until its 3-second lease runs out and is then resent with the same Message-ID).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from peers import wait_until
from tests.harness.spoolers import free_port, sink_lines, smtp_profile, start_sink, start_spooler, stop, tally
from tests.harness.tcpproxy import TCPProxy
from tests.store.pgutil import temp_schema

from postroom.mapi.codes import HResult, MAPIError
from postroom.spooler.spooler import DEFAULT_CONCURRENCY
from postroom.store import MessageStore

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
]

BEFORE = 300  # submitted before the outage; it starts once some have arrived
DURING = 100  # submitted while the spooler cannot reach the store
OUTAGE_SECONDS = 6.0
LEASE_SECONDS = 3.0
#: At most this many messages are between their delivery and its outcome write at the cut: one per
#: worker (spooler_concurrency, the default).
IN_FLIGHT = DEFAULT_CONCURRENCY


def via(url: str, port: int) -> str:
    """The URL with its port replaced (the proxy's)."""
    parts = urlsplit(url)
    user, at, _ = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme, f"{user}{at}{parts.hostname}:{port}", parts.path, parts.query, parts.fragment))


def pgpass_for(proxy_port: int, upstream_port: int, directory: Path) -> dict[str, str]:
    """libpq picks a pgpass line by host and port: the proxy's port gets the server's lines."""
    source = os.environ.get("PGPASSFILE")
    if not source:
        return {}
    lines = Path(source).read_text().splitlines()
    extra: list[str] = []
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 5 and fields[1] == str(upstream_port):
            extra.append(":".join([fields[0], str(proxy_port), *fields[2:]]))
    target = directory / "pgpass"
    target.write_text("\n".join(lines + extra) + "\n")
    target.chmod(0o600)
    return {"PGPASSFILE": str(target)}


def make_profile(directory: Path, url: str, port: int) -> Path:
    settings = {"store": url, "lease_seconds": LEASE_SECONDS, "crash_policy": "resend"}
    return smtp_profile(directory, port, settings, {"connections": 2})


def test_spooler_daemon_rides_out_a_postgresql_outage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import psycopg

    import postroom
    from postroom.profile import Profile

    smtp_port = free_port()
    sink_log = tmp_path / "sink.log"
    sink_log.touch()
    spooler_log = tmp_path / "spooler.log"
    with temp_schema("outage") as url:
        upstream = urlsplit(url)
        assert upstream.hostname is not None and upstream.port is not None
        with TCPProxy((upstream.hostname, upstream.port)) as proxy:
            env = pgpass_for(proxy.port, upstream.port, tmp_path)  # no POSTROOM_DEBUG: the log a user sees
            spooler_profile = make_profile(tmp_path / "spooler", via(url, proxy.port), smtp_port)
            client_profile = make_profile(tmp_path / "client", url, smtp_port)
            sink = start_sink(smtp_port, sink_log)
            spooler = start_spooler(spooler_profile, spooler_log, env=env)
            started = time.monotonic()
            try:
                with postroom.logon(Profile.load(client_profile)) as client:
                    assert wait_until(lambda: "Spooler running" in spooler_log.read_text(), 20), spooler_log.read_text()

                    def submit(first: int, count: int) -> list[int]:
                        drafts = [
                            client.create_message(f"outage {i}", f"message {i}\n").to(f"ok-{i}@sink.test")
                            for i in range(first, first + count)
                        ]
                        return client.submit_many(drafts)

                    ids = submit(0, BEFORE)
                    assert wait_until(lambda: len(sink_lines(sink_log)) >= BEFORE // 10, 30), "nothing delivered"
                    with psycopg.connect(url) as locker:
                        # The spooler's next statement on the queue waits for this lock, so the connection
                        # goes while a statement (maybe a write) is in flight, not between two of them.
                        locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                        time.sleep(0.5)
                        proxy.cut()
                    cut_at = time.monotonic()
                    delivered_at_cut = len(sink_lines(sink_log))
                    ids += submit(BEFORE, DURING)
                    time.sleep(max(0.0, cut_at + OUTAGE_SECONDS - time.monotonic()))
                    alive_during_outage = spooler.poll() is None
                    delivered_in_outage = len(sink_lines(sink_log)) - delivered_at_cut
                    proxy.restore()
                    outage = time.monotonic() - cut_at
                    restored_at = time.monotonic()
                    drained = wait_until(lambda: not client.queue(), 40)
                    drain_seconds = time.monotonic() - restored_at
                    alive = spooler.poll() is None
                    left = client.queue()
                    outcome = tally(client, ids, sink_log)
            finally:
                stop([spooler], sink)
        seconds = time.monotonic() - started
        log_text = spooler_log.read_text(errors="replace")
        with capsys.disabled():
            print(
                f"\nPostgreSQL outage of {outage:.1f} s ({proxy.refused} connection(s) refused meanwhile): "
                f"{BEFORE} + {DURING} messages, {delivered_at_cut} delivered before the cut, "
                f"{delivered_in_outage} during it; queue drained {drain_seconds:.1f} s after the restore; "
                f"delivered exactly once {outcome.once}, duplicates {outcome.duplicates}, "
                f"outcome-unknown {outcome.unknown}, lost {outcome.lost}; spooler run {seconds:.1f} s, exit code {spooler.returncode}"
            )
            for p in outcome.problems[:20]:
                print("problem:", p)
    assert alive_during_outage and alive, f"the spooler died:\n{log_text[-3000:]}"
    assert spooler.returncode == 0, log_text[-3000:]
    assert drained and not left, f"{len(left)} message(s) still queued"
    assert outcome.lost == 0 and not outcome.problems
    assert outcome.once + outcome.duplicates == BEFORE + DURING
    assert outcome.duplicates <= IN_FLIGHT
    assert re.search(r"message store unreachable: .*; retrying in \d", log_text), log_text[-3000:]
    assert re.search(r"message store reachable again after \d+(\.\d+)? s", log_text), log_text[-3000:]
    assert "internal error" not in log_text
    assert "error connecting in" not in log_text, "the connection pool's own warnings were not kept quiet"
    # The totals count what every pass delivered, also the pass the outage cut short; only a message
    # whose outcome could not be written when the connection went is not counted (until its resend).
    totals = re.search(
        r"Spooler stopped after \d+ pass\(es\): \d+ message\(s\): (\d+) recipient\(s\) delivered", log_text
    )
    assert totals is not None, log_text[-3000:]
    assert BEFORE + DURING - IN_FLIGHT <= int(totals.group(1)) <= BEFORE + DURING, totals.group(0)


def test_a_spooler_that_cannot_reach_the_store_at_start_fails_at_once(tmp_path: Path) -> None:
    """Only a running daemon waits for the store; at start an unreachable store is an error (exit code 2)."""
    with temp_schema("outage") as url:
        upstream = urlsplit(url)
        assert upstream.hostname is not None and upstream.port is not None
        with TCPProxy((upstream.hostname, upstream.port)) as proxy:
            proxy.cut()
            profile = make_profile(tmp_path / "spooler", via(url, proxy.port), free_port())
            env = {**os.environ, **pgpass_for(proxy.port, upstream.port, tmp_path)}
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "postroom", "--profile", str(profile), "spooler"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                check=False,
            )
            seconds = time.monotonic() - started
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "MAPI_E_NETWORK_ERROR: cannot connect to the message store" in done.stderr
    assert seconds < 15
    assert not (profile / "spooler.pid").exists()


def test_once_the_store_is_known_unreachable_operations_fail_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first operation after a cut may wait the full connect timeout for a pooled connection;
    the retries after it wait OUTAGE_WAIT_SECONDS, so a daemon's stop is not held up for long."""
    from postroom.store.postgres import OUTAGE_WAIT_SECONDS, PostgresStore

    connect_timeout = 6.0
    with temp_schema("outage") as url:
        upstream = urlsplit(url)
        assert upstream.hostname is not None and upstream.port is not None
        with TCPProxy((upstream.hostname, upstream.port)) as proxy:
            for name, value in pgpass_for(proxy.port, upstream.port, tmp_path).items():
                monkeypatch.setenv(name, value)
            store = PostgresStore(via(url, proxy.port), connect_timeout=connect_timeout)
            try:
                assert store.next_due() is None
                proxy.cut()
                waits = []
                for _ in range(3):
                    started = time.monotonic()
                    with pytest.raises(MAPIError) as failed:
                        store.next_due()
                    waits.append(time.monotonic() - started)
                    assert failed.value.code is HResult.MAPI_E_NETWORK_ERROR
                proxy.restore()
                assert wait_until(lambda: answers(store), 30), "the store did not come back"
            finally:
                store.close()
    assert all(w < OUTAGE_WAIT_SECONDS + 2 < connect_timeout for w in waits[1:]), waits


def answers(store: MessageStore) -> bool:
    try:
        store.next_due()
    except MAPIError:
        return False
    return True
