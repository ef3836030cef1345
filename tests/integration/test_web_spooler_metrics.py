"""/metrics about the spooler processes themselves, read back with prometheus-client's own parser:
throttle waits, connection slots in use and the duration of the spooler's passes.

A throttled transport (one message a minute) gets three messages: one goes, two wait for the
throttle. The numbers the page shows match that and what the store holds: on SQLite with passes
made in the test, and on PostgreSQL with two spooler daemons sharing the store, each process
counted once. The slots in use are held by the test process while another process (the page)
reads them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.harness.spoolers import smtp_profile, start_spooler
from tests.integration.test_web_metrics import samples
from tests.store.pgutil import require_server, temp_schema

import postroom
from postroom.profile import Profile
from postroom.store import open_store
from postroom.store.activity import PASS_BUCKETS

from support.smtp_sink import SmtpSink
from support.web import http, served

pytestmark = pytest.mark.integration

RECIPIENTS = ["ok1@sink.test", "ok2@sink.test", "ok3@sink.test"]


def make_profile(directory: Path, sink: SmtpSink, store: str | None = None) -> Path:
    settings: dict[str, Any] = {"store": store} if store else {}
    # One message a minute: the first goes, the next ones wait for the throttle (about a minute,
    # longer than the test), so each is held back exactly once.
    return smtp_profile(
        directory,
        sink.port,
        settings,
        {"domains": ["sink.test"], "connections": 4},
        {"max_per_minute": 1, "retry_min_seconds": 3600, "retry_max_seconds": 7200},
    )


def submit_all(profile: Path) -> None:
    with postroom.logon(Profile.load(profile)) as session:
        for to in RECIPIENTS:
            session.create_message(f"to {to}", "b").to(to).submit()


@contextmanager
def slots_held(profile: Path, transport: str, count: int) -> Iterator[None]:
    """This process holds `count` of the transport's connection slots (as a spooler sending would)."""
    loaded = Profile.load(profile)
    store = open_store(loaded.store_url or loaded.store_path)
    try:
        taken = [store.connection_slots.try_acquire(transport, 4) for _ in range(count)]
        assert None not in taken
        yield
        for slot in taken:
            assert slot is not None
            store.connection_slots.release(transport, slot)
    finally:
        store.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = http(url + "/metrics")
    assert status == 200, text
    return samples(text)


def check_pass_histogram(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], passes: int) -> None:
    name = "postroom_spooler_pass_duration_seconds"
    assert got[(name + "_count", ())] == passes
    assert got[(name + "_bucket", (("le", "+Inf"),))] == passes
    below = [got[(name + "_bucket", (("le", str(b)),))] for b in PASS_BUCKETS]
    assert below == sorted(below) and below[-1] <= passes
    assert got[(name + "_sum", ())] > 0


def wait_until(what: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_throttle_waits_slots_and_passes_match_the_store_on_sqlite(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        profile = make_profile(tmp_path / "p", sink)
        submit_all(profile)
        with postroom.logon(Profile.load(profile)) as session:
            session.deliver()  # one goes, two wait for the throttle
            session.deliver()  # nothing is due: a pass all the same
        assert len(sink.delivered) == 1
        with served(profile) as url:
            got = scrape(url)
            assert got[("postroom_throttle_waits_total", (("transport", "mta"),))] == 2
            assert got[("postroom_connection_slots_in_use", (("transport", "mta"),))] == 0
            assert got[("postroom_spooler_processes", ())] == 1
            check_pass_histogram(got, 2)
            with slots_held(profile, "mta", 2):
                got = scrape(url)
                assert got[("postroom_connection_slots_in_use", (("transport", "mta"),))] == 2
        with postroom.logon(Profile.load(profile)) as session:
            stats = session.spooler_stats()
        assert (stats.passes, stats.processes, stats.throttle_waits) == (2, 1, {"mta": 2})


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_two_spoolers_on_postgresql_are_each_counted_once(tmp_path: Path) -> None:
    require_server()
    with SmtpSink() as sink, temp_schema("webpass") as url:
        profiles = [make_profile(tmp_path / f"node{n}", sink, url) for n in range(2)]
        logs = [tmp_path / f"spooler{n}.log" for n in range(2)]
        spoolers = [start_spooler(p, log) for p, log in zip(profiles, logs, strict=True)]
        try:
            with postroom.logon(Profile.load(profiles[0])) as session:
                wait_until(lambda: session.spooler_stats().processes == 2)  # each daemon's first pass
                submit_all(profiles[0])
                wait_until(lambda: session.spooler_stats().throttle_waits.get("mta", 0) >= 2)
                wait_until(lambda: session.spooler_stats().slots_in_use == {"mta": 0})  # idle connections closed
                stats = session.spooler_stats()
            assert len(sink.delivered) == 1
            assert stats.throttle_waits == {"mta": 2}  # one process or the other: the sum is what happened
            with served(profiles[1]) as page:
                got = scrape(page)
                assert got[("postroom_throttle_waits_total", (("transport", "mta"),))] == 2
                assert got[("postroom_spooler_processes", ())] == 2
                check_pass_histogram(got, stats.passes)
                with slots_held(profiles[0], "mta", 3):
                    got = scrape(page)
                    assert got[("postroom_connection_slots_in_use", (("transport", "mta"),))] == 3
        finally:
            for spooler in spoolers:
                spooler.terminate()
            for spooler in spoolers:
                spooler.wait(20)
