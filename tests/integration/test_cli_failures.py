"""Failures are failures, interruptions leave nothing stuck, and the small things a new user hit.

Issue 13, points 4 to 7, through the `postroom` command as a user types it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

import postroom
from postroom.engine.pidfile import DaemonPidFile, read_pid, running_daemon

from support.cli import as_json, ok, one_line_error, popen, wait_for
from support.cli import postroom as run
from support.smtp_sink import SmtpSink, free_port

pytestmark = pytest.mark.integration


def slow_fax(profile: Path, tmp_path: Path, seconds: float = 2.0) -> Path:
    """A FAX pipe transport that says when it starts, then takes `seconds`; returns its log."""
    log = tmp_path / "fax.log"
    script = tmp_path / "slowfax.sh"
    script.write_text(
        f'#!/bin/sh\necho start >> "{log}.started"\nsleep {seconds}\ncat > /dev/null\necho "$@" >> "{log}"\n'
    )
    script.chmod(0o755)
    ok(
        run(
            "service", "add", "pipe", "fax", "--set", f"command={json.dumps([str(script)])}",
            "--set", "address_types=FAX", profile=profile,
        )
    )  # fmt: skip
    return log


def started(log: Path) -> int:
    marker = log.with_name(log.name + ".started")
    return len(marker.read_text().splitlines()) if marker.exists() else 0


# --- 4. failures are failures ------------------------------------------------------------------


def test_sendreceive_exits_1_and_names_the_transport_whose_smtp_server_is_down(profile: Path) -> None:
    closed = free_port()
    ok(run("service", "add", "smtp", "work", "--set", "host=127.0.0.1", "--set", f"port={closed}",
           "--set", "security=none", profile=profile))  # fmt: skip
    ok(run("offline", profile=profile))
    ok(run("send", "--to", "bob@example.test", "-b", "x", profile=profile))
    result = run("sendreceive", "--json", profile=profile)
    assert result.returncode == 1, result.stderr
    doc = as_json(result)
    assert doc["ok"] is False and doc["sent"] == 0 and doc["deferred"] == 1
    [error] = doc["errors"]
    assert error.startswith("work: ") and "cannot connect" in error
    status = {r["name"]: r for r in as_json(ok(run("status", "--json", profile=profile)))["rows"]}
    assert "failure" in status["work"]["status"] and "cannot connect" in status["work"]["last_error"]


def test_receive_fails_when_the_password_variable_is_unset_or_the_server_is_down(profile: Path) -> None:
    env = {"MAIL_PASSWORD": "secret"}
    ok(run("service", "add", "imap", "inbox", "--set", "host=127.0.0.1", "--set", f"port={free_port()}",
           "--set", "security=none", "--set", "username=alice", "--set", "password_env=MAIL_PASSWORD",
           profile=profile, env=env))  # fmt: skip
    down = run("receive", "--json", profile=profile, env=env)
    assert down.returncode == 1
    doc = as_json(down)
    assert doc["ok"] is False and doc["received"] == 0 and "cannot connect" in doc["errors"][0]
    human = run("receive", profile=profile, env=env)
    assert human.returncode == 1 and "failed: inbox:" in human.stdout

    unset = run("receive", "--json", profile=profile, env={"MAIL_PASSWORD": None})
    assert unset.returncode == 1
    assert "MAIL_PASSWORD" in as_json(unset)["errors"][0] and "not set" in as_json(unset)["errors"][0]


def test_setup_problems_are_refused_at_service_add_and_set(profile: Path, tmp_path: Path) -> None:
    one_line_error(
        run("service", "add", "pipe", "fax", "--set", "command=/no/such/sendfax", "--set", "address_types=FAX",
            profile=profile),
        "MAPI_E_UNCONFIGURED", "was not found",
    )  # fmt: skip
    one_line_error(
        run("service", "add", "smtp", "work", "--set", "host=h", "--set", "username=u",
            "--set", f"password_file={tmp_path / 'missing'}", profile=profile),
        "MAPI_E_UNCONFIGURED", "cannot read the password file",
    )  # fmt: skip
    one_line_error(
        run("service", "add", "smtp", "work", "--set", "host=h", "--set", "username=u",
            "--set", "password_env=POSTROOM_TEST_UNSET_VARIABLE", profile=profile),
        "MAPI_E_UNCONFIGURED", "POSTROOM_TEST_UNSET_VARIABLE", "is not set",
    )  # fmt: skip
    names = [s["name"] for s in as_json(ok(run("service", "list", "--json", profile=profile)))]
    assert names == ["local"]  # nothing half-added
    ok(run("service", "add", "smtp", "work", "--set", "host=h", profile=profile))
    one_line_error(
        run("service", "set", "work", "--set", "username=u", "--set", "password_env=POSTROOM_TEST_UNSET_VARIABLE",
            profile=profile),
        "MAPI_E_UNCONFIGURED",
    )  # fmt: skip
    [work] = [s for s in as_json(ok(run("service", "list", "--json", profile=profile))) if s["name"] == "work"]
    assert "username" not in work["options"]


def test_a_server_without_auth_is_a_configuration_error_and_the_message_waits_until_the_profile_changes(
    profile: Path,
) -> None:
    with SmtpSink() as sink:
        env = {"MAIL_PASSWORD": "pw"}
        ok(run("service", "add", "smtp", "work", *sink.options(username="alice", password_env="MAIL_PASSWORD"),
               profile=profile, env=env))  # fmt: skip
        sent = ok(run("send", "--to", "bob@example.test", "-b", "x", "--json", profile=profile, env=env))
        [rcpt] = as_json(sent)["recipients"]
        assert rcpt["state"] == "waiting" and rcpt["waiting_for"] == "work"
        assert "offers no AUTH" in rcpt["why"] and "username" in rcpt["why"]
        [entry] = as_json(ok(run("queue", "--json", profile=profile)))
        assert entry["waiting_for"] == "unconfigured" and "to be configured" in entry["waiting"]
        assert sink.delivered == []
        # Fixing the profile wakes the message at once: no waiting for a retry timer.
        ok(run("service", "set", "work", "--set", "username=", "--set", "password_env=", profile=profile))
        assert as_json(ok(run("spooler", "--once", "--json", profile=profile)))["delivered"] == 1
        assert sink.delivered == [["bob@example.test"]]


# --- 5. the server's words are kept ---------------------------------------------------------------


def test_a_4xx_reply_is_shown_with_its_code_and_text_in_send_queue_and_show(profile: Path) -> None:
    with SmtpSink(replies={"busy@example.test": "450 4.2.1 Mailbox busy, try later"}) as sink:
        ok(run("service", "add", "smtp", "work", *sink.options(), profile=profile))
        sent = as_json(ok(run("send", "--to", "ok@example.test", "--to", "busy@example.test", "-b", "x", "--json",
                              profile=profile)))  # fmt: skip
        states = {r["address"]: r for r in sent["recipients"]}
        assert states["SMTP:ok@example.test"]["state"] == "delivered"
        busy = states["SMTP:busy@example.test"]
        assert busy["state"] == "waiting" and busy["waiting_for"] == "work"
        assert busy["why"] == "450 4.2.1 Mailbox busy, try later"
        [entry] = as_json(ok(run("queue", "--json", profile=profile)))
        assert "450 4.2.1 Mailbox busy" in entry["last_error"] and entry["waiting_transports"] == ["work"]
        shown = run("show", str(sent["message_id"]), profile=profile).stdout
        assert "waiting for work: 450 4.2.1 Mailbox busy, try later" in shown
        # Alone, the recipient's whole-message wait keeps the words too.
        alone = as_json(ok(run("send", "--to", "busy@example.test", "-b", "y", "--json", profile=profile)))
        assert "450 4.2.1 Mailbox busy" in alone["recipients"][0]["why"]


# --- 6. interrupting leaves nothing stuck -----------------------------------------------------------


def test_sigterm_during_spooler_once_finishes_what_is_in_flight_and_holds_no_claim(
    profile: Path, tmp_path: Path
) -> None:
    log = slow_fax(profile, tmp_path)
    for n in (1, 2):
        ok(run("send", "--later", "--to", f"FAX:+{n}", "-b", "x", profile=profile))
    proc = popen("spooler", "--once", profile=profile)
    wait_for(lambda: started(log) == 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(log.read_text().split()) == ["+1", "+2"]  # both finished
    assert as_json(ok(run("queue", "--json", profile=profile))) == []


def test_a_second_ctrl_c_gives_the_claimed_message_back_at_once(profile: Path, tmp_path: Path) -> None:
    log = slow_fax(profile, tmp_path, seconds=30)
    mid = as_json(ok(run("send", "--later", "--to", "FAX:+1", "-b", "x", "--json", profile=profile)))["message_id"]
    proc = popen("spooler", "--once", profile=profile)
    wait_for(lambda: started(log) == 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    [entry] = as_json(ok(run("queue", "--json", profile=profile)))
    assert entry["locked"] is False and entry["waiting"] == "due now"
    history = [e["kind"] for e in as_json(ok(run("show", str(mid), "--json", profile=profile)))["history"]]
    assert history[-1] == "given-back"
    ok(run("cancel", str(mid), profile=profile))  # at once: no MAPI_E_UNABLE_TO_ABORT


def test_an_expired_lease_is_shown_as_being_taken_back_and_cancel_and_retry_act_at_once(profile: Path) -> None:
    ids = [as_json(ok(run("send", "--later", "--to", f"u{n}@localhost", "-b", "x", "--json", profile=profile)))
           ["message_id"] for n in (1, 2)]  # fmt: skip
    with postroom.logon(profile) as session:
        claimed = session.engine.store.claim("elsewhere:1:gone", datetime.now(UTC), 0.05, 2)
    assert sorted(claimed) == sorted(ids)
    time.sleep(0.1)
    text = ok(run("queue", profile=profile)).stdout
    assert text.count("being taken back") >= 2 and "elsewhere:1:gone" in text
    ok(run("cancel", str(ids[0]), profile=profile))
    ok(run("retry", str(ids[1]), profile=profile))
    result = as_json(ok(run("spooler", "--once", "--json", profile=profile)))
    assert result["delivered"] == 1  # the second, taken over (resent: its outcome was unknown)


# --- 7. small things ------------------------------------------------------------------------------


def test_a_forced_second_daemon_leaves_the_first_ones_pid_file_alone(profile: Path) -> None:
    first = popen("spooler", profile=profile)
    try:
        wait_for(lambda: running_daemon(profile) == first.pid)
        refused = run("spooler", profile=profile)
        one_line_error(refused, "MAPI_E_BUSY", str(first.pid))
        second = popen("spooler", "--force", profile=profile)
        wait_for(lambda: second.stdout is not None and "Spooler running" in second.stdout.readline())
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0 and "--force" in err
        assert read_pid(profile / "spooler.pid") == first.pid and running_daemon(profile) == first.pid
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert running_daemon(profile) is None and not (profile / "spooler.pid").exists()


def test_a_stale_pid_file_never_blocks_a_start_and_status_does_not_believe_it(profile: Path) -> None:
    (profile / "spooler.pid").write_text("1\n")  # a live pid (init), but no daemon holds the file
    assert running_daemon(profile) is None
    status = as_json(ok(run("status", "--json", profile=profile)))
    assert status["daemon"]["running"] is False
    with DaemonPidFile(profile) as held:
        assert held.note is not None and "stale" in held.note
        assert running_daemon(profile) is None  # this process's own daemon is not "another one"
        assert read_pid(profile / "spooler.pid") == os.getpid()


def test_reports_and_received_messages_show_their_recipients_as_received(profile: Path) -> None:
    failed = run("send", "--to", "someone@example.org", "-b", "x", "--json", profile=profile)
    assert failed.returncode == 1
    [rcpt] = as_json(failed)["recipients"]
    assert rcpt["state"] == "failed" and "local serves only localhost" in rcpt["report_text"]
    [ndr] = as_json(ok(run("list", "Inbox", "--json", profile=profile)))
    shown = as_json(ok(run("show", str(ndr["id"]), "--json", profile=profile)))
    assert shown["recipients"] and {r["state"] for r in shown["recipients"]} == {"received"}


def test_spooler_json_prints_one_line_per_pass_as_it_goes(profile: Path) -> None:
    daemon = popen("spooler", "--json", profile=profile)
    try:
        wait_for(lambda: running_daemon(profile) == daemon.pid)
        ok(run("send", "--later", "--to", "a@localhost", "-b", "x", profile=profile))
        assert daemon.stdout is not None
        ready, _, _ = select.select([daemon.stdout], [], [], 30)
        assert ready, "no line for the pass while the daemon runs"
        line = json.loads(daemon.stdout.readline())
        assert line["pass"] == 1 and line["delivered"] == 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=60)
    last = json.loads(out.strip().splitlines()[-1])
    assert last["stopped"] is True and last["passes"] == 1 and last["delivered"] == 1


def test_history_lines_do_not_repeat_their_reason(profile: Path) -> None:
    ok(run("offline", profile=profile))
    mid = as_json(ok(run("send", "--to", "a@localhost", "-b", "x", "--json", profile=profile)))["message_id"]
    history = as_json(ok(run("show", str(mid), "--json", profile=profile)))["history"]
    for event in history:
        words = event["detail"].replace("(", " ").replace(")", " ").split(";")
        assert len(words) == len(set(words)), event
        assert event["detail"].count("Send/Receive") <= 1, event


def test_interrupted_send_keeps_the_message_and_exits_130(profile: Path, tmp_path: Path) -> None:
    log = slow_fax(profile, tmp_path, seconds=1)
    proc = popen("send", "--to", "FAX:+9", "-b", "x", profile=profile)
    wait_for(lambda: started(log) == 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "delivered" in out, (out, err)
    assert log.read_text().split() == ["+9"]
