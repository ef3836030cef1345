"""The `postroom` command, run as a real process (`python -m postroom`) against real profiles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.cli import as_json, one_line_error, postroom

pytestmark = pytest.mark.integration


def maildir_files(profile: Path, domain: str = "localhost", user: str = "user") -> list[Path]:
    new = profile / "maildir" / domain / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def add_fax(profile: Path, outdir: Path) -> None:
    """A `pipe` transport for FAX: the command writes each message to OUTDIR/<number>.eml."""
    outdir.mkdir(exist_ok=True)
    command = json.dumps(["/bin/sh", "-c", 'cat > "$1/$2.eml"', "sh", str(outdir)])
    result = postroom(
        "service", "add", "pipe", "fax", "--set", f"command={command}", "--set", 'address_types=["FAX"]',
        profile=profile,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_init_default_profile_and_version(tmp_path: Path) -> None:
    target = tmp_path / "p1"
    created = postroom("--json", "init", target)
    assert created.returncode == 0, created.stderr
    doc = as_json(created)
    assert [s["name"] for s in doc["services"]] == ["local"]
    assert (target / "profile.toml").is_file()
    one_line_error(postroom("init", target), "MAPI_E_INVALID_PARAMETER", "exists already")

    empty = tmp_path / "p2"
    assert postroom("init", empty, "--empty").returncode == 0
    assert as_json(postroom("adrtypes", "--json", profile=empty)) == []

    # No --profile and no POSTROOM_PROFILE: the default profile, created on first use.
    data_home = tmp_path / "data-home"
    first = postroom("folders", "--json", env={"XDG_DATA_HOME": str(data_home)})
    assert first.returncode == 0, first.stderr
    assert {"Inbox", "Outbox", "Sent Items", "Deleted Items"} <= {f["name"] for f in as_json(first)}
    assert (data_home / "postroom" / "profiles" / "default" / "profile.toml").is_file()
    assert "created the default profile" in first.stderr
    # A mistyped POSTROOM_PROFILE is refused like a mistyped --profile: no new, empty profile.
    typo = tmp_path / "typo-profile"
    one_line_error(
        postroom("folders", env={"POSTROOM_PROFILE": str(typo)}), "MAPI_E_NOT_FOUND", "POSTROOM_PROFILE names"
    )
    assert not typo.exists()
    named = postroom("folders", "--json", env={"POSTROOM_PROFILE": str(target)})
    assert named.returncode == 0 and "created" not in named.stderr

    version = postroom("--version")
    assert version.returncode == 0 and "0.1.0" in version.stdout
    assert "transport order" in postroom("--help").stdout


def test_send_delivers_into_maildir_and_sent_items(profile: Path, tmp_path: Path) -> None:
    attachment = tmp_path / "notes.txt"
    attachment.write_text("attached text\n")
    sent = postroom(
        "send", "--to", "Some User <user@localhost>", "--subject", "Hello there", "--body", "first line",
        "--attach", attachment, "--json", profile=profile,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    doc = as_json(sent)
    mid = doc["message_id"]
    [rcpt] = doc["recipients"]
    assert rcpt["state"] == "delivered" and rcpt["transport"] == "local"
    assert rcpt["address"] == "SMTP:user@localhost"
    assert doc["finished"] == "moved"

    [delivered] = maildir_files(profile)
    text = delivered.read_text()
    assert "Subject: Hello there" in text and "notes.txt" in text

    sent_items = as_json(postroom("list", "Sent Items", "--json", profile=profile))
    assert [(m["id"], m["subject"]) for m in sent_items] == [(mid, "Hello there")]

    human = postroom("send", "--to", "user@localhost", "-s", "again", "-b", "x", profile=profile)
    assert human.returncode == 0
    assert "delivered" in human.stdout and "local" in human.stdout and "Sent Items" in human.stdout

    shown = postroom("show", str(mid), profile=profile)
    assert shown.returncode == 0
    for needle in ("Hello there", "first line", "delivered", "local", "notes.txt", "submitted", "Sent Items"):
        assert needle in shown.stdout, needle
    shown_doc = as_json(postroom("show", str(mid), "--json", profile=profile))
    assert shown_doc["recipients"][0]["state"] == "delivered"
    assert shown_doc["attachments"][0]["size"] == len("attached text\n")
    assert shown_doc["history"][0]["kind"] == "submitted"

    props = postroom("show", str(mid), "--props", profile=profile)
    assert props.returncode == 0
    assert "PR_SUBJECT" in props.stdout and "0x0037001F" in props.stdout and "PT_UNICODE" in props.stdout
    assert "PR_EMAIL_ADDRESS" in props.stdout and "PR_ATTACH_LONG_FILENAME" in props.stdout
    props_doc = as_json(postroom("show", str(mid), "--props", "--json", profile=profile))
    assert {"name": "PR_SUBJECT", "tag": "0x0037001F", "type": "PT_UNICODE", "value": "Hello there"} in props_doc[
        "props"
    ]

    exported = postroom("export", str(mid), profile=profile)
    assert exported.returncode == 0
    assert "Subject: Hello there" in exported.stdout and "To: Some User <user@localhost>" in exported.stdout

    # The exported message goes out again through --eml, its To header naming the recipient.
    eml = tmp_path / "m.eml"
    eml.write_text(exported.stdout)
    again = postroom("send", "--eml", eml, "--json", profile=profile)
    assert again.returncode == 0, again.stderr
    assert as_json(again)["recipients"][0]["address"] == "SMTP:user@localhost"
    assert len(maildir_files(profile)) == 3


def test_send_with_delete_after_submit_still_says_what_became_of_each_recipient(profile: Path) -> None:
    sent = postroom(
        "send", "--to", "user@localhost", "--to", "bob@example.test", "-s", "gone", "-b", "x",
        "--delete-after-submit", "--json", profile=profile,
    )  # fmt: skip
    doc = as_json(sent)
    assert sent.returncode == 1 and doc["finished"] == "deleted"  # no transport takes bob: an NDR
    states = {r["address"]: (r["state"], r["transport"]) for r in doc["recipients"]}
    assert states == {"SMTP:user@localhost": ("delivered", "local"), "SMTP:bob@example.test": ("failed", None)}
    assert postroom("show", str(doc["message_id"]), profile=profile).returncode != 0


def test_eml_files_with_malformed_message_ids_get_distinct_ones(profile: Path, tmp_path: Path) -> None:
    # Both were cut to "<a>" once, so two unrelated messages shared one Message-ID.
    ids = []
    for n, written in enumerate(["<a b@c>", "<a c@d>"]):
        eml = tmp_path / f"m{n}.eml"
        eml.write_bytes(f"To: user@localhost\r\nSubject: m{n}\r\nMessage-ID: {written}\r\n\r\nhi\r\n".encode())
        sent = postroom("send", "--eml", eml, "--json", profile=profile)
        assert sent.returncode == 0, sent.stderr
        shown = as_json(postroom("show", str(as_json(sent)["message_id"]), "--json", profile=profile))
        ids.append(shown["message_id_header"])
    assert ids[0] != ids[1] and "<a>" not in ids
    headers = sorted(
        line for f in maildir_files(profile) for line in f.read_text().splitlines() if "Message-ID" in line
    )
    assert headers == sorted(f"Message-ID: {i}" for i in ids)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell")
def test_a_pipe_command_that_leaves_a_process_behind_is_delivered_without_a_traceback(
    profile: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "leftover.pid"
    script = f'cat >/dev/null; sleep 30 & echo $! > "{pidfile}"; exit 0'
    command = json.dumps(["/bin/sh", "-c", script])
    added = postroom(
        "service", "add", "pipe", "fax", "--set", f"command={command}", "--set", 'address_types=["FAX"]',
        "--set", "timeout=10", profile=profile,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    try:
        sent = postroom("send", "--to", "FAX:+15551234", "-s", "A fax", "-b", "x", "--json", profile=profile)
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert sent.returncode == 0, sent.stderr  # postroom() also checks: no traceback ("Event loop is closed")
    assert [r["state"] for r in as_json(sent)["recipients"]] == ["delivered"]


def test_foreign_domain_fails_with_ndr_in_inbox(profile: Path) -> None:
    result = postroom(
        "send", "--to", "someone@elsewhere.test", "--cc", "user@localhost", "-s", "Far away", "-b", "x",
        profile=profile,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "failed" in result.stdout and "someone@elsewhere.test" in result.stdout
    assert "delivered" in result.stdout  # the local Cc still got it
    assert "NDR" in result.stdout
    inbox = as_json(postroom("list", "Inbox", "--json", profile=profile))
    assert [m["message_class"] for m in inbox] == ["REPORT.IPM.Note.NDR"]
    assert "Far away" in inbox[0]["subject"]

    quiet = postroom("send", "--to", "nobody@elsewhere.test", "-b", "x", "--no-ndr", "--json", profile=profile)
    assert quiet.returncode == 1
    assert as_json(quiet)["recipients"][0]["state"] == "failed"
    assert len(as_json(postroom("list", "Inbox", "--json", profile=profile))) == 1  # no second NDR


def test_route_dry_run(profile: Path) -> None:
    result = postroom("route", "user@localhost", "FAX:+15551234", profile=profile)
    assert result.returncode == 0, result.stderr
    assert "SMTP:user@localhost" in result.stdout and "local" in result.stdout
    assert "address type" in result.stdout
    assert "FAX:+15551234" in result.stdout and "no transport: NDR" in result.stdout
    doc = as_json(postroom("route", "--json", "Ann <user@localhost>", "FAX:1", profile=profile))
    assert doc[0]["offers"] == [{"transport": "local", "position": 1, "matched_by": "address type"}]
    assert doc[1]["ndr"] is True and doc[1]["offers"] == []
    one_line_error(postroom("route", "not an address", profile=profile), "MAPI_E_INVALID_PARAMETER")


def test_services_pipe_transport_and_order(profile: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "faxes"
    add_fax(profile, outdir)
    listed = postroom("service", "list", profile=profile)
    assert "fax" in listed.stdout and "pipe" in listed.stdout and "FAX" in listed.stdout
    services = as_json(postroom("service", "list", "--json", profile=profile))
    assert [(s["name"], s["kind"]) for s in services] == [("local", "maildir"), ("fax", "pipe")]
    assert len(services[1]["provider_uid"]) == 32
    assert set(postroom("adrtypes", profile=profile).stdout.split()) == {"SMTP", "FAX"}

    sent = postroom("send", "--to", "FAX:+15551234", "-s", "A fax", "-b", "page one", "--json", profile=profile)
    assert sent.returncode == 0, sent.stderr
    assert as_json(sent)["recipients"][0]["transport"] == "fax"
    assert "Subject: A fax" in (outdir / "+15551234.eml").read_text()

    # The transport order: complete list only; the MAPI code tells what was wrong.
    one_line_error(postroom("order", "set", "local", profile=profile), "MAPI_E_BUSY", "missing: fax")
    one_line_error(postroom("order", "set", "local", "fax", "local", profile=profile), "MAPI_E_BUSY")
    one_line_error(postroom("order", "set", "local", "fax", "telex", profile=profile), "MAPI_E_NOT_FOUND", "telex")
    changed = postroom("order", "set", "fax", "local", profile=profile)
    assert changed.returncode == 0, changed.stderr
    order = as_json(postroom("order", "--json", profile=profile))
    assert order["explicit"] is True
    assert [(t["position"], t["name"]) for t in order["transports"]] == [(1, "fax"), (2, "local")]
    reset = as_json(postroom("--json", "order", "reset", profile=profile))
    assert reset["explicit"] is False and [t["name"] for t in reset["transports"]] == ["local", "fax"]

    assert postroom("service", "remove", "fax", profile=profile).returncode == 0
    one_line_error(postroom("service", "remove", "fax", profile=profile), "MAPI_E_NOT_FOUND", "fax")
    one_line_error(
        postroom("send", "--to", "FAX:+15551234", "-b", "x", profile=profile),
        "no transport in this profile takes address type FAX (known: SMTP)",
    )
    one_line_error(postroom("service", "add", "telex", "t", profile=profile), "MAPI_E_NOT_FOUND", "telex")
    one_line_error(postroom("service", "add", "pipe", "p", "--set", "novalue", profile=profile), "KEY=VALUE")


def test_errors_are_one_line_without_traceback(profile: Path, tmp_path: Path) -> None:
    one_line_error(postroom("send", "--to", "Bob <bob@", "-b", "x", profile=profile), "MAPI_E_INVALID_PARAMETER")
    one_line_error(postroom("send", "--to", "X400:c=us;a=b", "-b", "x", profile=profile), "address type X400")
    missing = tmp_path / "no-such-file.pdf"
    one_line_error(postroom("send", "--to", "user@localhost", "--attach", missing, profile=profile), str(missing))
    one_line_error(postroom("send", "--to", "user@localhost", "--body-file", missing, profile=profile), str(missing))
    one_line_error(postroom("send", "--eml", missing, profile=profile), str(missing))
    one_line_error(postroom("send", "-b", "no recipients", profile=profile), "no recipients")
    nowhere = tmp_path / "not-a-profile"
    one_line_error(postroom("--profile", nowhere, "queue"), "MAPI_E_NOT_FOUND", str(nowhere))
    assert not nowhere.exists()  # not silently created
    one_line_error(postroom("service", "remove", "nosuch", profile=profile), "MAPI_E_NOT_FOUND", "nosuch")
    one_line_error(postroom("frobnicate", profile=profile), "frobnicate")
    as_doc = postroom("show", "999", "--json", profile=profile)
    one_line_error(as_doc, "MAPI_E_NOT_FOUND")
    assert as_json(as_doc)["error"]["code"] == "MAPI_E_NOT_FOUND"
    # Nothing was left behind in the Outbox by the refused sends.
    assert as_json(postroom("list", "Outbox", "--json", profile=profile)) == []


def test_later_stays_queued_until_the_spooler_runs(profile: Path) -> None:
    body = b"from stdin\n"
    later = postroom(
        "send", "--later", "--to", "user@localhost", "-s", "Queued", "--body-file", "-", "--json",
        profile=profile, stdin=body,
    )  # fmt: skip
    assert later.returncode == 0, later.stderr
    mid = as_json(later)["message_id"]
    queue = as_json(postroom("queue", "--json", profile=profile))
    assert [(q["id"], q["pending"], q["recipients"], q["state"]) for q in queue] == [(mid, 1, 1, "queued")]
    assert "Queued" in postroom("queue", profile=profile).stdout
    assert maildir_files(profile) == []

    once = postroom("spooler", "--once", profile=profile)
    assert once.returncode == 0, once.stderr
    assert "1 recipient(s) delivered" in once.stdout
    assert as_json(postroom("queue", "--json", profile=profile)) == []
    [delivered] = maildir_files(profile)
    assert "from stdin" in delivered.read_text()
    idle = as_json(postroom("spooler", "--once", "--json", profile=profile))
    assert idle["messages"] == 0


def test_temporary_failure_waits_with_reason_and_next_try(profile: Path) -> None:
    command = json.dumps(["/bin/sh", "-c", "echo line busy >&2; exit 75"])  # EX_TEMPFAIL: try again later
    added = postroom(
        "service", "add", "pipe", "slow", "--set", f"command={command}", "--set", "address_types=TEMP",
        profile=profile,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    sent = postroom("send", "--to", "TEMP:42", "-s", "Patience", "-b", "x", profile=profile)
    assert sent.returncode == 0, sent.stderr  # waiting is not a failure
    assert "waiting" in sent.stdout and "line busy" in sent.stdout and "next try" in sent.stdout
    [entry] = as_json(postroom("queue", "--json", profile=profile))
    assert entry["subject"] == "Patience" and entry["attempts"] == 1 and entry["pending"] == 1
    assert "line busy" in entry["last_error"] and entry["next_attempt"]


def test_spooler_runs_until_sigterm(profile: Path) -> None:
    assert postroom("send", "--later", "--to", "user@localhost", "-b", "x", profile=profile).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "postroom", "--profile", str(profile), "spooler"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not maildir_files(profile) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert maildir_files(profile), "the spooler did not deliver"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped" in out


def test_secrets_are_not_printed() -> None:
    from postroom.cli.admin import options_text
    from postroom.cli.output import redact

    options = {"host": "mail.test", "password_file": "pw.txt", "nested": {"client_secret": "s3"}}
    assert redact(options) == {"host": "mail.test", "password_file": "***", "nested": {"client_secret": "***"}}
    text = options_text(options)
    assert "mail.test" in text and "pw.txt" not in text and "s3" not in text
