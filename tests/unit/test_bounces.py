"""Bounces from the real world (issue 16, item 6), one-off entry IDs as Outlook writes them (item 7),
and the envelope of a message read for submission (item 4).

The samples in tests/data/bounces/ follow the formats of the MTAs that write them (see its README).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import postroom
from postroom import bounces
from postroom.mapi import tags as T
from postroom.mapi.entryid import decode_one_off, encode_one_off, one_off_entry_id
from postroom.mapi.flags import MAPI_P1, MAPI_SUBMITTED, NDRDiag, NDRReason, RecipientType
from postroom.mime import RAW_ATTACHMENT_NAME, dsn_original_message_id, from_mime, status_to_ndr
from postroom.profile import Profile

BOUNCES = Path(__file__).parents[1] / "data" / "bounces"

# (file, bounced address, reason, diagnostic, SMTP reply code, the original's Message-ID, subject)
SAMPLES = [
    pytest.param(
        "exim-plain.eml", "nosuchuser@example.net", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.MAIL_RECIPIENT_UNKNOWN,
        550, "<lunch-friday-7@example.org>", "Lunch on Friday?", id="exim",
    ),
    pytest.param(
        "qmail-qsbmf.eml", "gone@example.com", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.MAIL_RECIPIENT_UNKNOWN,
        None, "<invoice-2024-117@example.org>", "Invoice 2024-117", id="qmail",
    ),
    pytest.param(
        "exchange-2003-plain.eml", "bob.smith@corp.example.com", NDRReason.TRANSFER_IMPOSSIBLE,
        NDRDiag.MAIL_RECIPIENT_UNKNOWN, None, "<project-plan-3@example.org>", "Project plan", id="exchange-2003",
    ),
    pytest.param(
        "exchange-online-5.1.10.eml", "carol@contoso.com", NDRReason.TRANSFER_IMPOSSIBLE,
        NDRDiag.MAIL_RECIPIENT_UNKNOWN, 550, "<contract-draft-1@example.org>", "Contract draft", id="exchange-online",
    ),
    pytest.param(
        "postfix-no-dsn.eml", "dave@legacy.example.net", NDRReason.TRANSFER_FAILED,
        NDRDiag.LENGTH_CONSTRAINT_VIOLATD, 552, "<photos-9@example.org>", "Photos", id="postfix-without-dsn",
    ),
    pytest.param(
        "postfix-smtputf8-global.eml", "用户@例子.example", NDRReason.TRANSFER_IMPOSSIBLE,
        NDRDiag.MAIL_RECIPIENT_UNKNOWN, 550, "<gruesse-1@xn--bcher-kva.example>", "Grüße", id="postfix-smtputf8",
    ),
    pytest.param(
        "postfix-3.7-smtputf8-captured.eml", "jörg@bounce.test", NDRReason.TRANSFER_IMPOSSIBLE,
        NDRDiag.OR_NAME_UNRECOGNIZED, None, "<179619809733.11520.10684534998263795819@example.test>",
        "Grüße 74cab10f", id="postfix-smtputf8-captured",
    ),
    pytest.param(
        "report-without-report-type.eml", "erin@example.com", NDRReason.RESTRICTED_DELIVERY, NDRDiag.MAIL_REFUSED,
        550, "<minutes-14@example.org>", "Minutes", id="no-report-type",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "address", "reason", "diag", "reply", "original_id", "subject"), SAMPLES)
def test_a_real_world_bounce_becomes_an_ndr_for_the_bounced_address(
    name: str, address: str, reason: NDRReason, diag: NDRDiag, reply: int | None, original_id: str, subject: str
) -> None:
    data = (BOUNCES / name).read_bytes()
    report = from_mime(data)
    assert report.message_class == "REPORT.IPM.Note.NDR"
    row = report.recipients[0]
    assert (row.address_type, row.email_address) == ("SMTP", address)
    assert (row[T.PR_NDR_REASON_CODE], row[T.PR_NDR_DIAG_CODE]) == (reason, diag)
    assert row.get(T.PR_NDR_STATUS_CODE) == reply
    assert row[T.PR_REPORT_TEXT]  # the server's words, or at least the status code
    # How the spooler finds the original: PR_REPORT_TAG, and the same ID from the raw bytes.
    assert report.props[T.PR_REPORT_TAG] == original_id.encode()
    assert dsn_original_message_id(data) == original_id
    assert report.props[T.PR_ORIGINAL_SUBJECT] == subject
    # Each converts exactly: no "original-message.eml" kept because something was lost.
    assert all(a.filename != RAW_ATTACHMENT_NAME for a in report.attachments)


def test_the_words_of_a_plain_text_bounce_are_the_servers_own() -> None:
    exim = from_mime((BOUNCES / "exim-plain.eml").read_bytes()).recipients[0]
    assert "550 5.1.1 <nosuchuser@example.net>: Recipient address rejected: User unknown" in exim[T.PR_REPORT_TEXT]
    qmail = from_mime((BOUNCES / "qmail-qsbmf.eml").read_bytes()).recipients[0]
    assert qmail[T.PR_REPORT_TEXT] == "Sorry, no mailbox here by that name. (#5.1.1)"


def test_a_final_recipient_that_is_not_rfc822_is_not_an_smtp_address() -> None:
    report = from_mime((BOUNCES / "report-without-report-type.eml").read_bytes())
    smtp, unknown, x400 = report.recipients
    assert smtp.address_type == "SMTP"
    assert (unknown.address_type, unknown.email_address) == ("UNKNOWN", "mailbox 7 of the fax gateway")
    assert decode_one_off(unknown.entry_id).address_type == "UNKNOWN"
    assert unknown[T.PR_SEARCH_KEY] == b"UNKNOWN:MAILBOX 7 OF THE FAX GATEWAY\0"
    assert (x400.address_type, x400.email_address) == ("X400", "G=Frank;S=Jones;O=Example;P=Example;A=ATT;C=US")
    assert T.PR_NDR_REASON_CODE not in x400  # "delayed": not (yet) a failure


def test_an_untyped_final_recipient_is_smtp_only_when_it_is_an_email_address() -> None:
    def report(final: str) -> bytes:
        return (
            "From: postmaster@mx.example.net\r\nSubject: report\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; boundary="b"\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n'
            f"Reporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: {final}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "--b--\r\n"
        ).encode()

    assert from_mime(report("<ann@example.net>")).recipients[0].address_type == "SMTP"
    assert from_mime(report("ann@example.net")).recipients[0].email_address == "ann@example.net"
    assert from_mime(report("fax gateway 7")).recipients[0].address_type == "UNKNOWN"


def test_utf8_escapes_in_a_global_report_are_decoded() -> None:
    data = (
        b"From: MAILER-DAEMON@mx.example.net\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=global-delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: message/global-delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        b"Final-Recipient: utf-8; j\\x{F6}rg@b\\x{FC}cher.example\r\nAction: failed\r\nStatus: 5.2.2\r\n--b--\r\n"
    )
    (row,) = from_mime(data).recipients
    assert row.email_address == "jörg@bücher.example"
    assert row[T.PR_NDR_DIAG_CODE] == NDRDiag.LENGTH_CONSTRAINT_VIOLATD
    # An escaped CR LF is no way into a header: control characters never reach the address.
    (row,) = from_mime(data.replace(b"j\\x{F6}rg", b"j\\x{D}\\x{A}Bcc: x")).recipients
    assert row.email_address == "jBcc: x@bücher.example"


def test_ordinary_mail_is_never_read_as_a_bounce() -> None:
    # A person writing about a failed delivery, addresses and codes included, from a person.
    data = (
        b"From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: Re: delivery failed?\r\n"
        b"Message-ID: <re-1@example.org>\r\n\r\nThe following recipient(s) could not be reached:\r\n\r\n"
        b"      carol@example.net on Monday\r\n\r\nI got 550 5.1.1 <carol@example.net>: User unknown.\r\n"
    )
    assert from_mime(data).message_class == "REPORT.IPM.Note.NDR"  # it does look exactly like one
    plain = data.replace(b"Subject: Re: delivery failed?", b"Subject: Lunch").replace(
        b"could not be reached", b"are coming"
    )
    msg = from_mime(plain)
    assert msg.message_class == "IPM.Note"
    assert [r.email_address for r in msg.recipients] == ["alice@example.org"]


# --- enhanced status codes ----------------------------------------------------------------

#: Every code of RFC 3463 and the IANA "Enumerated Status Codes" registry.
REGISTERED = (
    [(0, 0)]
    + [(1, d) for d in range(11)]
    + [(2, d) for d in range(5)]
    + [(3, d) for d in range(7)]
    + [(4, d) for d in range(8)]
    + [(5, d) for d in range(7)]
    + [(6, d) for d in range(11)]
    + [(7, d) for d in range(31)]
)


def test_every_registered_enhanced_status_code_has_its_own_mapping() -> None:
    missing = [f"X.{s}.{d}" for s, d in REGISTERED if (s, d) not in bounces._CODES]
    assert missing == []


@pytest.mark.parametrize(
    ("status", "reason", "diag"),
    [
        ("5.1.10", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.MAIL_RECIPIENT_UNKNOWN),  # Exchange Online
        ("5.1.2", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.OR_NAME_UNRECOGNIZED),
        ("5.1.99", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.OR_NAME_UNRECOGNIZED),  # unregistered: X.1.0's
        ("4.3.1", NDRReason.TRANSFER_FAILED, NDRDiag.MTS_CONGESTED),
        ("4.4.3", NDRReason.DIRECTORY_OPERATN_FAILED, NDRDiag.NO_DIAGNOSTIC),
        ("5.4.6", NDRReason.TRANSFER_FAILED, NDRDiag.LOOP_DETECTED),
        ("5.5.3", NDRReason.TRANSFER_FAILED, NDRDiag.TOO_MANY_RECIPIENTS),
        ("5.6.7", NDRReason.CONVERSION_NOT_PERFORMED, NDRDiag.DOWNGRADING_IMPOSSIBLE),
        ("5.7.17", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.MAIL_RECIPIENT_DEPARTED),
        ("5.7.26", NDRReason.TRANSFER_FAILED, NDRDiag.MAIL_REFUSED),
        ("5.7.30", NDRReason.TRANSFER_FAILED, NDRDiag.SECURE_MESSAGING_ERROR),
        ("5.9.1", NDRReason.TRANSFER_FAILED, NDRDiag.NO_DIAGNOSTIC),  # no such subject
        ("1.1.1", NDRReason.TRANSFER_FAILED, NDRDiag.NO_DIAGNOSTIC),  # no such class
    ],
)
def test_enhanced_status_codes_map_to_ndr_codes(status: str, reason: NDRReason, diag: NDRDiag) -> None:
    assert status_to_ndr(status) == (reason, diag)


# --- one-off entry IDs as Outlook writes them -------------------------------------------------

# Real one-offs (tests/unit/test_mapi.py has their sources), flag word 0x8001 = bytes 01 80.
GROMMUNIO_ROESLER = bytes.fromhex(
    "00000000812B1FA4BEA310199D6E00DD010F54020000018041006E006400720065006100730020005200F60073006C00650072"
    "00000053004D0054005000000061002E0072006F00650073006C006500720040007A006100720061006600610073006500720076"
    "00650072002E00640065000000"
)
OUTLOOK_THM = bytes.fromhex(
    "00000000812B1FA4BEA310199D6E00DD010F54020000018074006500730074004000740068006D002E006C006F00630"
    "0000053004D0054005000000074006500730074004000740068006D002E006C006F0063000000"
)


def test_smtp_one_offs_are_byte_identical_to_outlooks() -> None:
    assert one_off_entry_id("Andreas Rösler", "SMTP", "a.roesler@zarafaserver.de") == GROMMUNIO_ROESLER
    assert one_off_entry_id("test@thm.loc", "SMTP", "test@thm.loc") == OUTLOOK_THM
    # Other address types keep rich info, as CreateOneOff makes them without MAPI_SEND_NO_RICH_INFO.
    assert one_off_entry_id("Fax", "FAX", "+1555")[22:24] == b"\x00\x80"


def test_every_smtp_one_off_postroom_makes_carries_no_rich_info() -> None:
    msg = from_mime(b"From: A <a@example.org>\r\nTo: B <b@example.org>\r\nCc: c@example.org\r\nSubject: s\r\n\r\nx")
    entry_ids = [r.entry_id for r in msg.recipients]
    entry_ids += [msg.props[T.PR_SENDER_ENTRYID], msg.props[T.PR_SENT_REPRESENTING_ENTRYID]]
    assert [decode_one_off(e).flags for e in entry_ids] == [0x8001] * 4
    assert msg.recipients[0].entry_id == encode_one_off("B", "SMTP", "b@example.org", no_rich_info=True)


def test_a_submitted_message_carries_outlooks_one_offs(tmp_path: Path) -> None:
    """Through the face: recipient rows and the sender stamped at submit."""
    with postroom.logon(Profile.create(tmp_path / "p")) as session:
        draft = session.create_message("one-offs", "x")
        draft.to("Alice <alice@localhost>")
        draft.add_recipient("FAX:+15551234")
        mid = draft.submit()
        sent = session.open_message(mid)
    smtp, fax = sent.recipients
    assert smtp.entry_id[:24] == GROMMUNIO_ROESLER[:24]  # the header of a real Outlook one-off
    assert decode_one_off(smtp.entry_id).flags == 0x8001
    assert decode_one_off(fax.entry_id).flags == 0x8000
    assert decode_one_off(sent.props[T.PR_SENDER_ENTRYID]).flags == 0x8001


# --- the envelope of a message read for submission --------------------------------------------


def test_a_bounce_read_for_submission_keeps_its_own_recipients() -> None:
    data = (BOUNCES / "exchange-online-5.1.10.eml").read_bytes()
    msg = from_mime(data, submission=True)
    assert msg.message_class == "IPM.Note"
    assert [(r.email_address, r[T.PR_RECIPIENT_TYPE]) for r in msg.recipients] == [
        ("alice@example.org", RecipientType.TO)
    ]
    # The status part stays a part of the message.
    assert "message/delivery-status" in [a.props.get(T.PR_ATTACH_MIME_TAG) for a in msg.attachments]
    assert T.PR_REPORT_TAG not in msg.props


def test_resent_headers_are_the_envelope_of_a_message_read_for_submission() -> None:
    data = (
        b"Resent-From: alice@example.org\r\nResent-To: Carol <carol@example.org>\r\nResent-Bcc: dan@example.org\r\n"
        b"From: bob@example.org\r\nTo: alice@example.org\r\nCc: eve@example.org\r\nSubject: fwd\r\n\r\nx"
    )
    rows = [(r.email_address, r[T.PR_RECIPIENT_TYPE]) for r in from_mime(data, submission=True).recipients]
    assert rows == [
        ("alice@example.org", RecipientType.TO | MAPI_SUBMITTED),  # delivered before: shown, not sent
        ("eve@example.org", RecipientType.CC | MAPI_SUBMITTED),
        ("carol@example.org", RecipientType.TO | MAPI_P1),  # sent, never written into the headers
        ("dan@example.org", RecipientType.BCC | MAPI_P1),
    ]
    # Inbound, Resent-* is only a header.
    assert [r[T.PR_RECIPIENT_TYPE] for r in from_mime(data).recipients] == [RecipientType.TO, RecipientType.CC]
