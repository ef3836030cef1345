"""/metrics and /healthz of `postroom serve http`, read back with prometheus-client's own parser.

A known sequence of deliveries, failures and retries goes through the spooler, and the numbers
the page exposes match what the test made and what the store holds: on SQLite with one spooler,
and on PostgreSQL with two spooler daemons sharing the store (each delivery counted once).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.harness.spoolers import smtp_profile, start_spooler
from tests.store.pgutil import require_server, temp_schema

import postroom
from postroom.profile import Profile

from support.smtp_sink import SmtpSink
from support.web import http, served

pytestmark = pytest.mark.integration

#: Recipient → what the SMTP server answers (all others: 250).
REPLIES = {"reject@sink.test": "550 5.1.1 <reject@sink.test>: no such user", "busy@sink.test": "450 4.2.1 busy"}
RECIPIENTS = ["ok1@sink.test", "ok2@sink.test", "reject@sink.test", "busy@sink.test", "nobody@elsewhere.test"]
#: What the sequence below leaves in the history.
EXPECTED_OUTCOMES = {("mta", "delivered"): 2, ("mta", "failed"): 1, ("none", "failed"): 1}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) → value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def make_profile(directory: Path, sink: SmtpSink, store: str | None = None) -> Path:
    settings: dict[str, Any] = {"store": store} if store else {}
    # Retries far apart: the only retries are the ones the test asks for.
    return smtp_profile(
        directory,
        sink.port,
        settings,
        {"domains": ["sink.test"]},
        {"retry_min_seconds": 3600, "retry_max_seconds": 7200},
    )


def submit_all(profile: Path) -> dict[str, int]:
    with postroom.logon(Profile.load(profile)) as session:
        return {to: session.create_message(f"to {to}", "b").to(to).submit() for to in RECIPIENTS}


def check_metrics(url: str, profile: Path) -> None:
    status, text = http(url + "/metrics")
    assert status == 200
    got = samples(text)
    for (transport, outcome), n in EXPECTED_OUTCOMES.items():
        assert got[("postroom_recipients_total", (("outcome", outcome), ("transport", transport)))] == n
    assert got[("postroom_retries_total", (("transport", "mta"),))] == 2  # busy, twice
    assert got[("postroom_operator_retries_total", ())] == 1
    assert got[("postroom_queue_depth", (("state", "queued"),))] == 1
    assert got[("postroom_queue_messages", (("state", "queued"), ("transport", "mta")))] == 1
    assert got[("postroom_queue_oldest_age_seconds", ())] > 0
    assert got[("postroom_delivery_latency_seconds_count", (("transport", "mta"),))] == 3
    assert got[("postroom_breaker_open", (("transport", "mta"),))] == 0
    # The same numbers as the store's own.
    with postroom.logon(Profile.load(profile)) as session:
        stats = session.delivery_stats()
        counts = session.queue_counts()
    assert {(t or "none", o): n for (t, o), n in stats.outcomes.items()} == EXPECTED_OUTCOMES
    assert stats.retries == {"mta": 2}
    assert counts.by_state == {"queued": 1}
    status, body = http(url + "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    assert "secret" not in text and "password" not in text.lower()


def wait_until(what: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_metrics_match_the_store_after_deliveries_failures_and_retries_on_sqlite(tmp_path: Path) -> None:
    with SmtpSink(REPLIES) as sink:
        profile = make_profile(tmp_path / "p", sink)
        ids = submit_all(profile)
        with postroom.logon(Profile.load(profile)) as session:
            session.deliver()
            assert session.retry(ids["busy@sink.test"]) == 1
            session.deliver()
        with served(profile) as url:
            check_metrics(url, profile)


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_metrics_count_each_delivery_once_with_two_spoolers_on_postgresql(tmp_path: Path) -> None:
    require_server()
    with SmtpSink(REPLIES) as sink, temp_schema("web") as url:
        profiles = [make_profile(tmp_path / f"node{n}", sink, url) for n in range(2)]
        logs = [tmp_path / f"spooler{n}.log" for n in range(2)]
        spoolers = [start_spooler(p, log) for p, log in zip(profiles, logs, strict=True)]
        try:
            ids = submit_all(profiles[0])
            with postroom.logon(Profile.load(profiles[0])) as session:

                def settled() -> bool:
                    busy = session.queue_entry(ids["busy@sink.test"])
                    return session.queue_counts().total == 1 and busy is not None and busy.failures >= 1

                wait_until(settled)
                assert session.retry(ids["busy@sink.test"]) == 1
                wait_until(lambda: (e := session.queue_entry(ids["busy@sink.test"])) is not None and e.failures >= 2)
            with served(profiles[1]) as page:
                check_metrics(page, profiles[1])
        finally:
            for spooler in spoolers:
                spooler.terminate()
            for spooler in spoolers:
                spooler.wait(20)
