"""Working on the outgoing queue from the command line: hold, release, retry, cancel, flush,
deferred sends (--at, --delay), and the errors for unknown IDs and wrong states."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from postroom.mapi.codes import HResult, MAPIError

from support.cli import as_json, ok, one_line_error, postroom

pytestmark = pytest.mark.integration


def maildir_files(profile: Path) -> list[Path]:
    new = profile / "maildir" / "localhost" / "user" / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def queue(profile: Path) -> dict[int, dict[str, Any]]:
    return {q["id"]: q for q in as_json(ok(postroom("queue", "--json", profile=profile)))}


@pytest.fixture
def busy_flag(profile: Path, tmp_path: Path) -> Path:
    """A `pipe` transport `slow` for TEMP addresses: "busy, try later" (exit 75) while the flag exists."""
    flag = tmp_path / "busy"
    flag.touch()
    out = tmp_path / "slow.txt"
    script = tmp_path / "slow.sh"
    script.write_text(
        f'#!/bin/sh\ncat > /dev/null\nif [ -e "{flag}" ]; then echo "line busy" >&2; exit 75; fi\n'
        f'for a in "$@"; do printf "%s\\n" "$a" >> "{out}"; done\n'
    )
    command = json.dumps(["/bin/sh", str(script)])
    ok(
        postroom(
            "service", "add", "pipe", "slow", "--set", f"command={command}", "--set", "address_types=TEMP",
            profile=profile,
        )
    )  # fmt: skip
    return flag


def sent_by_slow(tmp_path: Path) -> list[str]:
    out = tmp_path / "slow.txt"
    return out.read_text().split() if out.exists() else []


def test_hold_and_release(profile: Path) -> None:
    mid = as_json(ok(postroom("send", "--later", "--to", "user@localhost", "-s", "Held", "--json", profile=profile)))[
        "message_id"
    ]
    held = ok(postroom("hold", mid, "--reason", "check the figures", profile=profile))
    assert f"Message {mid} held" in held.stdout
    entry = queue(profile)[mid]
    assert entry["state"] == "held" and entry["hold_reason"] == "check the figures"
    assert "held" in ok(postroom("queue", profile=profile)).stdout

    assert as_json(ok(postroom("spooler", "--once", "--json", profile=profile)))["messages"] == 0
    assert maildir_files(profile) == []
    one_line_error(postroom("hold", mid, profile=profile), "MAPI_E_INVALID_PARAMETER", "already held")
    one_line_error(postroom("retry", mid, profile=profile), "release it first")

    released = ok(postroom("release", mid, profile=profile))
    assert "released" in released.stdout and "spooler --once" in released.stdout  # no daemon runs
    assert queue(profile)[mid]["state"] == "queued"
    one_line_error(postroom("release", mid, profile=profile), "MAPI_E_INVALID_PARAMETER", "not held")
    assert as_json(ok(postroom("spooler", "--once", "--json", profile=profile)))["delivered"] == 1
    assert len(maildir_files(profile)) == 1 and queue(profile) == {}

    # Errors: unknown IDs, messages no longer queued.
    one_line_error(postroom("hold", "999", profile=profile), "MAPI_E_NOT_FOUND")
    one_line_error(postroom("release", "999", profile=profile), "MAPI_E_NOT_FOUND")
    one_line_error(postroom("cancel", "999", profile=profile), "MAPI_E_NOT_FOUND")
    one_line_error(postroom("retry", "999", profile=profile), "MAPI_E_NOT_FOUND")
    one_line_error(postroom("cancel", mid, profile=profile), "MAPI_E_NOT_IN_QUEUE")  # already sent
    one_line_error(postroom("hold", mid, profile=profile), "MAPI_E_NOT_IN_QUEUE")
    as_doc = postroom("release", mid, "--json", profile=profile)
    one_line_error(as_doc, "MAPI_E_NOT_IN_QUEUE")
    assert as_json(as_doc)["error"]["code"] == "MAPI_E_NOT_IN_QUEUE"
    one_line_error(postroom("retry", profile=profile), "message ID or --all")


def test_release_as_delivered_finishes_a_held_message_without_sending_it(profile: Path) -> None:
    mid = as_json(ok(postroom("send", "--later", "--to", "user@localhost", "-s", "Sent?", "--json", profile=profile)))[
        "message_id"
    ]
    usage = postroom("release", mid, "--note", "x", profile=profile)
    assert usage.returncode == 2 and "--note goes with --as-delivered" in usage.stderr
    one_line_error(postroom("release", mid, "--as-delivered", profile=profile), "MAPI_E_INVALID_PARAMETER", "not held")

    ok(postroom("hold", mid, "--reason", "outcome unknown", profile=profile))
    done = ok(postroom("release", mid, "--as-delivered", "--note", "smtp log: 250 queued as 4F2A", profile=profile))
    assert f"Message {mid} marked delivered without sending it again" in done.stdout
    assert queue(profile) == {}
    assert as_json(ok(postroom("spooler", "--once", "--json", profile=profile)))["messages"] == 0
    assert maildir_files(profile) == []  # not sent again
    history = ok(postroom("show", mid, profile=profile)).stdout
    assert "confirmed-delivered" in history and "250 queued as 4F2A" in history


def test_retry_and_flush_a_waiting_message(profile: Path, busy_flag: Path, tmp_path: Path) -> None:
    first = ok(postroom("send", "--to", "TEMP:one", "-s", "Patience", "--json", profile=profile))
    mid = as_json(first)["message_id"]
    entry = queue(profile)[mid]
    assert entry["waiting_for"] == "retry" and "line busy" in entry["last_error"]
    assert entry["waiting"].startswith("retry at")
    assert as_json(ok(postroom("spooler", "--once", "--json", profile=profile)))["messages"] == 0  # not due

    busy_flag.unlink()
    retried = as_json(ok(postroom("retry", "--all", "--json", profile=profile)))
    assert retried["retried"] == [mid]
    assert as_json(ok(postroom("spooler", "--once", "--json", profile=profile)))["delivered"] == 1
    assert sent_by_slow(tmp_path) == ["one"] and queue(profile) == {}

    # flush --transport: the waiting message goes at once, without waiting for its backoff.
    busy_flag.touch()
    mid2 = as_json(ok(postroom("send", "--to", "TEMP:two", "--json", profile=profile)))["message_id"]
    assert queue(profile)[mid2]["attempts"] == 1
    busy_flag.unlink()
    flushed = ok(postroom("flush", "--transport", "slow", profile=profile))
    assert "1 sent, 0 failed" in flushed.stdout
    assert sent_by_slow(tmp_path) == ["one", "two"] and queue(profile) == {}
    one_line_error(postroom("flush", "--transport", "telex", profile=profile), "MAPI_E_NOT_FOUND", "telex")

    # retry ID on one message.
    busy_flag.touch()
    mid3 = as_json(ok(postroom("send", "--to", "TEMP:three", "--json", profile=profile)))["message_id"]
    busy_flag.unlink()
    assert f"Message {mid3} is due now" in ok(postroom("retry", mid3, profile=profile)).stdout
    ok(postroom("spooler", "--once", profile=profile))
    assert sent_by_slow(tmp_path) == ["one", "two", "three"]


def test_deferred_send_and_cancel(profile: Path) -> None:
    before = datetime.now(UTC)
    doc = as_json(
        ok(postroom("send", "--to", "user@localhost", "-s", "Later", "--delay", "5m", "--json", profile=profile))
    )
    mid = doc["message_id"]
    due = datetime.fromisoformat(doc["deferred_until"])
    assert timedelta(minutes=4, seconds=50) < due - before < timedelta(minutes=5, seconds=30)
    entry = queue(profile)[mid]
    assert entry["attempts"] == 0 and entry["waiting"].startswith("deferred send at")

    # Not due: neither a spooler pass nor `retry --all` sends it.
    assert as_json(ok(postroom("spooler", "--once", "--json", profile=profile)))["messages"] == 0
    assert as_json(ok(postroom("retry", "--all", "--json", profile=profile)))["left_scheduled"] == [mid]
    assert maildir_files(profile) == []

    cancelled = ok(postroom("cancel", mid, profile=profile))
    assert f"Message {mid} cancelled" in cancelled.stdout and "Outbox" in cancelled.stdout
    assert queue(profile) == {}
    outbox = as_json(ok(postroom("list", "Outbox", "--json", profile=profile)))
    assert [m["id"] for m in outbox] == [mid]
    flags = as_json(ok(postroom("show", mid, "--json", profile=profile)))["flags"]
    assert flags & 0x8 and not flags & 0x4  # MSGFLAG_UNSENT, no longer MSGFLAG_SUBMIT
    assert maildir_files(profile) == []

    # --at: ISO 8601 in local time, and HH:MM; the human line says how to undo.
    at = (datetime.now() + timedelta(hours=2)).replace(second=0, microsecond=0)
    human = ok(postroom("send", "--to", "user@localhost", "--at", at.strftime("%Y-%m-%dT%H:%M"), profile=profile))
    assert at.strftime("%Y-%m-%d %H:%M:00") in human.stdout and "postroom cancel" in human.stdout
    clock = as_json(
        ok(postroom("send", "--to", "user@localhost", "--at", at.strftime("%H:%M"), "--json", profile=profile))
    )
    assert datetime.fromisoformat(clock["deferred_until"]) == at.astimezone(UTC)
    assert len(queue(profile)) == 2

    # Bad times are refused before anything is submitted.
    one_line_error(postroom("send", "--to", "user@localhost", "--delay", "5 minutes", profile=profile), "--delay")
    one_line_error(postroom("send", "--to", "user@localhost", "--delay", "0s", profile=profile), "--delay")
    one_line_error(postroom("send", "--to", "user@localhost", "--at", "teatime", profile=profile), "--at")
    one_line_error(postroom("send", "--to", "user@localhost", "--at", "25:61", profile=profile), "--at")
    # Beyond what a date can hold: the same one-line refusal, never an OverflowError.
    for option, value in (("--delay", "999999999999999s"), ("--at", "0001-01-01T00:00+14:00")):
        refused = postroom("send", "--to", "user@localhost", option, value, profile=profile)
        one_line_error(refused, "MAPI_E_INVALID_PARAMETER", option, value)
    one_line_error(
        postroom("send", "--to", "user@localhost", "--at", "2020-01-01T10:00", profile=profile), "in the past"
    )
    one_line_error(
        postroom("send", "--to", "user@localhost", "--at", "12:00", "--delay", "1h", profile=profile), "not both"
    )
    assert len(queue(profile)) == 2
    assert len(as_json(ok(postroom("list", "Outbox", "--json", profile=profile)))) == 3


def test_time_parsing() -> None:
    from postroom.cli.send import parse_at, parse_delay

    assert parse_delay("90s") == timedelta(seconds=90)
    assert parse_delay("1h30m") == timedelta(hours=1, minutes=30)
    assert parse_delay("1d") == timedelta(days=1)
    now = datetime(2026, 11, 22, 14, 0, tzinfo=UTC).astimezone()  # local 14:00 UTC-equivalent
    local_now = now.astimezone()
    later_today = (local_now + timedelta(minutes=30)).strftime("%H:%M")
    earlier = (local_now - timedelta(minutes=30)).strftime("%H:%M")
    assert parse_at(later_today, now) - now <= timedelta(minutes=30)
    assert timedelta(hours=23) < parse_at(earlier, now) - now <= timedelta(hours=24)
    assert parse_at("2026-11-22T15:00+00:00", now) == datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
    for bad in ("", "5", "-5m", "5mm", "999999999999999s", "9" * 400 + "d"):
        with pytest.raises(MAPIError) as info:
            parse_delay(bad)
        assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER and info.value.message.startswith("--delay: ")
    for bad in ("yesterday", "24:00", "2026-11-22T13:00+00:00", "0001-01-01T00:00+14:00", "9999-12-31T23:59-14:00"):
        with pytest.raises(MAPIError) as info:
            parse_at(bad, now)
        assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER and info.value.message.startswith("--at: ")
