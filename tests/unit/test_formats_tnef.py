"""TNEF (postroom.formats.tnef): the winmail.dat samples of the `tnef` program's test suite, every
attachment and body recovered byte for byte as its baselines say; and an inbound MIME message with
a winmail.dat part becomes the MAPI message inside it while its original bytes stay as they came."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import postroom
from postroom import HResult, MAPIError, MessageData, Recipient, Session
from postroom.formats import mapiprops, rtf, tnef
from postroom.mapi import tags as T
from postroom.mapi.entryid import one_off_entry_id
from postroom.mime import from_mime

from support.propbags import messages, strip

DATA = Path(__file__).parents[1] / "data" / "tnef"
SAMPLES = sorted(p.stem for p in DATA.glob("*.tnef"))


def expected(name: str) -> list[str]:
    return [line for line in (DATA / f"{name}.list").read_text(encoding="utf-8").splitlines() if line]


def baseline(file: str) -> bytes:
    return (DATA / "baselines" / f"{file}.baseline").read_bytes()


@pytest.mark.parametrize("name", SAMPLES)
def test_every_attachment_and_body_of_a_sample_is_recovered_byte_for_byte(name: str) -> None:
    md = tnef.read_tnef((DATA / f"{name}.tnef").read_bytes())
    attachments = {a.filename: a for a in md.attachments}
    for file in expected(name):
        if file == f"{name}-body.rtf":
            assert rtf.decompress(md.props[mapiprops.PR_RTF_COMPRESSED]) == baseline(file)
        elif file == f"{name}-body.html":
            assert md.props[T.PR_HTML] == baseline(file)
        else:
            assert attachments[file].read_all() == baseline(file), file


def test_a_samples_mapi_properties_and_recipient_table_are_read() -> None:
    md = tnef.read_tnef((DATA / "body.tnef").read_bytes())
    assert md.subject == "Bill of Rights"
    (row,) = md.recipients
    assert row.props  # attRecipTable: one row of MAPI properties
    one = tnef.read_tnef((DATA / "one-file.tnef").read_bytes())
    assert one.props[T.prop_tag(T.PT_LONG, 0x3FFD)] == 1252  # PR_MESSAGE_CODEPAGE, from attMAPIProps
    assert one.props[T.PR_CONVERSATION_TOPIC] == "one-file"
    assert one.props[T.prop_tag(T.PT_STRING8, T.prop_id(T.PR_RECEIVED_BY_EMAIL_ADDRESS))] == "mark.simpson@numega.com"


def test_named_properties_keep_their_names() -> None:
    md = tnef.read_tnef((DATA / "multi-name-property.tnef").read_bytes())
    names = json.loads(md.props[mapiprops.PR_POSTROOM_NAMEID_MAP])
    assert names and all(len(guid) == 36 for guid, _ in names.values())
    assert all(T.prop_tag(0, int(pid, 16)) >> 16 in {t >> 16 for t in md.props} for pid in names)


def test_a_stream_that_is_not_tnef_is_corrupt_data() -> None:
    with pytest.raises(MAPIError) as caught:
        tnef.read_tnef(b"winmail.dat? no")
    assert caught.value.code is HResult.MAPI_E_CORRUPT_DATA


def inbound(winmail: bytes) -> bytes:
    mail = EmailMessage()
    mail["From"] = "Outlook User <outlook@example.org>"
    mail["To"] = "you@example.org"
    mail["Subject"] = "two files"
    mail["Message-ID"] = "<tnef@example.org>"
    mail.set_content("This message has a winmail.dat.\n")
    mail.add_attachment(winmail, maintype="application", subtype="ms-tnef", filename="winmail.dat")
    return mail.as_bytes()


def test_an_inbound_message_with_a_winmail_dat_part_becomes_the_message_it_carries() -> None:
    md = from_mime(inbound((DATA / "two-files.tnef").read_bytes()))
    assert [a.filename for a in md.attachments] == ["AUTHORS", "README"]
    assert [a.read_all() for a in md.attachments] == [baseline("AUTHORS"), baseline("README")]
    assert md.props[T.PR_CONVERSATION_TOPIC] == "two files"
    assert md.recipients and md.recipients[0].email_address == "you@example.org"  # MIME's own recipients


def test_a_winmail_dat_that_cannot_be_read_stays_an_attachment() -> None:
    md = from_mime(inbound(b"\x78\x9f\x3e\x22 but nothing after the signature"))
    assert [a.filename for a in md.attachments] == ["winmail.dat"]


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    with postroom.logon(postroom.Profile.create(tmp_path / "p", with_defaults=False)) as s:
        yield s


def test_an_imported_message_with_tnef_keeps_its_original_bytes_and_shows_the_attachments(
    session: Session, tmp_path: Path
) -> None:
    raw = inbound((DATA / "one-file.tnef").read_bytes())
    (tmp_path / "m.eml").write_bytes(raw)
    (result,) = list(session.import_files([tmp_path / "m.eml"]))
    assert result.message_id is not None
    stored = session.open_message(result.message_id)
    assert [a.filename for a in stored.attachments] == ["AUTHORS"]
    assert stored.attachments[0].read_all() == baseline("AUTHORS")
    assert session.export_rfc822(result.message_id) == raw


# --- TNEF out ---------------------------------------------------------------------------------------
def without_text_twins(md: MessageData) -> MessageData:
    """What `read_tnef` adds (Unicode twins of ANSI strings, PR_ATTACH_SIZE) taken back out, so a
    message read back compares with the one written."""
    for bag in (md.props, *(r.props for r in md.recipients), *(a.props for a in md.attachments)):
        for tag in [t for t in bag if T.prop_type(t) == T.PT_UNICODE]:
            twin = T.prop_tag(T.PT_STRING8, T.prop_id(tag))
            if twin in bag and bag[twin] == bag[tag]:
                del bag[tag]
    for att in md.attachments:
        if att.embedded is not None:
            without_text_twins(att.embedded)
    return md


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_random_property_bags_of_every_type_survive_tnef_out_and_in_unchanged(md: MessageData) -> None:
    again = without_text_twins(tnef.read_tnef(tnef.write_tnef(md, recipients=True)))
    assert strip(again) == strip(with_class(md))


def with_class(md: MessageData) -> MessageData:
    """attMessageClass always says the class: a message without PR_MESSAGE_CLASS reads back as IPM.Note."""
    md.props.setdefault(T.PR_MESSAGE_CLASS, "IPM.Note")
    for att in md.attachments:
        if att.embedded is not None:
            with_class(att.embedded)
    return md


def test_a_message_written_as_tnef_is_read_by_an_independent_reader() -> None:
    import tnefparse  # LGPL-3: a test dependency only

    md = tnef.read_tnef((DATA / "two-files.tnef").read_bytes())
    theirs = tnefparse.TNEF(tnef.write_tnef(md))
    assert [(a.long_filename(), a.data) for a in theirs.attachments] == [
        ("AUTHORS", baseline("AUTHORS")),
        ("README", baseline("README")),
    ]
    subject = next(p for p in theirs.mapiprops if p.name == T.prop_id(T.PR_CONVERSATION_TOPIC))
    assert str(subject.data).rstrip("\0") == "two files"


def test_a_message_sent_as_tnef_carries_its_attachments_in_a_winmail_dat_part(session: Session) -> None:
    draft = session.create_message("rich", "the text")
    draft.attach_bytes("a.bin", b"\x00\x01 attachment")
    draft.set(T.prop_tag(T.PT_LONG, 0x6100), 42)
    md = session.open_message(draft.save())
    out = with_mime(tnef.with_tnef(md))
    (winmail,) = [p for p in out.walk() if p.get_content_type() == "application/ms-tnef"]
    payload = winmail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    inner = tnef.read_tnef(payload)
    assert [(a.filename, a.read_all()) for a in inner.attachments] == [("a.bin", b"\x00\x01 attachment")]
    assert inner.props[T.prop_tag(T.PT_LONG, 0x6100)] == 42
    assert from_mime(out.as_bytes()).props[T.prop_tag(T.PT_LONG, 0x6100)] == 42  # and postroom reads it back


def with_mime(md: MessageData) -> EmailMessage:
    from postroom.mime import to_mime

    return to_mime(md)


def test_rich_info_is_wanted_as_the_one_off_entry_id_or_pr_send_rich_info_says() -> None:
    smtp = Recipient(props={T.PR_ENTRYID: one_off_entry_id("A", "SMTP", "a@example.org")})
    rich = Recipient(props={T.PR_ENTRYID: one_off_entry_id("B", "EX", "/o=org/cn=b")})
    told = Recipient(props={T.PR_ENTRYID: smtp.entry_id, T.PR_SEND_RICH_INFO: True})
    assert [tnef.wants_rich_info(r) for r in (smtp, rich, told, Recipient())] == [False, True, True, False]


def test_export_tnef_writes_a_winmail_dat_with_the_recipient_table(session: Session, tmp_path: Path) -> None:
    draft = session.create_message("to two", "hello").to("a@example.org").cc("b@example.org")
    mid = draft.save()
    inner = tnef.read_tnef(session.export_tnef(mid))
    assert [r.email_address for r in inner.recipients] == ["a@example.org", "b@example.org"]
    assert inner.subject == "to two" and inner.body == "hello"
