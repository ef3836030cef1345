"""Operational faults (issue 14, items 12 to 14): a stalled writer, a store deleted under the
daemon, nonsense schedules, a full disk and a read-only profile, each met for real."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postroom.engine.pidfile import running_daemon

from support.cli import as_json, ok, one_line_error, popen, wait_for
from support.cli import postroom as run
from support.disk import fill, remount, small_disk

pytestmark = pytest.mark.integration


STALLED_WRITER = """
import sys, time, postroom
session = postroom.logon(sys.argv[1])
with session.engine.store.batch():  # a writer stopped inside its transaction
    session.create_message("stalled").to("x@localhost").submit()
    print("holding", flush=True)
    time.sleep(120)
"""


def test_readers_never_wait_for_a_stalled_writer(profile: Path) -> None:
    ok(run("send", "--later", "--to", "a@localhost", "-b", "x", profile=profile))
    writer = subprocess.Popen([sys.executable, "-c", STALLED_WRITER, str(profile)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "holding"
        for command in (["queue"], ["show", "1"], ["status"], ["list", "Outbox"], ["route", "a@localhost"]):
            ok(run(*command, profile=profile, timeout=20))  # would hang behind the writer's lock
    finally:
        writer.kill()
        writer.wait()


def test_a_daemon_stops_with_an_error_when_its_store_file_is_deleted(profile: Path) -> None:
    daemon = popen("spooler", profile=profile)
    try:
        wait_for(lambda: running_daemon(profile) == daemon.pid)
        (profile / "store.sqlite").unlink()
        ok(run("send", "--later", "--to", "a@localhost", "-b", "x", profile=profile))  # a new store, a new file
        _, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 2, err
    assert "MAPI_E_NOT_FOUND" in err
    # Which it sees first is a race: the file gone, or the new one `send` made in its place.
    assert "store.sqlite was deleted" in err or "store.sqlite was replaced by another file" in err


def test_a_schedule_of_infinity_is_refused(profile: Path) -> None:
    for every in ("inf", "nan", "1e12"):
        one_line_error(run("group", "add", "g", "--online-every", every, profile=profile), "MAPI_E_INVALID_PARAMETER")
    assert [g["name"] for g in as_json(ok(run("group", "list", "--json", profile=profile)))] == ["All Accounts"]


def test_a_full_disk_says_so_and_the_daemon_waits_until_there_is_space(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        profile = disk / "profile"
        ok(run("init", profile))
        ok(run("send", "--later", "--to", "a@localhost", "-b", "x", profile=profile))
        filler = fill(disk)
        refused = run("send", "--to", "b@localhost", "-b", "y" * 20_000, profile=profile)
        line = one_line_error(refused, "MAPI_E_NOT_ENOUGH_DISK", "no space left")
        assert "CORRUPT" not in line
        daemon = popen("spooler", profile=profile)
        try:
            assert daemon.stderr is not None
            deadline = time.monotonic() + 60
            seen = ""
            while "no space left" not in seen and time.monotonic() < deadline:
                seen += daemon.stderr.readline()
            assert "message store unusable: no space left" in seen, seen
            assert daemon.poll() is None  # waiting, not dead
            filler.unlink()
            wait_for(lambda: as_json(ok(run("queue", "--json", profile=profile))) == [], timeout=90)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=60)
        assert daemon.returncode == 0


def test_a_read_only_profile_is_no_access_with_the_path(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        profile = disk / "profile"
        ok(run("init", profile))
        remount(disk, "ro")
        try:
            line = one_line_error(run("send", "--to", "a@localhost", "-b", "x", profile=profile), "MAPI_E_NO_ACCESS")
            assert str(profile) in line and "CORRUPT" not in line
        finally:
            remount(disk, "rw")
