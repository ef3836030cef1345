"""Outlook .msg files (postroom.formats.msg): real samples read with every property an independent
reader (extract-msg) reports, their attachments and bodies as the samples' expected outputs say;
exported back through postroom's own compound-file writer and read again, by postroom and by
extract-msg, with every property equal; and random property bags of every MAPI type surviving
export and import unchanged."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import olefile
import pytest
from hypothesis import HealthCheck, given, settings

import postroom
from postroom import HResult, MAPIError, MessageData, Session
from postroom.formats import cfb, msg
from postroom.mapi import tags as T
from postroom.mapi.message import Attachment, Recipient

from support.msgcheck import independent_view
from support.propbags import MULTI, PT_APPTIME, PT_CURRENCY, PT_FLOAT, messages, strip

DATA = Path(__file__).parents[1] / "data" / "msg"
SAMPLES = ["strangeDate.msg", "unicode.msg"]
EXPECTED = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
#: What a store sets or drops when it saves a message (its own entry ID, flags, counts, display
#: lists, attachment numbers and sizes): everything else comes back from an export as it went in.
STORE_OWNED = {
    T.PR_ENTRYID,
    T.PR_MESSAGE_FLAGS,
    T.PR_HASATTACH,
    T.PR_DISPLAY_TO,
    T.PR_DISPLAY_CC,
    T.PR_DISPLAY_BCC,
    T.PR_ROWID,
    T.PR_ATTACH_NUM,
    T.PR_ATTACH_SIZE,
    T.PR_INSTANCE_KEY,
    T.PR_SUBMIT_FLAGS,
    T.PR_RECORD_KEY,
}


def signed(tag: int, value: Any) -> Any:
    """extract-msg reads PT_LONG as unsigned; MS-OXCDATA's PtypInteger32 is signed (-1, not 4294967295)."""
    if tag & 0xFFFF == T.PT_LONG and isinstance(value, int) and value > 0x7FFFFFFF:
        return value - (1 << 32)
    return value


def view_of(md: MessageData) -> dict[str, Any]:
    """A message as `independent_view` shows one: attachment data as PR_ATTACH_DATA_BIN."""
    return {
        "message": dict(md.props),
        "recipients": [dict(r.props) for r in md.recipients],
        "attachments": [
            {**a.props, **({T.PR_ATTACH_DATA_BIN: a.read_all()} if a.embedded is None else {})} for a in md.attachments
        ],
    }


def same_as_independent(mine: dict[int, Any], theirs: dict[int, Any], skip: set[int] = frozenset()) -> list[str]:
    """Every property the independent reader reports, compared; the differences in words."""
    return [
        f"{T.tag_name(tag)}: extract-msg {signed(tag, value)!r} != postroom {mine.get(tag)!r}"
        for tag, value in theirs.items()
        if tag not in skip and signed(tag, value) != signed(tag, mine.get(tag))
    ]


def compare(mine: dict[str, Any], theirs: dict[str, Any], skip: set[int] = frozenset()) -> list[str]:
    problems = same_as_independent(mine["message"], theirs["message"], skip)
    assert len(mine["recipients"]) == len(theirs["recipients"])
    assert len(mine["attachments"]) == len(theirs["attachments"])
    for a, b in zip(mine["recipients"], theirs["recipients"], strict=True):
        problems += same_as_independent(a, b, skip)
    for a, b in zip(mine["attachments"], theirs["attachments"], strict=True):
        problems += same_as_independent(a, b, skip)
    return problems


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    with postroom.logon(postroom.Profile.create(tmp_path / "p", with_defaults=False)) as s:
        yield s


# --- real samples ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLES)
def test_every_property_of_a_sample_is_what_an_independent_reader_reports(name: str) -> None:
    md = msg.read_msg((DATA / name).read_bytes())
    theirs = independent_view(DATA / name)
    assert len(theirs["message"]) > 30
    assert compare(view_of(md), theirs) == []


@pytest.mark.parametrize("name", SAMPLES)
def test_the_attachments_of_a_sample_are_byte_for_byte_its_expected_outputs(name: str) -> None:
    md = msg.read_msg((DATA / name).read_bytes())
    got = {a.filename: hashlib.sha256(a.read_all()).hexdigest() for a in md.attachments}
    assert got == EXPECTED[name]["attachments"]


def expected_body(name: str) -> str:
    """The body in a sample's expected message.text (written on Windows: every line end \\r\\r\\n)."""
    text = (DATA / EXPECTED[name]["body"]).read_bytes().decode("utf-8").replace("\r\r\n", "\r\n")
    return text.split("-----------------\r\n\r\n", 1)[1]


def test_the_body_of_a_sample_is_its_expected_output() -> None:
    md = msg.read_msg((DATA / "unicode.msg").read_bytes())
    assert md.body == expected_body("unicode.msg")
    assert md.subject == "Test for TIF files"
    assert md.submit_time == datetime(2013, 11, 18, 8, 26, 24, tzinfo=UTC)


def test_the_html_taken_out_of_a_samples_rtf_is_what_an_independent_reader_takes_out() -> None:
    import extract_msg

    md = msg.read_msg((DATA / "strangeDate.msg").read_bytes())
    theirs = extract_msg.openMsg(str(DATA / "strangeDate.msg"))
    try:
        # RTFDE ends the lines of the HTML with LF, postroom with CRLF (what \par stands for).
        assert md.props[T.PR_HTML].replace(b"\r\n", b"\n") == theirs.htmlBody
    finally:
        theirs.close()
    assert b"John Doe v. Jane Roe" in md.props[T.PR_HTML]


def test_a_sample_imported_and_converted_to_rfc822_keeps_its_body_attachments_and_headers(session: Session) -> None:
    (result,) = list(session.import_files([DATA / "unicode.msg"]))
    assert result.status is postroom.ImportStatus.IMPORTED and result.message_id is not None
    parsed = message_from_bytes(session.export_rfc822(result.message_id))
    assert parsed["Subject"] == "Test for TIF files"
    assert "brianzhou@me.com" in str(parsed["To"])
    parts: list[Message] = [p for p in parsed.walk() if not p.is_multipart()]
    text = next(p for p in parts if p.get_content_type() == "text/plain")
    payload = text.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert payload.decode(text.get_content_charset() or "utf-8").replace("\r\n", "\n") == expected_body(
        "unicode.msg"
    ).replace("\r\n", "\n")
    files = {p.get_filename(): p.get_payload(decode=True) for p in parts if p.get_filename()}
    assert {n: hashlib.sha256(d).hexdigest() for n, d in files.items() if isinstance(d, bytes)} == EXPECTED[
        "unicode.msg"
    ]["attachments"]


@pytest.mark.parametrize("name", SAMPLES)
def test_a_sample_imported_and_exported_again_reads_back_with_every_property_equal(
    session: Session, tmp_path: Path, name: str
) -> None:
    original = msg.read_msg((DATA / name).read_bytes())
    (result,) = list(session.import_files([DATA / name]))
    assert result.message_id is not None
    exported = tmp_path / "out.msg"
    exported.write_bytes(session.export_msg(result.message_id))
    again = msg.read_msg(exported.read_bytes())
    assert compare(view_of(again), view_of(original), STORE_OWNED) == []
    # And extract-msg reads postroom's file as it reads the original.
    assert compare(independent_view(exported), independent_view(DATA / name), STORE_OWNED) == []


def test_a_file_that_is_not_an_outlook_message_is_refused_as_corrupt_data(tmp_path: Path) -> None:
    with pytest.raises(MAPIError) as caught:
        msg.read_msg(b"not a compound file at all" * 40)
    assert caught.value.code is HResult.MAPI_E_CORRUPT_DATA
    other = cfb.write_cfb({"WordDocument": b"x" * 100})  # a compound file, but no message in it
    with pytest.raises(MAPIError, match=r"__properties_version1\.0"):
        msg.read_msg(other)


# --- the compound-file writer -----------------------------------------------------------------------
def test_the_compound_file_writer_makes_files_olefile_reads_stream_for_stream() -> None:
    tree: cfb.Tree = {
        "small": b"abc",
        "empty": b"",
        "exactly the cutoff": b"c" * 4096,
        "storage": {f"s{n:02}": bytes([n]) * (n * 37) for n in range(40)},
    }
    ole = olefile.OleFileIO(cfb.write_cfb(tree))
    try:
        assert ole.openstream("small").read() == b"abc"
        assert ole.openstream("empty").read() == b""
        assert ole.openstream("exactly the cutoff").read() == b"c" * 4096
        for n in range(40):
            assert ole.openstream(f"storage/s{n:02}").read() == bytes([n]) * (n * 37)
    finally:
        ole.close()


def test_a_compound_file_that_needs_difat_sectors_reads_back() -> None:
    big = bytes(range(256)) * (8 * 4096)  # 8 MiB: more than the header's 109 FAT sectors can map
    ole = olefile.OleFileIO(cfb.write_cfb({"big": big, "small": b"s"}))
    try:
        assert ole.openstream("big").read() == big
        assert ole.openstream("small").read() == b"s"
    finally:
        ole.close()


# --- random property bags of every type ----------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_random_property_bags_of_every_type_survive_msg_export_and_import_unchanged(md: MessageData) -> None:
    again = msg.read_msg(msg.write_msg(md))
    assert strip(again) == strip(md)


def test_a_message_with_one_property_of_every_type_survives_the_store_and_msg_export(session: Session) -> None:
    sample = {
        T.PT_SHORT: -2,
        T.PT_LONG: -1,
        PT_FLOAT: 1.5,
        T.PT_DOUBLE: 2.25,
        PT_CURRENCY: 12_3400,
        PT_APPTIME: 45000.5,
        T.PT_ERROR: 0x8004010F,
        T.PT_BOOLEAN: True,
        T.PT_I8: 2**40,
        T.PT_STRING8: "café",
        T.PT_UNICODE: "Grüße ✓",
        T.PT_SYSTIME: datetime(2024, 2, 29, 12, 0, 0, 123456, tzinfo=UTC),
        T.PT_CLSID: bytes(range(16)),
        T.PT_BINARY: b"\0\1\2",
    }
    props: dict[int, Any] = {T.prop_tag(kind, 0x6100 + n): v for n, (kind, v) in enumerate(sample.items())}
    for n, kind in enumerate(MULTI):
        value = sample[kind]
        props[T.prop_tag(T.MV_FLAG | kind, 0x6200 + n)] = [value, value]
    data = msg.write_msg(MessageData(props={T.PR_SUBJECT: "every type", **props}))
    path = session.profile.directory / "every.msg"
    path.write_bytes(data)
    (result,) = list(session.import_files([path]))
    assert result.message_id is not None
    stored = session.open_message(result.message_id)
    assert {k: v for k, v in stored.props.items() if k in props} == props
    again = msg.read_msg(session.export_msg(result.message_id))
    assert {k: v for k, v in again.props.items() if k in props} == props


def test_the_property_stream_header_of_a_top_level_message_counts_its_recipients_and_attachments() -> None:
    md = MessageData(
        props={T.PR_SUBJECT: "x"}, recipients=[Recipient(), Recipient()], attachments=[Attachment(data=b"a")]
    )
    ole = olefile.OleFileIO(msg.write_msg(md))
    try:
        head = ole.openstream("__properties_version1.0").read()[:32]
    finally:
        ole.close()
    assert struct.unpack_from("<8xIIII8x", head) == (2, 1, 2, 1)


def test_the_named_property_streams_of_a_sample_are_written_back_byte_for_byte() -> None:
    """The GUID, entry and string streams and the name-to-ID mapping streams Outlook looks names up in."""
    written = olefile.OleFileIO(msg.write_msg(msg.read_msg((DATA / "strangeDate.msg").read_bytes())))
    original = olefile.OleFileIO(str(DATA / "strangeDate.msg"))
    try:
        names = sorted(e[1] for e in original.listdir() if e[0] == "__nameid_version1.0")
        assert sorted(e[1] for e in written.listdir() if e[0] == "__nameid_version1.0") == names
        for name in names:
            path = f"__nameid_version1.0/{name}"
            assert written.openstream(path).read() == original.openstream(path).read(), name
    finally:
        written.close()
        original.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(messages())
def test_random_property_bags_survive_import_into_the_store_and_export_again(
    session: Session, tmp_path: Path, md: MessageData
) -> None:
    path = tmp_path / "random.msg"
    path.write_bytes(msg.write_msg(md))
    (result,) = list(session.import_files([path]))
    if result.status is postroom.ImportStatus.SKIPPED:
        return  # the same bytes as an earlier example: already in this session's store
    assert result.message_id is not None, result.detail
    again = msg.read_msg(session.export_msg(result.message_id))
    assert_same(without_store_owned(again), without_store_owned(msg.read_msg(path.read_bytes())))


def assert_same(back: dict[str, Any], written: dict[str, Any]) -> None:
    """Every property written came back equal; what came back besides is only the Unicode twins
    import gives ANSI strings (`add_unicode_twins`)."""

    def same(ours: dict[int, Any], theirs: dict[int, Any]) -> None:
        for tag in set(ours) - set(theirs):
            twin = T.prop_tag(T.PT_STRING8, T.prop_id(tag))
            assert T.prop_type(tag) == T.PT_UNICODE and theirs.get(twin) == ours[tag], T.tag_name(tag)
        assert {k: ours.get(k) for k in theirs} == theirs

    same(back["props"], written["props"])
    assert len(back["recipients"]) == len(written["recipients"])
    for ours, theirs in zip(back["recipients"], written["recipients"], strict=True):
        same(ours, theirs)
    assert len(back["attachments"]) == len(written["attachments"])
    for (ours_props, ours_body), (their_props, their_body) in zip(
        back["attachments"], written["attachments"], strict=True
    ):
        same(ours_props, their_props)
        if isinstance(their_body, dict):
            assert_same(ours_body, their_body)
        else:
            assert ours_body == their_body


def without_store_owned(md: MessageData) -> dict[str, Any]:
    """A message as `strip` shows it, less what a store sets when it saves one (and the class it
    gives a message that has none)."""
    md.props.setdefault(T.PR_MESSAGE_CLASS, "IPM.Note")
    for att in md.attachments:
        att.props.pop(T.PR_ATTACH_SIZE, None)
        if att.embedded is not None:
            without_store_owned(att.embedded)
    stripped = strip(md)

    def clean(bag: dict[int, Any]) -> dict[int, Any]:
        return {k: v for k, v in bag.items() if k not in STORE_OWNED}

    def whole(view: dict[str, Any]) -> dict[str, Any]:
        return {
            "props": clean(view["props"]),
            "recipients": [clean(r) for r in view["recipients"]],
            "attachments": [(clean(a), whole(b) if isinstance(b, dict) else b) for a, b in view["attachments"]],
        }

    return whole(stripped)


def test_an_ole_attachment_keeps_its_object_storage_through_import_and_export() -> None:
    """PR_ATTACH_METHOD 6: the object lives in the storage __substg1.0_3701000D; postroom keeps it
    as a compound file of its own and writes it back as the storage it was."""
    obj = cfb.write_cfb({"\x01Ole": b"\x01\x00\x00\x02" + bytes(16), "CONTENTS": b"the object", "sub": {"x": b"y"}})
    att = Attachment(props={T.PR_ATTACH_METHOD: 6, T.PR_ATTACH_FILENAME: "chart"}, data=obj)
    written = msg.write_msg(MessageData(props={T.PR_SUBJECT: "ole"}, attachments=[att]))
    ole = olefile.OleFileIO(written)
    try:
        assert ole.openstream("__attach_version1.0_#00000000/__substg1.0_3701000D/CONTENTS").read() == b"the object"
        assert ole.openstream("__attach_version1.0_#00000000/__substg1.0_3701000D/sub/x").read() == b"y"
    finally:
        ole.close()
    (back,) = msg.read_msg(written).attachments
    inner = olefile.OleFileIO(back.read_all())
    try:
        assert inner.openstream("CONTENTS").read() == b"the object"
        assert inner.openstream("sub/x").read() == b"y"
    finally:
        inner.close()
