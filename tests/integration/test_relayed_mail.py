"""Relayed mail does not pile up: a message taken by the SMTP listener or postroom-sendmail is
deleted once every recipient has an outcome (PR_DELETE_AFTER_SUBMIT), as Postfix removes a queue
file, unless the profile says `relayed_mail = "keep"` (then it is in Sent Items). What still needs
it keeps working: the NDR to the envelope sender (the whole message with RET=FULL), sendmail's
`-v` answer, and the history /metrics counts (delivery_stats, activity), which must not drop."""

from __future__ import annotations

import email
import signal
import smtplib
from datetime import timedelta
from pathlib import Path

import pytest
from tests.harness.spoolers import smtp_profile

import postroom
from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.relayed import RelayedMail, relayed_mail

from support.cli import ok, wait_for
from support.cli import postroom as run
from support.listener import running
from support.sendmail import sendmail
from support.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration

MESSAGE = b"From: Cron Daemon <cron@host.example>\r\nTo: x@example.net\r\nSubject: job output\r\n\r\ndone\r\n"
FAIL = '["sh", "-c", "echo 550 5.1.1 no such user here >&2; exit 67"]'
POLICIES = [pytest.param(None, id="by default"), pytest.param("keep", id="relayed_mail = keep")]


def set_relayed_mail(profile: Path, value: str | None) -> None:
    if value is not None:
        toml = profile / "profile.toml"
        toml.write_text(toml.read_text().replace("[profile]\n", f'[profile]\nrelayed_mail = "{value}"\n', 1))


def kept(profile: Path) -> list[dict[int, object]]:
    """The properties of every message still in the Outbox or Sent Items, once the queue is empty."""
    with postroom.logon(profile) as session:
        wait_for(lambda: not session.queue())
        return [
            session.open_message(m.id).props
            for folder in ("Outbox", "Sent Items")
            for m in session.list_messages(folder)
        ]


def outcomes(profile: Path, kind: str) -> int:
    """Recipients the history (what /metrics reads) counts with that outcome, and with a latency."""
    with postroom.logon(profile) as session:
        stats = session.delivery_stats([3600.0])
        assert sum(stats.latency_count.values()) == sum(stats.outcomes.values())  # joined to 'submitted'
        buckets = session.activity(session.clock() - timedelta(hours=1), step_seconds=3600 * 2)
        assert buckets[-1].depth == 0  # every message submitted has left the queue, deleted or not
        return sum(n for (_, outcome), n in stats.outcomes.items() if outcome == kind)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_message_relayed_through_the_listener_is_deleted_once_delivered(tmp_path: Path, policy: str | None) -> None:
    with SmtpSink() as sink:
        profile = smtp_profile(tmp_path / "profile", sink.port, {} if policy is None else {"relayed_mail": policy})
        with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
                client.sendmail("cron@host.example", ["x@example.net"], MESSAGE)
            daemon.wait_line(r"to=<x@example\.net> .* status=sent")
            left = kept(profile)
    assert sink.delivered == [["x@example.net"]]
    if policy is None:
        assert left == []
    else:
        (props,) = left
        assert props[T.PR_POSTROOM_ENVELOPE_FROM] == "cron@host.example" and T.PR_DELETE_AFTER_SUBMIT not in props
    assert outcomes(profile, "delivered") == 1


@pytest.mark.parametrize("policy", POLICIES)
def test_a_message_relayed_through_postroom_sendmail_is_deleted_once_delivered(
    profile: Path, policy: str | None
) -> None:
    set_relayed_mail(profile, policy)
    environment = {"POSTROOM_PROFILE": str(profile), "POSTROOM_SOCKET": None}
    done = sendmail("-v", "-f", "cron@localhost", "bob@localhost", stdin=MESSAGE, env=environment)
    assert done.returncode == 0, done.stderr
    assert b"bob@localhost: delivered" in done.stderr  # -v: what the pass said, though the message is gone
    assert len(list((profile / "maildir" / "localhost" / "bob" / "new").iterdir())) == 1
    left = kept(profile)
    assert len(left) == (0 if policy is None else 1)
    assert outcomes(profile, "delivered") == 1


@pytest.mark.parametrize("policy", POLICIES)
def test_an_ndrd_relayed_message_is_deleted_after_its_ndr_which_returns_it_whole(
    profile: Path, policy: str | None
) -> None:
    ok(
        run(
            "service", "add", "pipe", "broken", "--set", f"command={FAIL}", "--set", 'address_types=["SMTP"]',
            "--set", r"addresses=.*@fail\.test$", profile=profile,
        )
    )  # fmt: skip
    set_relayed_mail(profile, policy)
    message = b"From: alice@localhost\r\nTo: bob@fail.test\r\nSubject: will fail\r\n\r\nthe whole body\r\n"
    alice = profile / "maildir" / "localhost" / "alice" / "new"
    with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.ehlo("client.test")
            client.sendmail("alice@localhost", ["bob@fail.test"], message, mail_options=["RET=FULL"])
        wait_for(lambda: alice.is_dir() and len(list(alice.iterdir())) == 1)
        left = kept(profile)
    (path,) = alice.iterdir()
    report = email.message_from_bytes(path.read_bytes())
    assert report.get_content_type() == "multipart/report"
    assert report.get_payload()[2].get_content_type() == "message/rfc822"  # RET=FULL: the message itself
    assert b"the whole body" in path.read_bytes()
    if policy is None:
        assert left == []  # the message and the report copy to alice, both deleted once handled
    else:
        assert [p[T.PR_SUBJECT] for p in left] == ["will fail"]
    assert outcomes(profile, "failed") == 1 and outcomes(profile, "delivered") == 1  # bob's NDR, alice's copy
    assert "Undeliverable: will fail" in ok(run("list", "Inbox", profile=profile)).stdout


def test_relayed_mail_takes_only_delete_or_keep(profile: Path) -> None:
    assert relayed_mail({}) is RelayedMail.DELETE and relayed_mail({"relayed_mail": "keep"}) is RelayedMail.KEEP
    set_relayed_mail(profile, "archive")
    with postroom.logon(profile) as session, pytest.raises(MAPIError) as caught:
        session.submit_envelope(MESSAGE, "cron@host.example", ["bob@localhost"], "smtp")
    assert caught.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert "relayed_mail in [profile] of profile.toml is 'delete' or 'keep', not 'archive'" in caught.value.message
    done = sendmail("bob@localhost", stdin=MESSAGE, env={"POSTROOM_PROFILE": str(profile), "POSTROOM_SOCKET": None})
    assert done.returncode == 65 and b"relayed_mail" in done.stderr  # EX_DATAERR, and nothing submitted
    refused = run("spooler", "--smtp", "127.0.0.1:0", profile=profile)
    assert refused.returncode != 0 and "relayed_mail" in refused.stderr


def test_a_bad_relayed_mail_read_on_sighup_makes_the_listener_answer_451_not_fail(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        profile = smtp_profile(tmp_path / "profile", sink.port, {})
        with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
            set_relayed_mail(profile, "archive")
            daemon.proc.send_signal(signal.SIGHUP)
            daemon.wait_line("profile reloaded")
            with (
                smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client,
                pytest.raises(smtplib.SMTPDataError) as refused,
            ):
                client.sendmail("cron@host.example", ["x@example.net"], MESSAGE)
            assert refused.value.smtp_code == 451 and b"4.3.5" in refused.value.smtp_error
            daemon.wait_line("relayed_mail in \\[profile\\]")
            assert daemon.proc.poll() is None
    assert sink.delivered == []


def test_the_ndr_to_a_relayed_messages_sender_goes_out_with_the_null_sender(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        profile = smtp_profile(
            tmp_path / "profile", sink.port, {}, {"domains": ["example.net"], "from_address": "account@relay.example"}
        )
        ok(
            run(
                "service", "add", "pipe", "broken", "--set", f"command={FAIL}", "--set", 'address_types=["SMTP"]',
                "--set", r"addresses=.*@fail\.test$", profile=profile,
            )
        )  # fmt: skip
        with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
                client.sendmail("app@example.net", ["bob@fail.test"], MESSAGE)
            wait_for(lambda: len(sink.delivered) == 1)
            assert kept(profile) == []
    assert sink.delivered == [["app@example.net"]] and sink.handler.senders == ["<>"]
    assert b"multipart/report" in sink.handler.messages[0]
