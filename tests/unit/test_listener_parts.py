"""The listener's pure parts: envelope submissions, reports to the envelope sender and their loop
protection, the per-recipient log line, listener passwords, listen addresses, sd_notify."""

from __future__ import annotations

import email
import socket
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from postroom import original
from postroom.engine import sdnotify
from postroom.engine.listener_settings import ListenerSettings, parse_listen
from postroom.engine.listener_users import hash_password, verify_password
from postroom.envelope import (
    ReportAction,
    StatusLine,
    SubmissionSource,
    dsn_bytes,
    envelope_message,
    is_report,
    report_to_sender,
)
from postroom.mapi import tags as T
from postroom.mapi.codes import MAPIError
from postroom.mapi.dsn import (
    DsnParameterError,
    DsnReturn,
    DsnUnknownParameter,
    MessageDsn,
    Notify,
    RecipientDsn,
    read_mail_parameters,
    read_rcpt_parameters,
    split_dsn_parameters,
    xtext_decode,
    xtext_encode,
)
from postroom.mapi.flags import MAPI_P1, MAPI_SUBMITTED
from postroom.mapi.hostport import is_loopback
from postroom.mapi.message import MessageData
from postroom.spooler.logline import outcome_line
from postroom.spooler.reports import ReportRow, delay_report, delivery_report, non_delivery_report
from postroom.spooler.sender_reports import sender_copy
from postroom.store import RecipientOutcome, RecipientState

RAW = b"From: a@example.org\r\nTo: Bob <bob@example.org>\r\nSubject: hi\r\nMessage-ID: <m1@example.org>\r\n\r\nbody\r\n"
NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def test_the_envelope_decides_the_recipients_and_the_original_bytes_stay_unchanged() -> None:
    md = envelope_message(RAW, "a@example.org", ["carol@example.org", "carol@example.org"], SubmissionSource.SMTP)
    kinds = [(r.email_address, int(r.get(T.PR_RECIPIENT_TYPE))) for r in md.recipients]
    assert [(a, bool(k & MAPI_SUBMITTED), bool(k & MAPI_P1)) for a, k in kinds] == [
        ("bob@example.org", True, False),  # shown in the header, not sent
        ("carol@example.org", False, True),  # sent, never written into the header; once
    ]
    assert md.get(T.PR_POSTROOM_SUBMISSION_SOURCE) == "smtp"
    assert md.get(T.PR_POSTROOM_ENVELOPE_FROM) == "a@example.org"
    assert original.exact(md) == RAW  # still "unedited": it goes out as these bytes


def test_reports_go_to_the_envelope_sender_only_for_envelope_submissions_and_never_in_a_loop() -> None:
    def made(raw: bytes, sender: str) -> str | None:
        return report_to_sender(envelope_message(raw, sender, ["x@example.org"], "sendmail"))

    assert made(RAW, "a@example.org") == "a@example.org"
    assert made(RAW, "") is None  # the null sender <>
    assert made(b"Auto-Submitted: auto-replied\r\n" + RAW, "a@example.org") is None
    assert made(b"Auto-Submitted: no\r\n" + RAW, "a@example.org") == "a@example.org"
    dsn = b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n' + RAW
    assert made(dsn, "a@example.org") is None
    plain = envelope_message(RAW, "a@example.org", ["x@example.org"], "smtp")
    del plain.props[T.PR_POSTROOM_SUBMISSION_SOURCE]
    assert report_to_sender(plain) is None  # composed here: its reports go to the Inbox only
    assert is_report(envelope_message(dsn, "", ["x@example.org"], "smtp"))


def test_a_dsn_is_an_rfc_3464_multipart_report_with_the_status_of_each_recipient() -> None:
    md = envelope_message(RAW, "a@example.org", ["bob@example.org"], "smtp")
    lines = [
        StatusLine("bob@example.org", ReportAction.FAILED, "550 5.1.1 <bob@example.org>: no such user", NOW),
        StatusLine("eve@example.org", ReportAction.FAILED, "connection refused", NOW),
    ]
    data = dsn_bytes(md, "a@example.org", lines, NOW, "mx.example.org")
    msg = email.message_from_bytes(data)
    assert (msg.get_content_type(), msg.get_param("report-type")) == ("multipart/report", "delivery-status")
    assert msg["To"] == "<a@example.org>" and msg["Auto-Submitted"] == "auto-replied"
    human, status, headers = msg.get_payload()
    assert "bob@example.org" in human.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    text = data.decode()
    assert "Reporting-MTA: dns; mx.example.org" in text
    assert "Final-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 5.1.1" in text
    assert "Final-Recipient: rfc822; eve@example.org\r\nAction: failed\r\nStatus: 5.0.0" in text
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <m1@example.org>" in text and "body" not in headers.get_payload()
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF throughout


def test_the_log_line_of_an_outcome_reads_like_postfix() -> None:
    md = envelope_message(RAW, "a@example.org", ["bob@example.org"], "smtp")
    md.props[T.PR_INTERNET_MESSAGE_ID] = "<m1@example.org>"
    md.props[T.PR_CLIENT_SUBMIT_TIME] = NOW - timedelta(seconds=1.5)
    row = md.recipients[1].row_id
    sent = RecipientOutcome(row, RecipientState.DELIVERED, "work", {T.PR_REPORT_TEXT: "250 2.0.0 Ok:\nqueued"})
    assert outcome_line(7, md, sent, "mail.example.org:587", NOW) == (
        "id=7 msgid=<m1@example.org> to=<bob@example.org> transport=work relay=mail.example.org:587 "
        "delay=1.5 status=sent (250 2.0.0 Ok: queued)"
    )
    bounced = RecipientOutcome(row, RecipientState.FAILED, "", {T.PR_REPORT_TEXT: "no transport"})
    assert outcome_line(7, None, bounced, "none", NOW).endswith(
        "transport=none relay=none delay=? status=bounced (no transport)"
    )


def test_a_listener_password_is_kept_as_a_salted_scrypt_hash() -> None:
    one, two = hash_password("s3cret"), hash_password("s3cret")
    assert one != two and one.startswith("scrypt$") and "s3cret" not in one
    assert verify_password(b"s3cret", one)
    assert not verify_password(b"s3creT", one)
    assert not verify_password(b"s3cret", "md5$abc")
    assert not verify_password(b"s3cret", "scrypt$garbage")


def test_listen_addresses_are_host_colon_port_and_loopback_is_recognised() -> None:
    assert parse_listen("127.0.0.1:587") == ("127.0.0.1", 587)
    assert parse_listen("[::1]:2525") == ("::1", 2525)
    for bad in ("nowhere", ":587", "host:99999", "host:port"):
        with pytest.raises(MAPIError, match="HOST:PORT"):
            parse_listen(bad)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("192.0.2.1") and not is_loopback("mail.example.org")
    with pytest.raises(MAPIError, match="both --tls-cert and --tls-key"):
        ListenerSettings(tls_cert=Path("cert.pem"))
    with pytest.raises(MAPIError, match="at least 1"):
        ListenerSettings.from_options(["127.0.0.1:0"], max_recipients=0)


def test_sd_notify_sends_a_datagram_to_notify_socket_and_nothing_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.watchdog_interval() is None
    with tempfile.TemporaryDirectory(dir="/tmp") as d, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = f"{d}/n"
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "3000000")
        assert sdnotify.notify("READY=1", "STATUS=up")
        assert sock.recv(100) == b"READY=1\nSTATUS=up"
        assert sdnotify.watchdog_interval() == 1.5
        monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
        assert sdnotify.watchdog_interval() is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        name = f"postroom-test-{id(abstract)}"
        abstract.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("WATCHDOG=1")
        assert abstract.recv(100) == b"WATCHDOG=1"


def test_dsn_parameters_are_taken_out_as_written_and_decoded_from_xtext() -> None:
    given, rest = split_dsn_parameters("SIZE=10 ret=full ENVID=Run+2B42+3Dx BODY=8BITMIME")
    assert rest == "SIZE=10 BODY=8BITMIME"  # for aiosmtpd, which upper-cases what it reads
    assert read_mail_parameters(given) == MessageDsn(DsnReturn.FULL, "Run+42=x")
    given, _ = split_dsn_parameters("NOTIFY=success,Delay ORCPT=rfc822;Carol+2Bx@Example.org")
    dsn = read_rcpt_parameters(given)
    assert dsn == RecipientDsn(frozenset({Notify.SUCCESS, Notify.DELAY}), "rfc822;Carol+x@Example.org")
    assert dsn.props() == {
        T.PR_POSTROOM_DSN_NOTIFY: "SUCCESS,DELAY",
        T.PR_POSTROOM_DSN_ORCPT: "rfc822;Carol+x@Example.org",
    }


@pytest.mark.parametrize("text", ["Run+42=x", "plain", "two words", "jöran", "a\\b"])
def test_xtext_encoding_is_what_the_listener_decodes_for_a_relay_to_pass_on(text: str) -> None:
    encoded = xtext_encode(text)
    assert encoded.isascii() and "=" not in encoded and " " not in encoded
    assert xtext_decode(encoded, "ENVID") == text
    assert xtext_encode("Run+42=x") == "Run+2B42+3Dx"


@pytest.mark.parametrize(
    ("verb", "params", "unknown"),
    [
        ("MAIL", "RET=BODY", False),
        ("MAIL", "RET=FULL RET=HDRS", False),
        ("MAIL", "ENVID=a+zz", False),
        ("MAIL", "ENVID=" + "x" * 101, False),
        ("MAIL", "NOTIFY=SUCCESS", True),
        ("RCPT", "NOTIFY=NEVER,SUCCESS", False),
        ("RCPT", "NOTIFY=", False),
        ("RCPT", "ORCPT=carol@example.org", False),
        ("RCPT", "ORCPT=rfc822;carol@example.org+0D+0ABcc:x@y", False),  # a report would echo the line break
        ("RCPT", "RET=FULL", True),
    ],
)
def test_a_malformed_dsn_parameter_is_refused_and_one_on_the_wrong_verb_is_unknown(
    verb: str, params: str, unknown: bool
) -> None:
    given, _ = split_dsn_parameters(params)
    read = read_mail_parameters if verb == "MAIL" else read_rcpt_parameters
    with pytest.raises(DsnParameterError) as caught:
        read(given)
    assert isinstance(caught.value, DsnUnknownParameter) is unknown
    assert caught.value.smtp_reply.startswith("555 5.5.4 " if unknown else "501 5.5.4 ")


def _dsn_message(notify: str | None, ret: DsnReturn | None = None) -> MessageData:
    parsed = frozenset(Notify(w) for w in notify.split(",")) if notify else None
    md = envelope_message(
        RAW,
        "a@example.org",
        ["bob@example.org"],
        "smtp",
        MessageDsn(ret, "env-1"),
        {"bob@example.org": RecipientDsn(parsed, "rfc822;Bob@Example.org")},
    )
    md.props[T.PR_MESSAGE_CLASS] = "IPM.Note"
    return md


@pytest.mark.parametrize(
    ("notify", "failed", "delayed", "delivered"),
    [
        (None, True, True, True),  # no NOTIFY: the MTA's default (and the DR only when MAPI asked for one)
        ("NEVER", False, False, False),
        ("FAILURE", True, False, False),
        ("SUCCESS,DELAY", False, True, True),
    ],
)
def test_the_copies_to_the_envelope_sender_obey_notify(
    notify: str | None, failed: bool, delayed: bool, delivered: bool
) -> None:
    md = _dsn_message(notify)
    row = md.recipients[1]
    failure = [ReportRow(row, NOW, False, text="550 5.1.1 no such user")]
    success = [ReportRow(row, NOW, True)]
    made = {
        "failed": sender_copy(md, non_delivery_report(md, failure, NOW), failure, NOW, True),
        "delayed": sender_copy(md, delay_report(md, success, NOW), success, NOW, True),
        "delivered": sender_copy(md, delivery_report(md, success, NOW), success, NOW, True),
    }
    assert {k: v is not None for k, v in made.items()} == {"failed": failed, "delayed": delayed, "delivered": delivered}


def test_a_report_echoes_envid_and_orcpt_and_says_relayed_for_an_smtp_relay() -> None:
    md = _dsn_message("SUCCESS")
    row = md.recipients[1]
    row.props[T.PR_POSTROOM_RELAYED] = True
    rows = [ReportRow(row, NOW, True)]
    copy = sender_copy(md, delivery_report(md, rows, NOW), rows, NOW, True)
    assert copy is not None
    text = original.exact(copy).decode()
    assert "Original-Envelope-Id: env-1\r\nReporting-MTA: dns; " in text
    assert "Original-Recipient: rfc822; Bob@Example.org\r\nFinal-Recipient: rfc822; bob@example.org\r\n" in text
    assert "Action: relayed\r\nStatus: 2.0.0" in text


@pytest.mark.parametrize("ret", [DsnReturn.FULL, DsnReturn.HDRS, None])
def test_ret_full_returns_the_whole_message_in_a_failure_report_and_hdrs_only_its_header(
    ret: DsnReturn | None,
) -> None:
    md = _dsn_message(None, ret)
    lines = [StatusLine("bob@example.org", ReportAction.FAILED, "550 5.1.1 no such user", NOW)]
    data = dsn_bytes(md, "a@example.org", lines, NOW, "mx.example.org")
    returned = email.message_from_bytes(data).get_payload()[2]
    if ret is DsnReturn.FULL:
        assert returned.get_content_type() == "message/rfc822"
        assert RAW + b"\r\n--" in data  # the original, byte for byte, then the boundary
    else:
        assert returned.get_content_type() == "text/rfc822-headers"
        assert "body" not in returned.get_payload()
