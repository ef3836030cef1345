"""The spooler daemon runs on uvloop when it is installed (`postroom[fast]`) and says so; plain
asyncio when told (POSTROOM_EVENT_LOOP=asyncio); one clear error for a bad value."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
from pathlib import Path

import pytest

from support.cli import as_json, ok, one_line_error, popen, postroom, wait_for
from support.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def stopped(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def spooler_row(profile: Path) -> dict[str, object]:
    st = as_json(ok(postroom("status", "--json", profile=profile)))
    row: dict[str, object] = next(r for r in st["rows"] if r["type"] == "spooler")
    return row


def test_the_daemon_delivers_over_smtp_on_its_event_loop_and_says_which(profile: Path) -> None:
    """uvloop when installed (the test extra installs it), else asyncio; POSTROOM_EVENT_LOOP=asyncio
    is tested without a daemon (tests/unit/test_eventloop.py)."""
    wanted = "uvloop" if HAS_UVLOOP else "asyncio"
    env = {"POSTROOM_EVENT_LOOP": None}
    with SmtpSink() as sink:
        ok(postroom("service", "add", "smtp", "relay", *sink.options(), profile=profile))
        ok(postroom("send", "--to", "SMTP:alice@example.test", "-s", "loop", "-b", "x", profile=profile))
        daemon = popen("spooler", profile=profile, env=env)
        try:
            wait_for(lambda: len(sink.delivered) == 1, 30)
            wait_for(lambda: as_json(ok(postroom("status", "--json", profile=profile)))["source"] == "daemon", 30)
            row = spooler_row(profile)
        finally:
            code, out, err = stopped(daemon)
    assert code == 0 and "Traceback" not in err, err
    assert f"event loop {wanted}" in out.splitlines()[0]
    assert str(row["status_string"]).endswith(f"; event loop {wanted}")
    assert sink.delivered == [["alice@example.test"]]


def test_a_bad_event_loop_setting_is_one_clear_error(profile: Path) -> None:
    bad = postroom("spooler", profile=profile, env={"POSTROOM_EVENT_LOOP": "tokio"}, timeout=30)
    one_line_error(bad, "MAPI_E_INVALID_PARAMETER", "POSTROOM_EVENT_LOOP")
