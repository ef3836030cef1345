"""The protocol manager from the command line, as real processes: online/offline, Send/Receive,
groups, call-when-offline transports, the spooler daemon under concurrency and SIGTERM, `watch`."""

from __future__ import annotations

import json
import queue
import select
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from support.cli import as_json, ok, one_line_error, popen, postroom

pytestmark = pytest.mark.integration


def maildir_files(profile: Path, user: str = "user") -> list[Path]:
    new = profile / "maildir" / "localhost" / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[str], timeout: float = 10) -> tuple[int, str, str]:
    """SIGTERM, then the exit code and output (killed if it does not stop in time)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"did not stop within {timeout} s after SIGTERM: {err}") from None
    return proc.returncode, out, err


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "profile"
    ok(postroom("init", directory, profile=directory))
    yield directory


def set_profile_setting(profile: Path, key: str, value: Any) -> None:
    from postroom.profile import Profile

    p = Profile.load(profile)
    p.settings[key] = value
    p.save()


def add_counter(profile: Path, tmp_path: Path, name: str = "counter", sleep: float = 0.0) -> Path:
    """A `pipe` transport for address type CNT: one line per recipient into a counter file.

    Each line is one short O_APPEND write (atomic), so concurrent calls never mix lines.
    """
    counter = tmp_path / f"{name}.txt"
    script = tmp_path / f"{name}.sh"
    nap = f"sleep {sleep}\n" if sleep else ""
    script.write_text(f'#!/bin/sh\ncat > /dev/null\n{nap}for a in "$@"; do printf "%s\\n" "$a" >> "{counter}"; done\n')
    command = json.dumps(["/bin/sh", str(script)])
    ok(
        postroom(
            "service", "add", "pipe", name, "--set", f"command={command}", "--set", 'address_types=["CNT"]',
            profile=profile,
        )
    )  # fmt: skip
    return counter


def counted(counter: Path) -> Counter[str]:
    return Counter(counter.read_text().split()) if counter.exists() else Counter()


def submit_many(profile: Path, n: int) -> list[str]:
    """n messages to CNT:mNN, submitted with `send --later`, several processes at a time."""
    names = [f"m{i:02d}" for i in range(n)]

    def one(name: str) -> None:
        ok(postroom("send", "--later", "--to", f"CNT:{name}", "-s", name, "-b", "x", profile=profile))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, names))
    return names


def submit_in_process(profile: Path, n: int) -> list[str]:
    """The same through the Python API (a test that needs many messages but is not about `send`)."""
    import postroom

    names = [f"m{i:02d}" for i in range(n)]
    with postroom.logon(profile) as session:
        for name in names:
            session.create_message(name, "x").to(f"CNT:{name}").submit()
    return names


def queue_entries(profile: Path) -> list[dict[str, Any]]:
    return list(as_json(ok(postroom("queue", "--json", profile=profile))))


def waiting_for(profile: Path) -> list[str | None]:
    """What each queued message waits for, read in-process (cheap enough to poll)."""
    import postroom

    with postroom.logon(profile) as session:
        return [q.waiting_for.value if q.waiting_for else None for q in session.queue()]


def test_offline_message_waits_for_sendreceive(profile: Path) -> None:
    off = as_json(ok(postroom("offline", "--json", profile=profile)))
    assert off["mode"] == "offline" and off["previous"] == "online"
    human = ok(postroom("offline", profile=profile))
    assert "Offline" in human.stdout and "postroom sendreceive" in human.stdout

    sent = ok(postroom("send", "--to", "user@localhost", "-s", "Seed", "-b", "x", "--json", profile=profile))
    doc = as_json(sent)
    [rcpt] = doc["recipients"]
    assert rcpt["state"] == "waiting" and rcpt["next_try"] == "at the next Send/Receive"
    [entry] = queue_entries(profile)
    assert entry["id"] == doc["message_id"] and entry["waiting_for"] == "send_receive"
    assert "waiting for Send/Receive" in ok(postroom("queue", profile=profile)).stdout
    assert maildir_files(profile) == []

    # Not a failure, and a spooler pass does not send it either while offline.
    assert as_json(ok(postroom("spooler", "--once", "--json", profile=profile)))["failed"] == 0
    assert maildir_files(profile) == []

    flushed = ok(postroom("sendreceive", profile=profile))
    assert "local: connecting" in flushed.stdout and "local: sending" in flushed.stdout
    assert "local: done" in flushed.stdout
    assert "1 sent, 0 failed, 0 deferred, 0 waiting, 0 received" in flushed.stdout.splitlines()[-1]
    assert len(maildir_files(profile)) == 1
    assert queue_entries(profile) == []

    ok(postroom("send", "--to", "user@localhost", "-b", "second", profile=profile))
    summary = as_json(ok(postroom("sendreceive", "--json", profile=profile)))
    assert (summary["sent"], summary["failed"], summary["ok"], summary["mode"]) == (1, 0, True, "offline")
    assert [t["transport"] for t in summary["transports"]] == ["local"]
    assert len(maildir_files(profile)) == 2


def test_call_when_offline_transport_sends_at_once(profile: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "faxes"
    outdir.mkdir()
    command = json.dumps(["/bin/sh", "-c", 'cat > "$1/$2.eml"', "sh", str(outdir)])
    ok(
        postroom(
            "service", "add", "pipe", "fax", "--call-when-offline", "--set", f"command={command}",
            "--set", 'address_types=["FAX"]', "--policy", "max_per_hour=100", profile=profile,
        )
    )  # fmt: skip
    [_, fax] = as_json(ok(postroom("service", "list", "--json", profile=profile)))
    assert fax["call_when_offline"] is True and fax["policy"] == {"max_per_hour": 100}
    assert "call-when-offline): fax" in ok(postroom("offline", profile=profile)).stdout

    doc = as_json(
        ok(postroom("send", "--to", "FAX:+1555", "--cc", "user@localhost", "-s", "Both", "--json", profile=profile))
    )
    states = {r["address"]: (r["state"], r["transport"]) for r in doc["recipients"]}
    assert states == {"FAX:+1555": ("delivered", "fax"), "SMTP:user@localhost": ("waiting", None)}
    assert (outdir / "+1555.eml").is_file()
    assert maildir_files(profile) == []
    [entry] = queue_entries(profile)
    assert (entry["pending"], entry["recipients"], entry["waiting_for"]) == (1, 2, "send_receive")

    # service set: no longer called offline; bad policy keys and options are refused.
    changed = as_json(ok(postroom("service", "set", "fax", "--no-call-when-offline", "--json", profile=profile)))
    assert changed["service"]["call_when_offline"] is False
    one_line_error(
        postroom("service", "set", "fax", "--policy", "bogus=1", profile=profile), "MAPI_E_INVALID_PARAMETER"
    )
    one_line_error(postroom("service", "set", "fax", "--set", "nope=1", profile=profile), "unknown option 'nope'")
    one_line_error(postroom("service", "set", "telex", profile=profile), "MAPI_E_NOT_FOUND")
    doc = as_json(ok(postroom("send", "--to", "FAX:+1666", "-b", "x", "--json", profile=profile)))
    assert doc["recipients"][0]["state"] == "waiting"
    assert not (outdir / "+1666.eml").exists()


def test_exactly_once_with_a_daemon_and_two_concurrent_sendreceives(profile: Path, tmp_path: Path) -> None:
    counter = add_counter(profile, tmp_path)
    set_profile_setting(profile, "online_stability_seconds", 0.3)
    ok(postroom("offline", profile=profile))
    names = submit_many(profile, 40)

    daemon = popen("spooler", profile=profile)
    try:
        # The daemon's first pass parks every message for Send/Receive (it listens from then on).
        wait_for(lambda: waiting_for(profile) == ["send_receive"] * 40, 30, "the daemon to park the messages")
        st = as_json(ok(postroom("status", "--json", profile=profile)))
        assert st["daemon"] == {"running": True, "pid": daemon.pid} and st["source"] == "daemon"
        spooler_row = next(r for r in st["rows"] if r["type"] == "spooler")
        assert "offline" in spooler_row["status"]

        racers = [popen("online", profile=profile), popen("sendreceive", profile=profile)]
        racers.append(popen("sendreceive", profile=profile))
        for proc in racers:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, (proc.args, out, err)
            assert "Traceback" not in err
        wait_for(lambda: waiting_for(profile) == [], 60, "the queue to empty")
    finally:
        code, out, err = stop(daemon)
    assert code == 0, err
    assert "Traceback" not in err and "stopped" in out
    assert counted(counter) == Counter(names)  # every message exactly once
    assert not (profile / "spooler.pid").exists()


def test_sigterm_during_a_flush_loses_nothing(profile: Path, tmp_path: Path) -> None:
    counter = add_counter(profile, tmp_path, sleep=0.1)
    set_profile_setting(profile, "online_stability_seconds", 0.2)
    set_profile_setting(profile, "spooler_concurrency", 4)  # fewer in flight than queued: a flush to cut short
    ok(postroom("offline", profile=profile))
    names = submit_in_process(profile, 40)

    daemon = popen("spooler", profile=profile)
    try:
        wait_for(lambda: waiting_for(profile) == ["send_receive"] * 40, 30, "the daemon to park the messages")
        # A second daemon on the same profile is refused.
        one_line_error(postroom("spooler", profile=profile), "MAPI_E_BUSY", "already running", str(daemon.pid))
        ok(postroom("online", profile=profile))
        wait_for(lambda: sum(counted(counter).values()) >= 4, 20, "the flush to start")
        started = time.monotonic()
        code, out, err = stop(daemon, timeout=10)
        assert time.monotonic() - started < 8
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert code == 0, err
    assert "Traceback" not in err and "stopped" in out
    assert not (profile / "spooler.pid").exists()
    after_stop = counted(counter)
    assert max(after_stop.values()) == 1  # nothing twice
    assert sum(after_stop.values()) < 40, "the flush was not cut short; the test proves nothing"

    # Whatever the daemon left is due, and the next spooler finishes it.
    finished = ok(postroom("spooler", "--once", "--json", profile=profile))
    assert as_json(finished)["failed"] == 0
    assert queue_entries(profile) == []
    assert counted(counter) == Counter(names)


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_watch_sees_the_ndr(profile: Path) -> None:
    watcher = popen("watch", "--json", profile=profile)
    try:
        ready, _, _ = select.select([watcher.stderr], [], [], 15)
        assert ready, "watch printed nothing"
        assert watcher.stderr is not None and "watching" in watcher.stderr.readline()
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_lines, args=(watcher.stdout, lines), daemon=True).start()

        failed = postroom("send", "--to", "someone@nowhere.test", "-s", "Lost", "-b", "x", profile=profile)
        assert failed.returncode == 1, failed.stderr  # a failed recipient: exit 1, and an NDR
        event = json.loads(lines.get(timeout=10))
        assert event["message_class"] == "REPORT.IPM.Note.NDR"
        assert event["folder"] == "Inbox" and "Lost" in event["subject"]
    finally:
        code, _, err = stop(watcher, timeout=5)
    assert code == 0, err
    assert "Traceback" not in err


def test_status_shows_the_spooler_offline(profile: Path) -> None:
    ok(postroom("offline", profile=profile))
    ok(postroom("send", "--to", "user@localhost", "-b", "x", profile=profile))
    doc = as_json(ok(postroom("status", "--json", profile=profile)))
    assert doc["mode"] == "offline" and doc["daemon"]["running"] is False and doc["source"] == "this command"
    rows = {r["type"]: r for r in doc["rows"]}
    assert rows["spooler"]["status"] == ["offline"]
    assert "1 message(s) waiting for Send/Receive" in rows["spooler"]["status_string"]
    local = next(r for r in doc["rows"] if r["name"] == "local")
    assert "offline" in local["status"]
    human = ok(postroom("status", profile=profile)).stdout
    assert "MAPI spooler" in human and "offline" in human and "not running" in human

    ok(postroom("online", profile=profile))
    doc = as_json(ok(postroom("status", "--json", profile=profile)))
    assert {r["type"]: r for r in doc["rows"]}["spooler"]["status"] == ["available"]


def test_groups_and_sendreceive_by_group(profile: Path, tmp_path: Path) -> None:
    add_counter(profile, tmp_path)
    added = ok(postroom("group", "add", "outgoing", "--transports", "local", "--no-offline-receive", profile=profile))
    assert "outgoing" in added.stdout
    groups = {g["name"]: g for g in as_json(ok(postroom("group", "list", "--json", profile=profile)))}
    assert set(groups) == {"All Accounts", "outgoing"}
    assert groups["outgoing"]["members"] == ["local"] and groups["outgoing"]["offline"]["receive"] is False
    assert groups["All Accounts"]["members"] == ["local", "counter"]

    ok(postroom("offline", profile=profile))
    ok(postroom("send", "--to", "user@localhost", "--to", "CNT:c1", "-b", "x", profile=profile))
    doc = as_json(ok(postroom("sendreceive", "--group", "outgoing", "--json", profile=profile)))
    assert doc["group"] == "outgoing" and doc["sent"] == 1 and doc["ok"] is True
    # Each recipient counted once: the counter's waits for its transport, outside the group.
    assert [(t["transport"], t["sent"], t["waiting"]) for t in doc["transports"]] == [
        ("local", 1, 0),
        ("counter", 0, 1),
    ]
    assert len(maildir_files(profile)) == 1
    [entry] = queue_entries(profile)  # the counter recipient still waits
    assert entry["pending"] == 1 and entry["waiting_for"] == "send_receive"

    one_line_error(postroom("sendreceive", "--group", "nope", profile=profile), "MAPI_E_NOT_FOUND", "nope")
    one_line_error(postroom("group", "add", "x", "--transports", "telex", profile=profile), "MAPI_E_NOT_FOUND", "telex")
    one_line_error(postroom("group", "remove", "All Accounts", profile=profile), "cannot be removed")
    one_line_error(postroom("group", "remove", "nope", profile=profile), "MAPI_E_NOT_FOUND")
    one_line_error(postroom("sendreceive", "--send-only", "--receive-only", profile=profile), "not both")

    # The default group can be redefined: offline it now leaves the counter out.
    ok(postroom("group", "add", "All Accounts", "--transports", "local", profile=profile))
    doc = as_json(ok(postroom("sendreceive", "--json", profile=profile)))
    # The message waits only for the counter, outside the group: it is left untouched.
    assert [(t["transport"], t["sent"], t["waiting"]) for t in doc["transports"]] == [("local", 0, 0)]
    assert doc["sent"] == 0
    assert len(queue_entries(profile)) == 1
    ok(postroom("group", "add", "All Accounts", "--transports", "all", profile=profile))
    doc = as_json(ok(postroom("sendreceive", "--send-only", "--json", profile=profile)))
    assert doc["sent"] == 1 and queue_entries(profile) == []

    assert "Removed" in ok(postroom("group", "remove", "outgoing", profile=profile)).stdout
    assert [g["name"] for g in as_json(ok(postroom("group", "list", "--json", profile=profile)))] == ["All Accounts"]


def test_receive_folders_and_receive(profile: Path) -> None:
    one_line_error(postroom("receive-folder", "set", "IPM.Note.Fax", "Faxes", profile=profile), "MAPI_E_NOT_FOUND")
    ok(postroom("receive-folder", "set", "IPM.Note.Fax", "Faxes", "--create", profile=profile))
    listed = {
        r["message_class"]: r["folder"]
        for r in as_json(ok(postroom("receive-folder", "list", "--json", profile=profile)))
    }
    assert listed["IPM.NOTE.FAX"] == "Faxes" and listed[""] == "Inbox"
    ok(postroom("receive-folder", "remove", "ipm.note.fax", profile=profile))
    one_line_error(postroom("receive-folder", "remove", "IPM.Note.Fax", profile=profile), "MAPI_E_NOT_FOUND")
    assert as_json(ok(postroom("receive", "--json", profile=profile)))["received"] == 0
