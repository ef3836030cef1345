"""Reports reach a person: for a message that came through the SMTP listener, an NDR also goes to
its envelope sender as an RFC 3464 multipart/report, never to <> and never about a report. What the
client asked with DSN parameters (RFC 3461: NOTIFY, RET, ENVID, ORCPT) is obeyed and echoed, for
smtplib at the listener and for postroom-sendmail's -N, -R and -V alike."""

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
from support.sendmail import sendmail
from support.smtp_sink import SmtpSink

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


def only_report(profile: Path, user: str) -> tuple[Message, str]:
    wait_for(lambda: len(inbox_of(profile, user)) == 1)
    [path] = inbox_of(profile, user)
    return email.message_from_bytes(path.read_bytes()), path.read_text()


def test_the_listener_offers_dsn_and_refuses_malformed_dsn_parameters(profile: Path) -> None:
    with (
        running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon,
        smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client,
    ):
        client.ehlo("client.test")
        assert client.has_extn("dsn")
        code, text = client.mail("alice@localhost", ["RET=BODY"])
        assert (code, text[:5]) == (501, b"5.5.4")
        code, text = client.mail("alice@localhost", ["NOTIFY=SUCCESS"])  # an RCPT parameter
        assert (code, text[:5]) == (555, b"5.5.4")
        assert client.mail("alice@localhost", ["RET=HDRS", "ENVID=a+2Bb"])[0] == 250
        code, text = client.rcpt("carol@localhost", ["NOTIFY=NEVER,SUCCESS"])
        assert (code, text[:5]) == (501, b"5.5.4")
        code, text = client.rcpt("carol@localhost", ["ORCPT=carol@localhost"])  # no address type
        assert (code, text[:5]) == (501, b"5.5.4")
        code, text = client.rcpt("carol@localhost", ["RET=FULL"])  # a MAIL parameter
        assert (code, text[:5]) == (555, b"5.5.4")
        assert client.rcpt("carol@localhost", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;carol@localhost"])[0] == 250
        long_orcpt = "ORCPT=rfc822;" + "d" * 400 + "@localhost"  # RCPT may grow by 530 characters (§5)
        assert client.rcpt("dave@localhost", ["NOTIFY=FAILURE", long_orcpt])[0] == 250


def test_notify_success_brings_a_delivery_report_that_echoes_envid_and_orcpt(profile: Path) -> None:
    with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail(
                "alice@localhost", ["carol@localhost"], message("alice@localhost"),
                mail_options=["RET=HDRS", "ENVID=Nightly+2B7"],
                rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Carol+2Bbackup@localhost"],
            )  # fmt: skip
        report, text = only_report(profile, "alice")
    assert len(inbox_of(profile, "carol")) == 1  # the message itself
    assert report.get_content_type() == "multipart/report" and report["Subject"] == "Successful Mail Delivery Report"
    assert "Original-Envelope-Id: Nightly+7\n" in text
    assert "Original-Recipient: rfc822; Carol+backup@localhost\nFinal-Recipient: rfc822; carol@localhost\n" in text
    assert "Action: delivered\nStatus: 2.0.0" in text


@pytest.mark.parametrize(
    ("notify", "reported"),
    [("NEVER", False), ("SUCCESS,DELAY", False), ("FAILURE", True)],
)
def test_an_ndr_goes_to_the_envelope_sender_only_when_notify_allows_it(
    failing: Path, notify: str, reported: bool
) -> None:
    with running(failing, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail(
                "alice@localhost", ["bob@fail.test"], message("alice@localhost"),
                mail_options=["RET=FULL"], rcpt_options=[f"NOTIFY={notify}"],
            )  # fmt: skip
        daemon.wait_line(r"to=<bob@fail\.test> .* status=bounced")
        wait_for(lambda: finished(failing))
        time.sleep(0.5)  # a copy, had one been made, would be delivered by now
    if not reported:
        assert inbox_of(failing, "alice") == []
        return
    report, _ = only_report(failing, "alice")
    returned = report.get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"  # RET=FULL: the whole message comes back
    [whole] = returned.get_payload()
    assert whole["Message-ID"] == "<will-fail@example.org>" and whole.get_payload().strip() == "body"


def test_a_message_handed_to_an_smtp_relay_is_reported_as_relayed(profile: Path) -> None:
    with SmtpSink() as sink:  # aiosmtpd offers no DSN: the relay cannot report further
        ok(postroom("service", "add", "smtp", "relay", *sink.options(), profile=profile))
        with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
                client.sendmail(
                    "alice@localhost", ["dave@relay.test"], message("alice@localhost"), rcpt_options=["NOTIFY=SUCCESS"]
                )
            _, text = only_report(profile, "alice")
        assert sink.delivered == [["dave@relay.test"]]
    assert "Final-Recipient: rfc822; dave@relay.test\nAction: relayed\nStatus: 2.0.0" in text


def test_a_relay_that_offers_dsn_gets_the_request_passed_on_and_no_relayed_report_comes_from_us(
    profile: Path,
) -> None:
    with SmtpSink(dsn=True) as sink:  # the next hop takes NOTIFY: it reports, not postroom
        ok(postroom("service", "add", "smtp", "relay", *sink.options(), profile=profile))
        with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
                client.sendmail(
                    "alice@localhost", ["dave@relay.test"], message("alice@localhost"),
                    mail_options=["RET=HDRS", "ENVID=Nightly+2B7"],
                    rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Dave+2Bold@relay.test"],
                )  # fmt: skip
            daemon.wait_line(r"to=<dave@relay\.test> .* status=sent")
            wait_for(lambda: finished(profile))
            time.sleep(0.5)  # a report, had one been made, would be delivered by now
        assert sink.delivered == [["dave@relay.test"]]
        mail, rcpt = sink.lines
        assert mail.startswith("MAIL FROM:<alice@localhost> SIZE=") and mail.endswith(" RET=HDRS ENVID=Nightly+2B7")
        assert rcpt == "RCPT TO:<dave@relay.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Dave+2Bold@relay.test"
    assert inbox_of(profile, "alice") == []


def test_postroom_sendmail_passes_dash_n_dash_r_and_dash_v_on_to_the_reports(failing: Path) -> None:
    env: dict[str, str | None] = {"POSTROOM_PROFILE": str(failing), "POSTROOM_SOCKET": None}
    with running(failing, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        raw = message("alice@localhost")
        never = sendmail("-N", "never", "-f", "alice@localhost", "bob@fail.test", stdin=raw, env=env)
        assert never.returncode == 0, never.stderr
        daemon.wait_line(r"to=<bob@fail\.test> .* status=bounced")
        asked = sendmail(
            "-N", "success", "-R", "hdrs", "-V", "cron-42", "-f", "alice@localhost", "carol@localhost",
            stdin=raw, env=env,
        )  # fmt: skip
        assert asked.returncode == 0, asked.stderr
        _, text = only_report(failing, "alice")  # the DR
        wait_for(lambda: finished(failing))
    assert "Original-Envelope-Id: cron-42\n" in text and "Action: delivered" in text
    assert len(inbox_of(failing, "alice")) == 1  # -N never kept the NDR away
