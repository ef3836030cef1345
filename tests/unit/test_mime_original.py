"""The original MIME stream of an imported message (issue 16, items 1-3): sent unchanged it is the
message, with only the documented transport changes; edited, the message is rendered again and
keeps every header field no property owns, and the parts nobody edited."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

from postroom import mime, original
from postroom.mapi import tags as T
from postroom.mapi.message import Attachment, MessageData, Recipient

SUBMITTED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)

PLAIN = (
    b"From: Alice <alice@example.org>\n"
    b"To: Bob <bob@example.net>\n"
    b"Bcc: carol@example.net\n"
    b"Subject: minutes\n"
    b"X-Mailer: a client\n"
    b"\n"
    b"line one\n"
    b"line two\n"
)

# Every kind of header field that must survive a re-rendering, in an order no renderer would pick.
RICH = (
    b"Received: from mx.example.org by mail.example.net; Mon, 1 Jan 2024 10:00:02 +0000\r\n"
    b"X-Tag: one\r\n"
    b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>\r\n"
    b"Reply-To: list@example.org\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <rich.1@example.org>\r\n"
    b"In-Reply-To: <earlier@example.org>\r\n"
    b"References: <first@example.org>\r\n\t<earlier@example.org>\r\n"
    b"List-Unsubscribe: <mailto:leave@example.org>\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"X-Tag: two\r\n"
    b"X-Comment: =?iso-8859-1?q?caf=E9?=\r\n"
    b"X-Raw: caf\xc3\xa9 (RFC 6532)\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"the text\r\n"
    b"--b1\r\n"
    b'Content-Type: application/octet-stream; name="data.bin"\r\n'
    b'Content-Disposition: attachment; filename="data.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    # 40 characters a line: a re-encoding would write 76.
    b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\r\n"
    b"Hh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7\r\n"
    b"--b1--\r\n"
)
ATTACHMENT_PART = RICH[RICH.index(b"Content-Type: application/octet-stream") : RICH.index(b"\r\n--b1--")]

SIGNED = (
    b"From: alice@example.org\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: signed\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <signed.1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/signed; micalg=sha-256; protocol="application/pkcs7-signature"; boundary="s"\r\n'
    b"\r\n"
    b"This is an S/MIME signed message\r\n"
    b"--s\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"sign\xc3\xa9d text   \r\n"
    b"--s\r\n"
    b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=smime.p7s\r\n"
    b"\r\n"
    b"MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0BBwEAAKCAMIIC\r\n"
    b"--s--\r\n"
)


def fields(data: bytes) -> list[bytes]:
    """The header fields of a message, unfolded, each as `Name: value`."""
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    return [f.strip() for f in re.split(rb"\r?\n(?![ \t])", head)]


def names(data: bytes) -> list[str]:
    return [f.split(b":", 1)[0].decode().lower() for f in fields(data)]


def body(data: bytes) -> bytes:
    return re.split(rb"\r?\n\r?\n", data, maxsplit=1)[1]


def imported(raw: bytes) -> MessageData:
    md = mime.from_mime(raw)
    md.props[T.PR_CLIENT_SUBMIT_TIME] = SUBMITTED  # what submitting stamps
    return md


def add_to(md: MessageData, address: str) -> None:
    md.recipients.append(
        Recipient(
            props={
                T.PR_ADDRTYPE: "SMTP",
                T.PR_EMAIL_ADDRESS: address,
                T.PR_DISPLAY_NAME: address,
                T.PR_RECIPIENT_TYPE: 1,
            }
        )
    )


# --- unchanged: the original bytes ------------------------------------------------------------------
def test_an_unchanged_message_goes_out_as_its_own_bytes_with_only_the_documented_changes() -> None:
    md = imported(PLAIN)
    wire, utf8 = mime.to_bytes_with_flags(md)
    crlf = PLAIN.replace(b"\n", b"\r\n")
    head, text = crlf.split(b"\r\n\r\n", 1)
    kept = b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"Bcc:"))
    message_id = md.props[T.PR_INTERNET_MESSAGE_ID]
    assert wire == (
        kept + b"\r\nDate: Tue, 01 Dec 2026 09:30:00 +0000\r\nMessage-ID: " + message_id.encode() + b"\r\n\r\n" + text
    )
    assert not utf8
    # The Message-ID made for it is kept: a retry sends the same one.
    assert mime.to_bytes(md) == wire
    # Maildir files have LF line ends, and a Bcc header only when asked for.
    assert mime.to_bytes(md, linesep="\n", include_bcc=True).startswith(PLAIN.split(b"\n\n")[0] + b"\nDate: ")


def test_export_gives_back_the_exact_bytes_until_the_message_is_edited() -> None:
    md = imported(RICH)
    assert mime.original_bytes(md) == RICH
    assert mime.to_bytes(md) == RICH  # nothing to change: no Bcc, Date and Message-ID present
    md.props[T.PR_SUBJECT] = "edited"
    assert mime.original_bytes(md) is None
    assert original.fingerprint(md) != md.original.fingerprint  # type: ignore[union-attr]


def test_submitting_or_adding_a_bcc_recipient_is_no_edit() -> None:
    md = imported(PLAIN)
    md.props.update({T.PR_INTERNET_MESSAGE_ID: "<stamped@example.org>", T.PR_MESSAGE_FLAGS: 4})
    md.recipients.append(
        Recipient(props={T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: "d@example.net", T.PR_RECIPIENT_TYPE: 3})
    )
    assert original.unchanged(md)


def test_a_utf8_address_in_the_original_still_needs_smtputf8() -> None:
    raw = b"From: alice@example.org\r\nTo: J\xc3\xb6rg <j\xc3\xb6rg@example.net>\r\nSubject: x\r\n\r\nhi\r\n"
    wire, utf8 = mime.to_bytes_with_flags(imported(raw))
    assert utf8 and wire.startswith(raw.split(b"\r\n\r\n")[0])


def test_an_original_with_an_overlong_line_or_a_broken_header_is_rendered_from_its_properties() -> None:
    long_line = imported(b"From: a@example.org\r\nTo: b@example.net\r\n\r\n" + b"x" * 1200 + b"\r\n")
    broken = imported(b"From: a@example.org\r\nTo : b@example.net\r\nSubject: s\r\n\r\ntext\r\n")
    for md in (long_line, broken):
        assert original.unchanged(md) and not original.sendable(md)
        wire = mime.to_bytes(md)
        assert all(len(line) <= 998 for line in wire.split(b"\r\n"))
        assert all(re.match(rb"[\x21-\x39\x3b-\x7e]+:", f) for f in fields(wire))


def test_a_headerless_input_keeps_no_cr_in_its_body() -> None:
    md = mime.from_mime(b"\r\nfirst line\r\nsecond line\r\n")
    assert md.original is None
    assert "\r" not in md.body and "first line\nsecond line" in md.body


# --- edited: rendered again, keeping what nobody edited ----------------------------------------------
def test_an_edited_message_keeps_every_header_field_no_property_owns_in_its_place() -> None:
    md = imported(RICH)
    md.props[T.PR_SUBJECT] = "a new subject"
    add_to(md, "dave@example.net")
    wire = mime.to_bytes(md)
    out = fields(wire)
    owned = {"from", "to", "subject", "message-id", "in-reply-to", "mime-version", "content-type"}
    kept = [f for f in fields(RICH) if f.split(b":")[0].lower().decode() not in owned]
    assert [f for f in out if f in kept] == kept  # every one, byte for byte, in the same order
    assert b"X-Raw: caf\xc3\xa9 (RFC 6532)" in out and b"Date: Mon, 1 Jan 2024 10:00:00 +0000" in out
    assert names(wire)[:4] == ["received", "x-tag", "from", "reply-to"]  # rendered fields take their places
    parsed = message_from_bytes(wire, policy=policy.default)
    assert parsed["Subject"] == "a new subject" and "dave@example.net" in str(parsed["To"])
    assert str(parsed["References"]).split() == ["<first@example.org>", "<earlier@example.org>"]


def test_when_only_header_fields_were_edited_a_signed_message_keeps_its_whole_content() -> None:
    md = imported(SIGNED)
    md.props[T.PR_SUBJECT] = "forwarded as it is"
    wire = mime.to_bytes(md)
    assert body(wire) == body(SIGNED)
    parsed = message_from_bytes(wire, policy=policy.default)
    assert parsed.get_content_type() == "multipart/signed" and parsed.get_boundary() == "s"
    assert parsed["Subject"] == "forwarded as it is"


def test_an_unedited_attachment_keeps_its_bytes_when_the_text_is_edited() -> None:
    md = imported(RICH)
    md.props[T.PR_BODY] = "a new text"
    md.attachments.append(Attachment(props={T.PR_ATTACH_LONG_FILENAME: "new.txt"}, data=b"new", size=3))
    wire = mime.to_bytes(md)
    assert ATTACHMENT_PART in wire
    parsed = message_from_bytes(wire, policy=policy.default)
    assert [p.get_filename() for p in parsed.iter_attachments()] == ["data.bin", "new.txt"]
    assert "a new text" in parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_a_signature_part_goes_out_as_it_came_when_the_signed_text_is_edited() -> None:
    md = imported(SIGNED)
    md.props[T.PR_BODY] = "the signature no longer matches, but its part is kept"
    wire = mime.to_bytes(md)
    signature = SIGNED[SIGNED.index(b"Content-Type: application/pkcs7-signature") : SIGNED.index(b"\r\n--s--")]
    assert signature in wire


def test_report_parts_keep_their_types_when_rendered_from_properties() -> None:
    status = b"Reporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    parts = {
        "message/delivery-status": status,
        "message/global-delivery-status": status.replace(b"bob", b"b\xc3\xb6b"),
        "message/external-body": b"Content-Type: text/plain\r\n\r\n",
        "text/rfc822-headers": b"From: alice@example.org\r\nSubject: lost\r\n",
    }
    md = MessageData(props={T.PR_SUBJECT: "report", T.PR_BODY: "see the parts"})
    add_to(md, "bob@example.net")
    md.attachments = [
        Attachment(props={T.PR_ATTACH_MIME_TAG: ctype}, data=data, size=len(data), num=n)
        for n, (ctype, data) in enumerate(parts.items())
    ]
    wire = mime.to_bytes(md)
    parsed = message_from_bytes(wire, policy=policy.default)
    sent = [p for p in parsed.walk() if p.get_content_type() in parts]
    assert [p.get_content_type() for p in sent] == list(parts)
    assert all(p.get("Content-Transfer-Encoding") in ("7bit", "8bit") for p in sent)
    for ctype, data in parts.items():
        assert data.rstrip(b"\r\n") in wire, ctype


ENCRYPTED = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: sealed\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <enc.1@example.org>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="e"\r\n'
    b"\r\n--e\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
    b'--e\r\nContent-Type: application/octet-stream; name="encrypted.asc"\r\n\r\n'
    b"-----BEGIN PGP MESSAGE-----\r\nhQEMA0xyz\r\n-----END PGP MESSAGE-----\r\n--e--\r\n"
)
FORWARDED_SIGNED = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: see the signed part\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n'
    b"--m\r\nContent-Type: text/plain\r\n\r\ncover note\r\n"
    b'--m\r\nContent-Type: multipart/signed; protocol="application/pgp-signature"; micalg=pgp-sha256; boundary="s"\r\n\r\n'
    b'--s\r\nContent-Type: application/octet-stream; name="contract.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    b"AAEC\r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n"
    b"iQEz\r\n-----END PGP SIGNATURE-----\r\n--s--\r\n"
    b"--m--\r\n"
)


def entity(raw: bytes, start: bytes, end: bytes) -> bytes:
    return raw[raw.index(start) : raw.index(end) + len(end)]


def test_an_encrypted_message_goes_out_whole_beside_a_new_text() -> None:
    md = imported(ENCRYPTED)
    md.props[T.PR_BODY] = "a note in clear beside the ciphertext"
    wire = mime.to_bytes(md)
    sealed = entity(ENCRYPTED, b"Content-Type: multipart/encrypted", b"-----END PGP MESSAGE-----\r\n--e--")
    assert sealed in wire
    parsed = message_from_bytes(wire, policy=policy.default)
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "multipart/encrypted"]


def test_a_signed_entity_without_the_text_goes_out_whole_when_the_text_is_edited() -> None:
    md = imported(FORWARDED_SIGNED)
    md.props[T.PR_BODY] = "a new cover note"
    wire = mime.to_bytes(md)
    assert entity(FORWARDED_SIGNED, b"Content-Type: multipart/signed", b"--s--") in wire
    assert wire.count(b"-----BEGIN PGP SIGNATURE-----") == 1 and b"cover note" not in wire.replace(b"new cover", b"")


def test_a_signed_message_with_an_added_attachment_keeps_its_whole_content_as_the_first_part() -> None:
    md = imported(SIGNED)
    md.attachments.append(Attachment(props={T.PR_ATTACH_LONG_FILENAME: "notes.txt"}, data=b"notes", size=5))
    wire = mime.to_bytes(md)
    assert entity(SIGNED, b"Content-Type: multipart/signed", b"--s--") in wire
    parsed = message_from_bytes(wire, policy=policy.default)
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["multipart/signed", "text/plain"]
    assert parsed["Message-ID"] == "<signed.1@example.org>" and parsed.get_content_type() == "multipart/mixed"


def test_a_bounce_sent_on_and_edited_keeps_its_report_whether_it_was_read_to_send_or_received() -> None:
    raw = (Path(__file__).parents[1] / "data" / "bounces" / "postfix-smtputf8-global.eml").read_bytes()
    for submission in (True, False):
        md = mime.from_mime(raw, submission=submission)
        md.props[T.PR_SUBJECT] = "passed on"
        wire = mime.to_bytes(md)
        assert body(wire) == body(raw).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), submission
        parsed = message_from_bytes(wire, policy=policy.default)
        assert parsed.get_content_type() == "multipart/report" and parsed["Subject"] == "passed on"
