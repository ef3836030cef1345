"""Reports reach a person: for a message that came through the SMTP listener, an NDR also goes to
its envelope sender as an RFC 3464 multipart/report, never to <> and never about a report."""

from __future__ import annotations

import email
import json
import smtplib
import time
from email.message import Message
from pathlib import Path

import pytest

from support.cli import ok, postroom, wait_for
from support.listener import running

pytestmark = pytest.mark.integration

FAIL = '["sh", "-c", "echo 550 5.1.1 no such user here >&2; exit 67"]'


@pytest.fixture
def failing(profile: Path) -> Path:
    """The profile plus a transport that fails every recipient at fail.test, permanently."""
    ok(
        postroom(
            "service", "add", "pipe", "broken", "--set", f"command={FAIL}", "--set", 'address_types=["SMTP"]',
            "--set", r"addresses=.*@fail\.test$", profile=profile,
        )
    )  # fmt: skip
    return profile


def message(sender: str, extra: str = "") -> bytes:
    return (
        f"From: {sender or 'daemon@localhost'}\r\nTo: bob@fail.test\r\nSubject: will fail\r\n"
        f"Message-ID: <will-fail@example.org>\r\n{extra}\r\nbody\r\n"
    ).encode()


def inbox_of(profile: Path, user: str) -> list[Path]:
    new = profile / "maildir" / "localhost" / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def finished(profile: Path) -> bool:
    """Nothing left in the queue: the message failed and every report went out."""
    done = postroom("--json", "queue", profile=profile)
    doc = json.loads(done.stdout)
    return not (doc["messages"] if isinstance(doc, dict) else doc)


def test_an_ndr_reaches_the_envelope_sender_as_an_rfc_3464_report(failing: Path) -> None:
    with running(failing, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail("alice@localhost", ["bob@fail.test"], message("alice@localhost"))
        wait_for(lambda: len(inbox_of(failing, "alice")) == 1)
    [path] = inbox_of(failing, "alice")
    report: Message = email.message_from_bytes(path.read_bytes())
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["Auto-Submitted"] == "auto-replied"
    human, status, headers = report.get_payload()
    assert "bob@fail.test" in human.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    text = path.read_text()
    assert "Final-Recipient: rfc822; bob@fail.test" in text
    assert "Action: failed" in text and "Status: 5.1.1" in text
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <will-fail@example.org>" in text  # the original's header block


@pytest.mark.parametrize(
    ("sender", "extra"),
    [("", ""), ("alice@localhost", "Auto-Submitted: auto-replied\r\n")],
    ids=["to the null sender", "about an auto-submitted message"],
)
def test_no_report_goes_to_the_null_sender_or_about_a_report(failing: Path, sender: str, extra: str) -> None:
    with running(failing, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail(sender, ["bob@fail.test"], message(sender, extra))
        daemon.wait_line(r"to=<bob@fail\.test> .* status=bounced")
        wait_for(lambda: finished(failing))
        time.sleep(0.5)  # a copy, had one been made, would be delivered by now
    assert inbox_of(failing, "alice") == [] and inbox_of(failing, "daemon") == []
    # The profile's own NDR (in the Inbox) is still made: only the copy to the sender is not.
    assert "Undeliverable: will fail" in ok(postroom("list", "Inbox", profile=failing)).stdout


def test_sender_reports_can_be_turned_off_in_the_profile(failing: Path) -> None:
    toml = failing / "profile.toml"
    toml.write_text(toml.read_text().replace("[profile]\n", "[profile]\nsender_reports = false\n", 1))
    with running(failing, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail("alice@localhost", ["bob@fail.test"], message("alice@localhost"))
        daemon.wait_line(r"to=<bob@fail\.test> .* status=bounced")
        wait_for(lambda: finished(failing))
        time.sleep(0.5)
    assert inbox_of(failing, "alice") == []
