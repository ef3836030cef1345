"""MAPI ⇄ MIME conversion (postroom.mime)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes
from email import policy as email_policy
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.entryid import decode_one_off, encode_one_off, search_key
from postroom.mapi.flags import MAPI_P1, AttachMethod, NDRDiag, NDRReason, RecipientType
from postroom.mapi.message import Attachment, MessageData, Recipient
from postroom.mime import (
    RAW_ATTACHMENT_NAME,
    dsn_original_message_id,
    from_mime,
    needs_smtputf8,
    status_to_ndr,
    to_bytes,
    to_bytes_with_flags,
    to_mime,
)

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def rcpt(address: str, name: str = "", kind: int = RecipientType.TO, addrtype: str = "SMTP") -> Recipient:
    props = {T.PR_ADDRTYPE: addrtype, T.PR_EMAIL_ADDRESS: address, T.PR_RECIPIENT_TYPE: int(kind)}
    if name:
        props[T.PR_DISPLAY_NAME] = name
    return Recipient(props=props)


def note(**extra: object) -> MessageData:
    props: dict[int, object] = {
        T.PR_MESSAGE_CLASS: "IPM.Note",
        T.PR_SUBJECT: "Hello",
        T.PR_BODY: "Body text\n",
        T.PR_SENDER_NAME: "Alice Sender",
        T.PR_SENDER_EMAIL_ADDRESS: "alice@example.org",
        T.PR_SENDER_ADDRTYPE: "SMTP",
        T.PR_CLIENT_SUBMIT_TIME: datetime(2024, 6, 4, 8, 0, tzinfo=UTC),
        T.PR_INTERNET_MESSAGE_ID: "<fixed-1@example.org>",
    }
    for key, value in extra.items():
        props[getattr(T, key)] = value
    return MessageData(props=props, recipients=[rcpt("bob@example.net", "Bob")])


def parse(data: bytes) -> EmailMessage:
    return message_from_bytes(data, policy=email_policy.default)


def header_names(data: bytes) -> list[str]:
    return [name.lower() for name in parse(data)]


_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def expected_subject(text: str) -> str:
    """The documented rule: control/line-break runs → one space, ends stripped."""
    return _BREAKS.sub(" ", text).strip()


def expected_name(text: str, address: str) -> str:
    """Display names additionally collapse whitespace; an empty one falls back to the address."""
    name = " ".join(expected_subject(text).split())
    return name or address


def expected_body(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


# --------------------------------------------------------------------------------------
# round trip (property)
# --------------------------------------------------------------------------------------

#: Unicode text with CR/LF and header-looking pieces mixed in.
header_text = st.lists(
    st.text(st.characters(codec="utf-8"), max_size=20)
    | st.sampled_from(["\r\n", "\r", "\n", "\r\nBcc: evil@x", "\nX-Evil: 1\n\n", " ", "\t"]),
    max_size=6,
).map("".join)
addresses = st.emails(domains=st.from_regex(r"[a-z][a-z0-9]{0,10}\.(example|test|org)", fullmatch=True))
recipient_rows = st.lists(
    st.tuples(header_text, addresses, st.sampled_from([RecipientType.TO, RecipientType.CC])), max_size=4
)
attachment_rows = st.lists(
    st.tuples(st.text(min_size=1, max_size=30).filter(lambda s: expected_subject(s) != ""), st.binary(max_size=300)),
    max_size=3,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=header_text,
    body=st.text(max_size=300),
    rows=recipient_rows,
    files=attachment_rows,
    sender_name=header_text,
)
def test_round_trip_keeps_content(
    subject: str,
    body: str,
    rows: list[tuple[str, str, RecipientType]],
    files: list[tuple[str, bytes]],
    sender_name: str,
) -> None:
    msg = MessageData(
        props={
            T.PR_SUBJECT: subject,
            T.PR_BODY: body,
            T.PR_SENDER_NAME: sender_name,
            T.PR_SENDER_EMAIL_ADDRESS: "sender@example.org",
            T.PR_SENDER_ADDRTYPE: "SMTP",
        },
        recipients=[rcpt(addr, name, kind) for name, addr, kind in rows],
        attachments=[
            Attachment(props={T.PR_ATTACH_METHOD: 1, T.PR_ATTACH_LONG_FILENAME: fn}, data=data) for fn, data in files
        ],
    )
    wire = to_bytes(msg)
    assert wire.isascii()  # only ASCII addresses were generated: no SMTPUTF8 needed
    assert b"\r\n" in wire and re.search(rb"(?<!\r)\n", wire) is None

    # Nothing in a header value may start a header of its own.
    expected_headers = {"from", "subject", "date", "message-id", "mime-version", "content-type"}
    expected_headers |= {"content-transfer-encoding"} if not files else set()
    expected_headers |= {"to"} if any(k == RecipientType.TO for _, _, k in rows) else set()
    expected_headers |= {"cc"} if any(k == RecipientType.CC for _, _, k in rows) else set()
    if not expected_subject(subject):
        expected_headers.discard("subject")
    assert set(header_names(wire)) == expected_headers

    back = from_mime(wire)
    assert back.message_class == "IPM.Note"
    assert back.subject == expected_subject(subject)
    assert expected_body(back.body) == expected_body(body)
    assert back.props[T.PR_SENDER_EMAIL_ADDRESS] == "sender@example.org"
    assert back.props[T.PR_SENDER_NAME] == expected_name(sender_name, "sender@example.org")
    got = [(r.display_name, r.email_address, r.kind) for r in back.recipients]
    want = [(expected_name(n, a), a, k) for n, a, k in rows]
    assert sorted(got) == sorted(want)
    assert [(a.filename, a.data) for a in back.attachments] == [(expected_subject(fn), data) for fn, data in files]


# --------------------------------------------------------------------------------------
# outbound: addressing, headers, injection
# --------------------------------------------------------------------------------------


def test_bcc_never_in_headers_unless_asked() -> None:
    msg = note()
    msg.recipients.append(rcpt("secret@example.net", "Secret", RecipientType.BCC))
    wire = to_bytes(msg)
    assert b"secret@example.net" not in wire
    assert "bcc" not in header_names(wire)
    assert "Bcc" not in to_mime(msg)
    with_bcc = to_mime(msg, include_bcc=True)
    assert [a.addr_spec for a in with_bcc["Bcc"].addresses] == ["secret@example.net"]


def test_p1_and_foreign_address_types_are_left_out() -> None:
    msg = note()
    msg.recipients = [
        rcpt("resend@example.net", "Resend", RecipientType.TO | MAPI_P1),
        rcpt("+1 555 0100", "Fax", RecipientType.TO, addrtype="FAX"),
        rcpt("carol@example.net", "Carol", RecipientType.CC),
    ]
    em = to_mime(msg)
    assert "To" not in em
    assert [a.addr_spec for a in em["Cc"].addresses] == ["carol@example.net"]
    assert b"resend@" not in to_bytes(msg)


def test_no_smtp_recipients_still_makes_a_valid_message() -> None:
    msg = note()
    msg.recipients = [rcpt("+1 555 0100", "Fax", addrtype="FAX")]
    wire = to_bytes(msg)
    parsed = parse(wire)
    assert "To" not in parsed and "Cc" not in parsed
    assert parsed["From"].addresses[0].addr_spec == "alice@example.org"
    assert parsed.get_content().strip() == "Body text"


@pytest.mark.parametrize("field", ["PR_SUBJECT", "name", "sender_name"])
def test_header_injection_is_neutralised(field: str) -> None:
    evil = "x\r\nBcc: evil@x\r\n\r\nbody?"
    msg = note()
    if field == "PR_SUBJECT":
        msg.props[T.PR_SUBJECT] = evil
    elif field == "name":
        msg.recipients = [rcpt("bob@example.net", evil)]
    else:
        msg.props[T.PR_SENDER_NAME] = evil
    wire = to_bytes(msg)
    parsed = parse(wire)
    assert sorted(header_names(wire)) == sorted(
        ["from", "to", "subject", "date", "message-id", "mime-version", "content-type", "content-transfer-encoding"]
    )
    assert parsed.get_content().strip() == "Body text"
    if field == "PR_SUBJECT":
        assert str(parsed["Subject"]) == "x Bcc: evil@x body?"
    elif field == "name":
        assert parsed["To"].addresses[0].display_name == "x Bcc: evil@x body?"
        assert parsed["To"].addresses[0].addr_spec == "bob@example.net"
    else:
        assert parsed["From"].addresses[0].display_name == "x Bcc: evil@x body?"


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("recipient", "bob@example.net\r\nBcc: evil@x"),
        ("recipient", "bob@exa\nmple.net"),
        ("recipient", "bob @example.net"),
        ("recipient", "bob@example.net\x00"),
        ("recipient", "not-an-address"),
        ("sender", "alice@example.org\r\nBcc: evil@x"),
        ("message_id", "<id@x>\r\nBcc: evil@x"),
        ("message_id", "<id @x>"),
        ("in_reply_to", "<a@b>\nX: y"),
    ],
)
def test_bad_identifiers_raise_invalid_parameter(where: str, value: str) -> None:
    msg = note()
    if where == "recipient":
        msg.recipients = [rcpt(value, "Bob")]
    elif where == "sender":
        msg.props[T.PR_SENDER_EMAIL_ADDRESS] = value
    elif where == "message_id":
        msg.props[T.PR_INTERNET_MESSAGE_ID] = value
    else:
        msg.props[T.PR_IN_REPLY_TO_ID] = value
    with pytest.raises(MAPIError) as info:
        to_bytes(msg)
    assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER


def test_non_ascii_subject_and_names_are_encoded() -> None:
    msg = note(PR_SUBJECT="Grüße aus Köln — 東京", PR_SENDER_NAME="Jörg Müller")
    msg.recipients = [rcpt("bob@example.net", "Zoë")]
    em = to_mime(msg)
    assert not needs_smtputf8(em)
    wire = to_bytes(msg)
    assert wire.isascii()
    assert b"=?utf-8?" in wire
    parsed = parse(wire)
    assert str(parsed["Subject"]) == "Grüße aus Köln — 東京"
    assert parsed["From"].addresses[0].display_name == "Jörg Müller"
    assert parsed["To"].addresses[0].display_name == "Zoë"


def test_utf8_address_needs_smtputf8() -> None:
    msg = note()
    msg.recipients = [rcpt("jörg@bücher.example", "Jörg")]
    em = to_mime(msg)
    assert needs_smtputf8(em)
    wire = to_bytes(msg)
    assert "jörg@bücher.example".encode() in wire
    back = from_mime(wire)
    assert [r.email_address for r in back.recipients] == ["jörg@bücher.example"]
    # a UTF-8 Bcc is only in the envelope
    plain = to_mime(note())
    assert not needs_smtputf8(plain)
    assert needs_smtputf8(plain, envelope=["jörg@bücher.example"])


@pytest.mark.parametrize(
    "text",
    [
        "テスト мир сообщение мир αβγ αβγ αβγ",  # folds between two encoded words (CPython gh-144156)
        "Ελληνικά " * 12 + "end",
        "=?utf-8?q?not_an_encoded_word?= literally",
        "x" * 200 + " y",
        "a;b,c " * 30,
    ],
)
def test_long_and_tricky_header_text_survives(text: str) -> None:
    name = " ".join(text.split())
    msg = note(PR_SUBJECT=text, PR_SENDER_NAME=name)
    msg.recipients = [rcpt("bob@example.net", name), rcpt("carol@example.net", "Carol")]
    wire = to_bytes(msg)
    assert wire.isascii()
    assert max(len(line) for line in wire.split(b"\r\n")) <= 998
    back = from_mime(wire)
    assert back.subject == text.strip()
    assert back.props[T.PR_SENDER_NAME] == name
    assert [r.display_name for r in back.recipients] == [name, "Carol"]


def test_embedded_utf8_address_needs_smtputf8() -> None:
    inner = note()
    inner.recipients = [rcpt("jörg@bücher.example")]
    outer = note()
    outer.attachments = [Attachment(embedded=inner)]
    em = to_mime(outer)
    assert needs_smtputf8(em)
    back = from_mime(to_bytes(outer))
    embedded = back.attachments[0].embedded
    assert embedded is not None
    assert [r.email_address for r in embedded.recipients] == ["jörg@bücher.example"]


def test_read_receipt_goes_to_the_one_off_in_pr_read_receipt_entryid() -> None:
    msg = note(
        PR_READ_RECEIPT_REQUESTED=True,
        PR_READ_RECEIPT_ENTRYID=encode_one_off("Receipts", "SMTP", "receipts@example.org"),
    )
    assert [a.addr_spec for a in to_mime(msg)["Disposition-Notification-To"].addresses] == ["receipts@example.org"]


def test_from_sender_and_representing() -> None:
    msg = note(
        PR_SENT_REPRESENTING_NAME="Boss",
        PR_SENT_REPRESENTING_EMAIL_ADDRESS="boss@example.org",
        PR_SENT_REPRESENTING_ADDRTYPE="SMTP",
    )
    em = to_mime(msg)
    assert em["From"].addresses[0].addr_spec == "boss@example.org"
    assert em["Sender"].addresses[0].addr_spec == "alice@example.org"
    back = from_mime(to_bytes(msg))
    assert back.props[T.PR_SENT_REPRESENTING_EMAIL_ADDRESS] == "boss@example.org"
    assert back.props[T.PR_SENDER_EMAIL_ADDRESS] == "alice@example.org"

    same = note(PR_SENT_REPRESENTING_EMAIL_ADDRESS="ALICE@example.org", PR_SENT_REPRESENTING_NAME="Alice")
    assert "Sender" not in to_mime(same)

    # the sending identity given by the transport replaces PR_SENDER_*
    em = to_mime(note(), sender=rcpt("relay@example.org", "Relay"))
    assert em["From"].addresses[0].addr_spec == "relay@example.org"
    # a non-SMTP representing address can't go into From
    exchange = note(PR_SENT_REPRESENTING_EMAIL_ADDRESS="/o=Org/cn=boss", PR_SENT_REPRESENTING_ADDRTYPE="EX")
    assert to_mime(exchange)["From"].addresses[0].addr_spec == "alice@example.org"


def test_message_id_is_generated_once_and_stored() -> None:
    msg = note()
    del msg.props[T.PR_INTERNET_MESSAGE_ID]
    first = to_mime(msg)["Message-ID"]
    stored = msg.props[T.PR_INTERNET_MESSAGE_ID]
    assert str(first) == stored and stored.startswith("<") and stored.endswith("@example.org>")
    assert str(to_mime(msg)["Message-ID"]) == stored


def test_date_in_reply_to_importance_priority_and_read_receipt() -> None:
    msg = note(
        PR_CLIENT_SUBMIT_TIME=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        PR_IN_REPLY_TO_ID="<parent@example.net>",
        PR_IMPORTANCE=2,
        PR_PRIORITY=-1,
        PR_READ_RECEIPT_REQUESTED=True,
        PR_RESPONSIBILITY=True,
        PR_SUBMIT_FLAGS=1,
    )
    em = to_mime(msg)
    assert em["Date"].datetime == datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert str(em["In-Reply-To"]) == "<parent@example.net>"
    assert (str(em["Importance"]), str(em["X-Priority"]), str(em["Priority"])) == ("high", "1", "non-urgent")
    assert [a.addr_spec for a in em["Disposition-Notification-To"].addresses] == ["alice@example.org"]
    back = from_mime(to_bytes(msg))
    assert back.props[T.PR_CLIENT_SUBMIT_TIME] == datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert back.props[T.PR_IMPORTANCE] == 2
    assert back.props[T.PR_PRIORITY] == -1
    assert back.props[T.PR_READ_RECEIPT_REQUESTED] is True
    assert back.props[T.PR_IN_REPLY_TO_ID] == "<parent@example.net>"
    assert T.PR_RESPONSIBILITY not in back.props and T.PR_SUBMIT_FLAGS not in back.props

    low = to_mime(note(PR_IMPORTANCE=0, PR_PRIORITY=1))
    assert (str(low["Importance"]), str(low["X-Priority"]), str(low["Priority"])) == ("low", "5", "urgent")
    normal = to_mime(note(PR_IMPORTANCE=1, PR_PRIORITY=0))
    assert "Importance" not in normal and "X-Priority" not in normal and "Priority" not in normal


def test_html_body_and_attachment_types() -> None:
    msg = note(PR_HTML=b"<p>Hello <b>world</b></p>")
    msg.attachments = [
        Attachment(props={T.PR_ATTACH_LONG_FILENAME: "report.pdf"}, data=b"%PDF-1.4"),
        Attachment(props={T.PR_ATTACH_LONG_FILENAME: "data.bin", T.PR_ATTACH_MIME_TAG: "image/png"}, data=b"\x89PNG"),
        Attachment(props={T.PR_ATTACH_LONG_FILENAME: "noext"}, data=b"?"),
        Attachment(props={T.PR_ATTACH_METHOD: int(AttachMethod.BY_REFERENCE)}, data=b"not sent"),
    ]
    em = to_mime(msg)
    assert em.get_content_type() == "multipart/mixed"
    html_part = em.get_body(("html",))
    assert html_part is not None
    assert html_part.get_content().strip() == "<p>Hello <b>world</b></p>"
    types = [part.get_content_type() for part in em.iter_attachments()]
    assert types == ["application/pdf", "image/png", "application/octet-stream"]
    back = from_mime(to_bytes(msg))
    assert back.props[T.PR_HTML] == b"<p>Hello <b>world</b></p>\n"
    assert back.body.strip() == "Body text"
    assert [(a.filename, a.mime_type, a.data) for a in back.attachments] == [
        ("report.pdf", "application/pdf", b"%PDF-1.4"),
        ("data.bin", "image/png", b"\x89PNG"),
        ("noext", "application/octet-stream", b"?"),
    ]
    assert back.attachments[0].props[T.PR_ATTACH_SIZE] == 8
    assert back.props[T.PR_HASATTACH] is True


def test_html_only_message_gets_a_text_fallback() -> None:
    raw = (
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: html\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=iso-8859-1\r\n\r\n"
        b"<html><head><style>p{}</style></head><body><p>Gr\xfc\xdfe</p><p>line&nbsp;two</p></body></html>\r\n"
    )
    msg = from_mime(raw)
    assert "Grüße" in msg.props[T.PR_HTML].decode("utf-8")
    assert msg.body.split() == ["Grüße", "line", "two"]
    assert "p{}" not in msg.body


def test_embedded_message_round_trip() -> None:
    inner = note(PR_SUBJECT="Inner ü", PR_BODY="inner body")
    outer = note()
    outer.attachments = [Attachment(props={T.PR_ATTACH_METHOD: 5}, embedded=inner)]
    back = from_mime(to_bytes(outer))
    (att,) = back.attachments
    assert att.method == AttachMethod.EMBEDDED_MSG
    assert att.embedded is not None
    assert att.embedded.subject == "Inner ü"
    assert att.embedded.body.strip() == "inner body"
    assert [r.email_address for r in att.embedded.recipients] == ["bob@example.net"]


def test_maildir_line_endings() -> None:
    msg = note(PR_BODY="one\r\ntwo\nthree")
    wire = to_bytes(msg, linesep="\n")
    assert b"\r" not in wire
    assert from_mime(wire).body == "one\ntwo\nthree\n"
    with pytest.raises(MAPIError):
        to_bytes(msg, linesep="\r")


GOLDEN = (
    b"From: Alice Sender <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b'Cc: "Carol, C." <carol@example.net>,\r\n'
    b" a+tag@example.org,\r\n"
    b' Q <"a,b"@example.org>,\r\n'
    b" x@[192.0.2.1]\r\n"
    b"Subject: Hello\r\n"
    b"Date: Tue, 04 Jun 2024 08:00:00 +0000\r\n"
    b"Message-ID: <fixed-1@example.org>\r\n"
    b"In-Reply-To: <p@example.net>\r\n"
    b"Importance: high\r\n"
    b"X-Priority: 1\r\n"
    b"Disposition-Notification-To: alice@example.org\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: 7bit\r\n"
    b"MIME-Version: 1.0\r\n"
    b"\r\n"
    b"Body text\r\n"
)


def golden_note() -> MessageData:
    msg = note(PR_IMPORTANCE=2, PR_IN_REPLY_TO_ID="<p@example.net>", PR_READ_RECEIPT_REQUESTED=True)
    msg.recipients += [
        rcpt("carol@example.net", "Carol, C.", RecipientType.CC),
        rcpt("a+tag@example.org", "", RecipientType.CC),
        rcpt('"a,b"@example.org', "Q", RecipientType.CC),
        rcpt("x@[192.0.2.1]", "", RecipientType.CC),
    ]
    return msg


def test_plain_message_is_written_exactly_and_without_parsing_a_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # The modern header API parses a header whenever one is assigned or read (20-130 µs each);
    # a plain message needs none of that on the way out. The bytes are what the package's
    # parse-and-refold path made before.
    calls: list[str] = []
    parse_header = HeaderRegistry.__call__

    def counting(self: HeaderRegistry, name: str, value: str) -> object:
        calls.append(name)
        return parse_header(self, name, value)

    monkeypatch.setattr(HeaderRegistry, "__call__", counting)
    wire, utf8 = to_bytes_with_flags(golden_note())
    assert calls == []
    assert wire == GOLDEN
    assert utf8 is False
    assert to_bytes(golden_note(), linesep="\n") == GOLDEN.replace(b"\r\n", b"\n")


def test_to_bytes_with_flags_is_to_bytes_and_needs_smtputf8() -> None:
    for address, utf8 in (("bob@example.net", False), ("jörg@bücher.example", True)):
        msg = note()
        msg.recipients = [rcpt(address, "Bob")]
        for linesep in ("\r\n", "\n"):
            assert to_bytes_with_flags(msg, linesep=linesep) == (to_bytes(msg, linesep=linesep), utf8)
        assert needs_smtputf8(to_mime(msg)) is utf8
    # a UTF-8 Bcc counts only when it is written into the headers
    msg = note()
    msg.recipients.append(rcpt("jörg@bücher.example", "Jörg", RecipientType.BCC))
    assert to_bytes_with_flags(msg)[1] is False
    wire, utf8 = to_bytes_with_flags(msg, include_bcc=True)
    assert utf8 is True and "jörg@bücher.example".encode() in wire
    with pytest.raises(MAPIError):
        to_bytes_with_flags(msg, linesep="\r")


def test_read_receipt_to_a_utf8_author() -> None:
    msg = note(PR_SENDER_EMAIL_ADDRESS="jörg@bücher.example", PR_READ_RECEIPT_REQUESTED=True)
    wire, utf8 = to_bytes_with_flags(msg)
    assert utf8 is True
    assert "Disposition-Notification-To: jörg@bücher.example\r\n".encode() in wire


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        ("<fine-1@example.org>", "<fine-1@example.org>"),
        (" <fine-2@example.org> (a comment)", "<fine-2@example.org>"),
        ("\r\n <folded-3@example.org>", "<folded-3@example.org>"),
        ("bare-4@example.org", "bare-4@example.org"),
        ("<a b@c>", None),
        ("<a c@d>", None),
        ("<a@b> <c@d>", None),
        ("a@b c", None),
        ("<ünï@example.org>", None),
        ("<>", None),
    ],
)
def test_a_message_id_is_kept_as_written_or_not_at_all(written: str, kept: str | None) -> None:
    raw = f"From: a@example.org\r\nMessage-ID: {written}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    assert from_mime(raw).props.get(T.PR_INTERNET_MESSAGE_ID) == kept


def test_message_ids_are_written_as_stored_and_must_fit_on_a_line() -> None:
    long_id = "<" + "a" * 200 + "@example.org>"
    wire = to_bytes(note(PR_INTERNET_MESSAGE_ID=long_id, PR_IN_REPLY_TO_ID=long_id[1:-1]))
    assert f"\r\nMessage-ID: {long_id}\r\n".encode() in wire
    assert f"\r\nIn-Reply-To: {long_id}\r\n".encode() in wire
    assert from_mime(wire).props[T.PR_IN_REPLY_TO_ID] == long_id
    for tag in ("PR_INTERNET_MESSAGE_ID", "PR_IN_REPLY_TO_ID"):
        with pytest.raises(MAPIError) as info:
            to_bytes(note(**{tag: "<" + "a" * 990 + "@example.org>"}))
        assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER


@pytest.mark.parametrize("subject", [" ".join(f"word{i}" for i in range(60)), "a;b,c " * 30, "x" * 70])
def test_long_ascii_subject_is_folded(subject: str) -> None:
    wire = to_bytes(note(PR_SUBJECT=subject))
    head = wire.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert from_mime(wire).subject == subject.strip()


def test_multipart_with_html_and_attachment_keeps_its_structure() -> None:
    msg = note(PR_HTML=b"<p>Hi</p>")
    msg.attachments = [Attachment(props={T.PR_ATTACH_LONG_FILENAME: "ä" * 120 + ".txt"}, data=b"x")]
    wire = to_bytes(msg)
    assert max(len(line) for line in wire.split(b"\r\n")) <= 78
    parsed = parse(wire)
    assert parsed.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in parsed.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "text/plain",
    ]
    assert [k.lower() for k in parsed].count("mime-version") == 1
    assert all("MIME-Version" not in part for part in list(parsed.walk())[1:])
    back = from_mime(wire)
    assert back.props[T.PR_HTML] == b"<p>Hi</p>\n"
    assert [a.filename for a in back.attachments] == ["ä" * 120 + ".txt"]


def test_twenty_megabyte_attachment() -> None:
    size = 20 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    msg = note()
    msg.attachments = [Attachment(props={T.PR_ATTACH_LONG_FILENAME: "big.bin"}, data=payload)]
    wire = to_bytes(msg)
    back = from_mime(wire)
    (att,) = back.attachments
    assert att.data is not None
    assert len(att.data) == size
    assert att.props[T.PR_ATTACH_SIZE] == size
    assert hashlib.sha256(att.data).digest() == hashlib.sha256(payload).digest()


# --------------------------------------------------------------------------------------
# inbound
# --------------------------------------------------------------------------------------

INBOUND = (
    b"Return-Path: <alice@example.org>\r\n"
    b"From: =?utf-8?q?Alice_M=C3=BCller?= <alice@example.org>\r\n"
    b"Sender: Secretary <sec@example.org>\r\n"
    b'To: Bob <bob@example.net>, "Carol, C." <carol@example.net>\r\n'
    b"Cc: team: dave@example.net, erin@example.net;\r\n"
    b"Subject: Status\r\n"
    b"Date: Tue, 4 Jun 2024 10:14:57 +0200\r\n"
    b"Message-ID: <status-1@example.org>\r\n"
    b"Importance: Low\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b'Content-Type: multipart/alternative; boundary="b2"\r\n'
    b"\r\n"
    b"--b2\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hi all\r\n"
    b"--b2\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Hi all</p>\r\n"
    b"--b2--\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''%C3%BCbersicht.xlsx\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAw==\r\n"
    b"--b1--\r\n"
)


def test_inbound_properties() -> None:
    msg = from_mime(INBOUND)
    p = msg.props
    assert p[T.PR_MESSAGE_CLASS] == "IPM.Note"
    assert p[T.PR_SUBJECT] == "Status"
    assert p[T.PR_BODY] == "Hi all"  # the CRLF before a boundary belongs to the boundary
    assert p[T.PR_HTML] == b"<p>Hi all</p>"
    assert p[T.PR_CLIENT_SUBMIT_TIME] == datetime(2024, 6, 4, 8, 14, 57, tzinfo=UTC)
    assert p[T.PR_MESSAGE_DELIVERY_TIME].tzinfo is not None
    assert p[T.PR_INTERNET_MESSAGE_ID] == "<status-1@example.org>"
    assert p[T.PR_TRANSPORT_MESSAGE_HEADERS].startswith("Return-Path: <alice@example.org>\r\n")
    assert p[T.PR_TRANSPORT_MESSAGE_HEADERS].endswith('Content-Type: multipart/mixed; boundary="b1"')
    assert p[T.PR_IMPORTANCE] == 0
    assert p[T.PR_SENDER_EMAIL_ADDRESS] == "sec@example.org"
    assert p[T.PR_SENDER_SEARCH_KEY] == search_key("SMTP", "sec@example.org")
    assert decode_one_off(p[T.PR_SENDER_ENTRYID]).email_address == "sec@example.org"
    assert p[T.PR_SENT_REPRESENTING_NAME] == "Alice Müller"
    assert p[T.PR_SENT_REPRESENTING_ADDRTYPE] == "SMTP"
    assert p[T.PR_DISPLAY_TO] == "Bob; Carol, C."
    assert p[T.PR_DISPLAY_CC] == "dave@example.net; erin@example.net"
    assert T.PR_ENTRYID not in p
    rows = [(r.display_name, r.email_address, r.kind) for r in msg.recipients]
    assert rows == [
        ("Bob", "bob@example.net", RecipientType.TO),
        ("Carol, C.", "carol@example.net", RecipientType.TO),
        ("dave@example.net", "dave@example.net", RecipientType.CC),
        ("erin@example.net", "erin@example.net", RecipientType.CC),
    ]
    one_off = decode_one_off(msg.recipients[1].entry_id)
    assert (one_off.display_name, one_off.address_type, one_off.email_address, one_off.unicode) == (
        "Carol, C.",
        "SMTP",
        "carol@example.net",
        True,
    )
    assert msg.recipients[1].props[T.PR_SEARCH_KEY] == b"SMTP:CAROL@EXAMPLE.NET\0"
    (att,) = msg.attachments
    assert att.props[T.PR_ATTACH_METHOD] == 1
    assert att.props[T.PR_ATTACH_LONG_FILENAME] == "übersicht.xlsx"
    assert att.props[T.PR_ATTACH_FILENAME] == "übersicht.xlsx"
    assert att.props[T.PR_ATTACH_MIME_TAG] == "application/octet-stream"
    assert att.props[T.PR_ATTACH_SIZE] == 4
    assert att.read_all() == b"\x00\x01\x02\x03"


POSTFIX_DSN = b"""Return-Path: <>
Received: by mx.example.net (Postfix)
\tid 4F2A81C0123; Tue,  4 Jun 2024 10:15:02 +0200 (CEST)
Date: Tue,  4 Jun 2024 10:15:02 +0200 (CEST)
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: alice@example.org
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4F2A81C0123.1717488902/mx.example.net"
Content-Transfer-Encoding: 8bit
Message-Id: <20240604081502.4F2A81C0124@mx.example.net>

This is a MIME-encapsulated message.

--4F2A81C0123.1717488902/mx.example.net
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host mx.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<nobody@example.net>: host mail.example.net[192.0.2.25] said: 550 5.1.1
    <nobody@example.net>: Recipient address rejected: User unknown in virtual
    mailbox table (in reply to RCPT TO command)

--4F2A81C0123.1717488902/mx.example.net
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
X-Postfix-Queue-ID: 4F2A81C0123
X-Postfix-Sender: rfc822; alice@example.org
Arrival-Date: Tue,  4 Jun 2024 10:14:58 +0200 (CEST)

Final-Recipient: rfc822; nobody@example.net
Original-Recipient: rfc822;nobody@example.net
Action: failed
Status: 5.1.1
Remote-MTA: dns; mail.example.net
Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.net>: Recipient address
    rejected: User unknown in virtual mailbox table

--4F2A81C0123.1717488902/mx.example.net
Content-Description: Undelivered Message
Content-Type: message/rfc822
Content-Transfer-Encoding: 8bit

Return-Path: <alice@example.org>
From: Alice <alice@example.org>
To: Nobody <nobody@example.net>
Subject: Quarterly report
Date: Tue, 4 Jun 2024 10:14:57 +0200
Message-ID: <quarterly-1@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Here it is.

--4F2A81C0123.1717488902/mx.example.net--
""".replace(b"\n", b"\r\n")


def test_postfix_dsn_becomes_ndr() -> None:
    report = from_mime(POSTFIX_DSN)
    p = report.props
    assert p[T.PR_MESSAGE_CLASS] == "REPORT.IPM.Note.NDR"
    assert p[T.PR_SUBJECT] == "Undelivered Mail Returned to Sender"
    assert "could not\nbe delivered" in p[T.PR_BODY]
    assert p[T.PR_ORIGINAL_SUBJECT] == "Quarterly report"
    assert p[T.PR_REPORT_TAG] == b"<quarterly-1@example.org>"
    assert dsn_original_message_id(POSTFIX_DSN) == "<quarterly-1@example.org>"
    (row,) = report.recipients
    assert row.email_address == "nobody@example.net"
    assert row.address_type == "SMTP"
    assert row.display_name == "nobody@example.net"
    assert row[T.PR_NDR_STATUS_CODE] == 550
    assert row[T.PR_NDR_DIAG_CODE] == NDRDiag.MAIL_RECIPIENT_UNKNOWN
    assert row[T.PR_NDR_REASON_CODE] == NDRReason.TRANSFER_IMPOSSIBLE
    assert "User unknown in virtual mailbox table" in row[T.PR_REPORT_TEXT]
    assert row[T.PR_REPORT_TEXT].startswith("550 5.1.1 <nobody@example.net>")
    assert T.PR_DELIVER_TIME not in row
    assert decode_one_off(row.entry_id).email_address == "nobody@example.net"
    # the returned message is kept as an embedded message (so it can be resent)
    (att,) = report.attachments
    assert att.embedded is not None and att.embedded.subject == "Quarterly report"


def _dsn(*blocks: tuple[str, str], third: str = "") -> bytes:
    per_recipient = "".join(
        f"\r\nFinal-Recipient: rfc822; {addr}\r\nAction: {action}\r\nStatus: "
        f"{'2.0.0' if action != 'delayed' else '4.4.7'}\r\nLast-Attempt-Date: Wed, 5 Jun 2024 12:00:00 +0000\r\n"
        for addr, action in blocks
    )
    return (
        "From: postmaster@mx.example.net\r\nTo: alice@example.org\r\nSubject: Delivery report\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type="delivery-status"; boundary="zz"\r\n\r\n'
        "--zz\r\nContent-Type: text/plain\r\n\r\nReport.\r\n"
        "--zz\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n"
        f"{per_recipient}{third}--zz--\r\n"
    ).encode()


def test_dsn_delivered_and_delayed_classes() -> None:
    headers = (
        "--zz\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "Subject: Original one\r\nMessage-ID: <orig-2@example.org>\r\nTo: x@example.net\r\n\r\n"
    )
    delivered = from_mime(_dsn(("x@example.net", "delivered"), ("y@example.net", "relayed"), third=headers))
    assert delivered.message_class == "REPORT.IPM.Note.DR"
    assert [r.email_address for r in delivered.recipients] == ["x@example.net", "y@example.net"]
    assert delivered.recipients[0][T.PR_DELIVER_TIME] == datetime(2024, 6, 5, 12, 0, tzinfo=UTC)
    assert T.PR_NDR_REASON_CODE not in delivered.recipients[0]
    assert delivered.props[T.PR_ORIGINAL_SUBJECT] == "Original one"
    assert delivered.props[T.PR_REPORT_TAG] == b"<orig-2@example.org>"
    assert delivered.props[T.PR_ORIGINAL_DISPLAY_TO] == "x@example.net"

    delayed = from_mime(_dsn(("x@example.net", "delayed"), ("y@example.net", "delivered")))
    assert delayed.message_class == "REPORT.IPM.Note.Delayed.DR"
    assert delayed.recipients[0][T.PR_REPORT_TEXT] == "4.4.7"
    assert T.PR_DELIVER_TIME not in delayed.recipients[0]
    assert dsn_original_message_id(_dsn(("x@example.net", "delayed"))) is None

    mixed = from_mime(_dsn(("x@example.net", "delivered"), ("y@example.net", "failed")))
    assert mixed.message_class == "REPORT.IPM.Note.NDR"


def test_raw_utf8_headers_are_read_as_utf8() -> None:
    raw = (
        "From: Jörg <jörg@bücher.example>\r\nTo: Zoë <zoe@example.net>\r\nSubject: Grüße\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÄpfel\r\n"
    ).encode()
    msg = from_mime(raw)
    assert msg.subject == "Grüße"
    assert msg.body == "Äpfel\n"
    assert msg.props[T.PR_SENDER_EMAIL_ADDRESS] == "jörg@bücher.example"
    assert msg.props[T.PR_SENDER_NAME] == "Jörg"
    assert [(r.display_name, r.email_address) for r in msg.recipients] == [("Zoë", "zoe@example.net")]


def test_encoded_crlf_in_inbound_names_is_flattened() -> None:
    raw = b"From: =?utf-8?q?Eve=0D=0ABcc=3A_x?= <eve@example.org>\r\nSubject: =?utf-8?q?a=0D=0Ab?=\r\n\r\nx"
    msg = from_mime(raw)
    assert msg.props[T.PR_SENDER_NAME] == "Eve Bcc: x"
    assert msg.subject == "a b"


def test_report_without_recipient_blocks_stays_a_note() -> None:
    data = _dsn()
    msg = from_mime(data)
    assert msg.message_class == "IPM.Note"
    assert [r.email_address for r in msg.recipients] == ["alice@example.org"]


@pytest.mark.parametrize(
    ("status", "reason", "diag"),
    [
        ("5.1.1", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.MAIL_RECIPIENT_UNKNOWN),
        ("4.1.3", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.MAIL_ADDRESS_INCORRECT),
        ("5.1.4", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.OR_NAME_AMBIGUOUS),
        ("5.1.6", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.MAIL_RECIPIENT_MOVED),
        ("5.1.10", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.MAIL_RECIPIENT_UNKNOWN),
        ("5.2.2", NDRReason.TRANSFER_FAILED, NDRDiag.LENGTH_CONSTRAINT_VIOLATD),
        ("5.2.3", NDRReason.TRANSFER_FAILED, NDRDiag.LENGTH_CONSTRAINT_VIOLATD),
        ("5.2.4", NDRReason.TRANSFER_FAILED, NDRDiag.EXPANSION_FAILED),
        ("5.2.1", NDRReason.TRANSFER_FAILED, NDRDiag.MAIL_REFUSED),
        ("5.3.3", NDRReason.TRANSFER_FAILED, NDRDiag.CRITICAL_FUNC_UNSUPPORTED),
        ("5.3.5", NDRReason.TRANSFER_FAILED, NDRDiag.CRITICAL_FUNC_UNSUPPORTED),
        ("5.3.4", NDRReason.TRANSFER_FAILED, NDRDiag.LENGTH_CONSTRAINT_VIOLATD),
        ("4.4.7", NDRReason.TRANSFER_FAILED, NDRDiag.MAXIMUM_TIME_EXPIRED),
        ("5.7.1", NDRReason.RESTRICTED_DELIVERY, NDRDiag.MAIL_REFUSED),
        ("550 5.1.1 <x@y>: User unknown", NDRReason.TRANSFER_IMPOSSIBLE, NDRDiag.MAIL_RECIPIENT_UNKNOWN),
        ("host 192.0.2.25 said 554", NDRReason.TRANSFER_FAILED, NDRDiag.NO_DIAGNOSTIC),
        ("", NDRReason.TRANSFER_FAILED, NDRDiag.NO_DIAGNOSTIC),
    ],
)
def test_status_to_ndr(status: str, reason: NDRReason, diag: NDRDiag) -> None:
    assert status_to_ndr(status) == (reason, diag)


HOSTILE = [
    b"",
    b"\x00\x01\x02\xff\xfe garbage",
    b"\xff" * 1000,
    b"no colon here\r\n\r\nbody",
    b'Subject: =?utf-8?b?!!!notbase64?=\r\nFrom: <<<@@@>>>\r\nTo: ,,,;;;:::"\r\nDate: yesterday\r\n\r\nx',
    b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain; charset=nonexistent-42\r\n\r\n\xff\xfe\r\n--x",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=q\r\n\r\n--q\r\n"
    b"Content-Type: message/delivery-status\r\n\r\n\r\n\r\nAction: failed\r\n--q--",
    b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!",
    b"Subject: x\x00y\r\nFrom: a\x00b <a\x00@b>\r\nTo: \x00\r\n\r\n\x00",
    b"".join(b"Content-Type: message/rfc822\r\n\r\n" for _ in range(200)) + b"Subject: deep\r\n\r\nbody",
    b"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
    + b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n" * 300,
]


@pytest.mark.parametrize("data", HOSTILE)
def test_hostile_input_never_raises(data: bytes) -> None:
    msg = from_mime(data)
    assert isinstance(msg, MessageData)
    assert isinstance(msg.subject, str) and isinstance(msg.body, str)
    dsn_original_message_id(data)


def test_headerless_input_is_unparseable() -> None:
    msg = from_mime(b"\x00\x01 this is not mail\n\xff")
    assert msg.subject == "(unparseable message)"
    assert msg.message_class == "IPM.Note"
    assert "this is not mail" in msg.body


# Issue 14, item 4: what cannot be converted exactly keeps the bytes as received (a transport may
# delete the message on the server once it is stored).


def kept_bytes(msg: MessageData) -> bytes | None:
    originals = [a for a in msg.attachments if a.filename == RAW_ATTACHMENT_NAME]
    assert len(originals) <= 1
    return originals[0].read_all() if originals else None


LOSSY = {
    "no header lines, Latin-1 text": b"caf\xe9 cr\xe8me, no header at all\r\njust text\r\n",
    "a Subject in Latin-1": b"From: a@sender.test\r\nSubject: caf\xe9 cr\xe8me\r\n\r\nbody\r\n",
    "a display name in Latin-1": b"From: Ren\xe9 <r@sender.test>\r\nSubject: x\r\n\r\nbody\r\n",
    "a boundary that never occurs": (
        b'Content-Type: multipart/mixed; boundary="never"\r\nSubject: x\r\n\r\n'
        b"--other\r\nContent-Type: text/plain\r\n\r\nhello\r\n--other--\r\n"
    ),
    "a part never closed": (
        b'Content-Type: multipart/mixed; boundary="b"\r\nSubject: x\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    ),
    "text not valid in its charset": (
        b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\xe9\r\n"
    ),
    "8-bit text declared ASCII": b"Subject: x\r\nContent-Type: text/plain\r\n\r\ncaf\xc3\xa9\r\n",
    "an unknown charset, not UTF-8 either": (
        b"Subject: x\r\nContent-Type: text/plain; charset=x-unheard-of\r\n\r\ncaf\xe9\r\n"
    ),
    "base64 with invalid characters": (
        b"Subject: x\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=a.pdf\r\n\r\nSGVsbG8*gd29ybGQ=\r\n"
    ),
}


@pytest.mark.parametrize("raw", LOSSY.values(), ids=list(LOSSY))
def test_what_cannot_be_converted_exactly_keeps_its_bytes_attached(raw: bytes) -> None:
    msg = from_mime(raw)
    assert kept_bytes(msg) == raw
    assert msg.get(T.PR_HASATTACH) is True
    assert RAW_ATTACHMENT_NAME in msg.body  # the body says why the attachment is there
    original = next(a for a in msg.attachments if a.filename == RAW_ATTACHMENT_NAME)
    assert original.mime_type == "application/octet-stream"
    assert original.num == len(msg.attachments) - 1


def test_header_text_that_is_not_utf8_is_read_as_windows_1252() -> None:
    msg = from_mime(LOSSY["a Subject in Latin-1"])
    assert msg.subject == "café crème"  # not "caf\ufffd cr\ufffdme"
    assert from_mime(LOSSY["a display name in Latin-1"]).get(T.PR_SENDER_NAME) == "René"
    assert "Subject: café crème" in str(msg.get(T.PR_TRANSPORT_MESSAGE_HEADERS))
    assert "its Subject header is not valid UTF-8" in msg.body


def test_unparseable_input_says_why_and_shows_what_text_it_can() -> None:
    raw = LOSSY["no header lines, Latin-1 text"]
    msg = from_mime(raw)
    assert msg.subject == "(unparseable message)"
    assert "it has no header lines" in msg.body and f"({len(raw)} bytes)" in msg.body
    assert "just text" in msg.body
    assert [a.filename for a in msg.attachments] == [RAW_ATTACHMENT_NAME]


@pytest.mark.parametrize(
    "raw",
    [
        # 8-bit UTF-8 headers (RFC 6532) and body, RFC 2047 words, quoted-printable, base64, a report
        "From: Jürgen <j@sender.test>\r\nSubject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nSchöne Grüße\r\n",
        "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\nSch=F6ne Gr=FC=DFe\r\n",
        'Subject: x\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
        "hi\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=a.pdf\r\n\r\nSGVsbG8gd29ybGQ=\r\n--b--\r\n",
        "Subject: binary attachment\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Disposition: attachment; filename=notes.txt\r\n\r\nnot \udce9 utf-8\r\n",
    ],
    ids=["utf8-8bit", "qp-latin1", "base64-attachment", "text-attachment-raw"],
)
def test_a_message_converted_exactly_gets_no_copy_of_its_bytes(raw: str) -> None:
    msg = from_mime(raw.encode("utf-8", "surrogateescape"))
    assert kept_bytes(msg) is None
    assert RAW_ATTACHMENT_NAME not in msg.body
    assert "\ufffd" not in msg.subject + msg.body


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(from_mime(data), MessageData)


def test_long_name_with_utf8_address_stays_within_998_octets() -> None:
    """Found by the fuzz test: the line length was counted in characters, not octets."""
    from postroom.mapi.message import MessageData as _MD
    from postroom.mapi.message import Recipient as _R

    address = "é" * 60 + "@" + "é" * 60
    msg = _MD(
        props={
            T.PR_SUBJECT: "x",
            T.PR_BODY: "b",
            T.PR_SENDER_EMAIL_ADDRESS: "a@b.test",
            T.PR_SENDER_ADDRTYPE: "SMTP",
            T.PR_INTERNET_MESSAGE_ID: "<a@b.test>",
        },
        recipients=[
            _R(
                props={
                    T.PR_ADDRTYPE: "SMTP",
                    T.PR_EMAIL_ADDRESS: address,
                    T.PR_DISPLAY_NAME: "a " * 376,
                    T.PR_RECIPIENT_TYPE: 1,
                }
            )
        ],
    )
    from postroom import mime as _mime

    wire = _mime.to_bytes(msg)
    assert max(len(line) for line in wire.split(b"\r\n")) <= 998
