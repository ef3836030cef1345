"""Byte-exact checks of the MAPI vocabulary (spec §3, §11, §12).

Every expected value in this file is a literal written out from the spec or from public
material; nothing expected is computed with the code under test.

Where the one-off vectors come from
-----------------------------------
The layout is spec §12.3, which agrees with [MS-OXCDATA] §2.2.5.1 "One-Off EntryID Structure"
(https://learn.microsoft.com/en-us/openspecs/exchange_server_protocols/ms-oxcdata/b32d23af-85f6-4e92-8387-53a1950ae7ba)
and with MAPI's "One-Off Entry Identifiers" page (version and flags are 16-bit words in Intel
byte order, version 0; MAPI_ONE_OFF_UNICODE / MAPI_ONE_OFF_NO_RICH_INFO):

    00000000                            flags (long-term)
    812B1FA4BEA310199D6E00DD010F5402    MAPI_ONE_OFF_UID
    0000                                version 0, little-endian
    xxxx                                flags word, little-endian (8000 = 00 80, 8001 = 01 80)
    name NUL, addrtype NUL, address NUL (UTF-16LE + 00 00 when Unicode, 8-bit + 00 when ANSI)

The vectors for "Alice Example" etc. were written byte by byte from that layout (UTF-16LE of an
ASCII character is the character's byte followed by 00). Two real one-offs produced by other
software are checked as well, to tie the layout to the wild:

* grommunio/grommunio-web, test/js/unittest/EntryId.js, ``abEntryId4``: a Kopano/Zarafa-made
  Unicode one-off for "Andreas Rösler" <a.roesler@zarafaserver.de>, flags word ``01 80`` (0x8001).
* An Outlook ``Recipient.EntryID`` for test@thm.loc printed in a public CVE-2023-23397
  walk-through: the same ``...0F5402 0000 0180`` header, then UTF-16LE name/"SMTP"/address.

Both use the flag bytes ``01 80``, i.e. MAPI_ONE_OFF_UNICODE | MAPI_ONE_OFF_NO_RICH_INFO, which
is exactly what spec §12.3 predicts for a Unicode one-off created with MAPI_SEND_NO_RICH_INFO.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.mapi import (
    MAPI_ONE_OFF_UID,
    MAPIUID,
    AttachMethod,
    EndMessageFlags,
    FlushFlags,
    HResult,
    LogonFlags,
    LogonResultFlags,
    MAPIError,
    MessageFlags,
    NDRDiag,
    NDRReason,
    NotifyFlags,
    OneOff,
    RecipientType,
    ResourceFlags,
    ResourceMethods,
    ResourceType,
    StatusCode,
    SubmitFlags,
    decode_one_off,
    encode_one_off,
    is_one_off,
    make_entry_id,
    provider_uid_of,
    search_key,
)
from postroom.mapi import flags as F
from postroom.mapi import tags as T


def h(text: str) -> bytes:
    """Hex with any whitespace in it, to bytes."""
    return bytes.fromhex("".join(text.split()))


def corrupt(excinfo: pytest.ExceptionInfo[MAPIError]) -> bool:
    return excinfo.value.code == HResult.MAPI_E_CORRUPT_DATA


# --- one-off vectors (spec §12.3) -------------------------------------------------------

HEADER = "00000000 812B1FA4BEA310199D6E00DD010F5402 0000"

# Unicode, flags 0x8000: "Alice Example" / "SMTP" / "alice@example.test"
UNICODE_ALICE = h(
    HEADER
    + " 0080"
    + " 41006C0069006300650020004500780061006D0070006C0065000000"  # "Alice Example" NUL
    + " 53004D00540050000000"  # "SMTP" NUL
    + " 61006C0069006300650040006500780061006D0070006C0065002E0074006500730074000000"  # address NUL
)

# ANSI, flags 0x0000: the same three strings, one byte per character.
ANSI_ALICE = h(
    HEADER
    + " 0000"
    + " 416C696365204578616D706C6500"  # "Alice Example" NUL
    + " 534D545000"  # "SMTP" NUL
    + " 616C696365406578616D706C652E7465737400"  # "alice@example.test" NUL
)

# Unicode with MAPI_ONE_OFF_NO_RICH_INFO: flags 0x8001, on the wire 01 80.
UNICODE_ALICE_NO_RICH = h(
    HEADER
    + " 0180"
    + " 41006C0069006300650020004500780061006D0070006C0065000000"
    + " 53004D00540050000000"
    + " 61006C0069006300650040006500780061006D0070006C0065002E0074006500730074000000"
)

# Empty display name: the name is just its terminator.
UNICODE_EMPTY_NAME = h(
    HEADER
    + " 0080"
    + " 0000"  # "" NUL
    + " 53004D00540050000000"
    + " 61006C0069006300650040006500780061006D0070006C0065002E0074006500730074000000"
)

# Non-ASCII display name "Zoë Ñandú 李": ë=U+00EB, Ñ=U+00D1, ú=U+00FA, 李=U+674E.
UNICODE_NON_ASCII = h(
    HEADER
    + " 0080"
    + " 5A006F00EB002000 D10061006E006400FA002000 4E67 0000"
    + " 53004D00540050000000"
    + " 7A006F00650040006500780061006D0070006C0065002E0074006500730074000000"  # zoe@example.test
)

# Outside the BMP: "😀" (U+1F600) is the surrogate pair D83D DE00, little-endian 3D D8 00 DE.
UNICODE_SURROGATE_PAIR = h(HEADER + " 0080" + " 3DD800DE 0000" + " 53004D00540050000000" + " 6100400062000000")

# "AĀ": A=41 00, Ā=U+0100=00 01, so a 00 00 pair sits at an odd offset inside the name;
# the terminator search must only accept 00 00 on a UTF-16 code-unit boundary.
UNICODE_ODD_ZERO_PAIR = h(HEADER + " 0080" + " 410000010000" + " 53004D00540050000000" + " 6100400062000000")

# ANSI non-ASCII: "Zoë" in cp1252 is 5A 6F EB.
ANSI_NON_ASCII = h(HEADER + " 0000" + " 5A6FEB00" + " 534D545000" + " 7A6F65406578616D706C652E7465737400")

# Real one-off from grommunio/grommunio-web test/js/unittest/EntryId.js (abEntryId4), verbatim.
GROMMUNIO_ROESLER = h(
    "00000000812B1FA4BEA310199D6E00DD010F54020000018041006E006400720065006100730020005200F60073006C00650072"
    "00000053004D0054005000000061002E0072006F00650073006C006500720040007A006100720061006600610073006500720076"
    "00650072002E00640065000000"
)

# Real one-off printed from Outlook's Recipient.EntryID (CVE-2023-23397 walk-through), verbatim.
OUTLOOK_THM = h(
    "00000000812B1FA4BEA310199D6E00DD010F54020000018074006500730074004000740068006D002E006C006F00630"
    "0000053004D0054005000000074006500730074004000740068006D002E006C006F0063000000"
)

ONE_OFF_CASES = [
    # (vector, display name, address type, address, unicode, no_rich_info, raw flag word)
    pytest.param(UNICODE_ALICE, "Alice Example", "SMTP", "alice@example.test", True, False, 0x8000, id="unicode"),
    pytest.param(ANSI_ALICE, "Alice Example", "SMTP", "alice@example.test", False, False, 0x0000, id="ansi"),
    pytest.param(
        UNICODE_ALICE_NO_RICH, "Alice Example", "SMTP", "alice@example.test", True, True, 0x8001, id="no-rich-info"
    ),
    pytest.param(UNICODE_EMPTY_NAME, "", "SMTP", "alice@example.test", True, False, 0x8000, id="empty-name"),
    pytest.param(UNICODE_NON_ASCII, "Zoë Ñandú 李", "SMTP", "zoe@example.test", True, False, 0x8000, id="non-ascii"),
    pytest.param(UNICODE_SURROGATE_PAIR, "😀", "SMTP", "a@b", True, False, 0x8000, id="surrogate-pair"),
    pytest.param(UNICODE_ODD_ZERO_PAIR, "AĀ", "SMTP", "a@b", True, False, 0x8000, id="odd-zero-pair"),
    pytest.param(ANSI_NON_ASCII, "Zoë", "SMTP", "zoe@example.test", False, False, 0x0000, id="ansi-non-ascii"),
    pytest.param(
        GROMMUNIO_ROESLER,
        "Andreas Rösler",
        "SMTP",
        "a.roesler@zarafaserver.de",
        True,
        True,
        0x8001,
        id="real-grommunio",
    ),
    pytest.param(OUTLOOK_THM, "test@thm.loc", "SMTP", "test@thm.loc", True, True, 0x8001, id="real-outlook"),
]


@pytest.mark.parametrize(("vector", "name", "adrtype", "address", "unicode", "no_rich", "flags"), ONE_OFF_CASES)
def test_encode_one_off_matches_vector(
    vector: bytes, name: str, adrtype: str, address: str, unicode: bool, no_rich: bool, flags: int
) -> None:
    assert encode_one_off(name, adrtype, address, unicode=unicode, no_rich_info=no_rich) == vector


@pytest.mark.parametrize(("vector", "name", "adrtype", "address", "unicode", "no_rich", "flags"), ONE_OFF_CASES)
def test_decode_one_off_gives_fields_back(
    vector: bytes, name: str, adrtype: str, address: str, unicode: bool, no_rich: bool, flags: int
) -> None:
    assert is_one_off(vector)
    assert decode_one_off(vector) == OneOff(
        display_name=name,
        address_type=adrtype,
        email_address=address,
        unicode=unicode,
        no_rich_info=no_rich,
        flags=flags,
    )


@pytest.mark.parametrize(("vector", "name", "adrtype", "address", "unicode", "no_rich", "flags"), ONE_OFF_CASES)
def test_encode_of_decode_is_identity(
    vector: bytes, name: str, adrtype: str, address: str, unicode: bool, no_rich: bool, flags: int
) -> None:
    d = decode_one_off(vector)
    again = encode_one_off(
        d.display_name,
        d.address_type,
        d.email_address,
        unicode=d.unicode,
        no_rich_info=d.no_rich_info,
        extra_flags=d.flags,
    )
    assert again == vector


def test_one_off_header_bytes() -> None:
    """The fixed 24-byte header, field by field (spec §12.3 offsets)."""
    assert UNICODE_ALICE[0:4] == b"\x00\x00\x00\x00"
    assert UNICODE_ALICE[4:20] == h("81 2B 1F A4 BE A3 10 19 9D 6E 00 DD 01 0F 54 02")
    assert UNICODE_ALICE[20:22] == b"\x00\x00"
    assert UNICODE_ALICE[22:24] == b"\x00\x80"
    assert UNICODE_ALICE_NO_RICH[22:24] == b"\x01\x80"
    assert ANSI_ALICE[22:24] == b"\x00\x00"
    # The code under test produces the same headers.
    assert encode_one_off("", "", "")[:24] == h(HEADER + "0080")
    assert encode_one_off("", "", "", unicode=False)[:24] == h(HEADER + "0000")


def test_extra_flag_bits_are_kept() -> None:
    """OOP_DONT_LOOKUP (0x1000) as Evolution/EWS samples write it: flag word 0x9001 = bytes 01 90."""
    vector = h(HEADER + " 0190" + " 410000005300000061000000")  # "A" / "S" / "a"
    assert encode_one_off("A", "S", "a", no_rich_info=True, extra_flags=0x1000) == vector
    d = decode_one_off(vector)
    assert (d.display_name, d.address_type, d.email_address) == ("A", "S", "a")
    assert d.unicode and d.no_rich_info
    assert d.flags == 0x9001


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\udc80"])
def test_encode_rejects_lone_surrogate(text: str) -> None:
    """A str with a lone surrogate (e.g. from surrogateescape) has no UTF-16 form: a MAPI error, not a codec one."""
    with pytest.raises(MAPIError) as exc:
        encode_one_off(text, "SMTP", "x@y")
    assert exc.value.code == HResult.MAPI_E_INVALID_PARAMETER


def test_encode_rejects_nul_inside_a_field() -> None:
    for args in (("a\0b", "SMTP", "x@y"), ("a", "SM\0TP", "x@y"), ("a", "SMTP", "x\0@y")):
        with pytest.raises(MAPIError) as exc:
            encode_one_off(*args)
        assert exc.value.code == HResult.MAPI_E_INVALID_PARAMETER


# --- malformed one-offs ---------------------------------------------------------------


@pytest.mark.parametrize("vector", [UNICODE_ALICE, ANSI_ALICE], ids=["unicode", "ansi"])
def test_every_truncation_is_corrupt(vector: bytes) -> None:
    for length in range(len(vector)):
        with pytest.raises(MAPIError) as exc:
            decode_one_off(vector[:length])
        assert corrupt(exc), length


MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(h(HEADER + "00"), id="header-cut-in-flags"),
    # Unicode flag, then an odd number of bytes and no 00 00 terminator at all.
    pytest.param(h(HEADER + "0080" + "410042"), id="odd-utf16-no-terminator"),
    # Last field ends in a single 00 after its last code unit: 00 00 only at an odd offset.
    pytest.param(h(HEADER + "0080" + "41000000" + "53000000" + "610000"), id="odd-utf16-half-terminator"),
    # Only two of the three strings.
    pytest.param(h(HEADER + "0080" + "41000000" + "53000000"), id="missing-address"),
    pytest.param(h(HEADER + "0000" + "4100" + "5300"), id="ansi-missing-address"),
    # Trailing bytes after the address.
    pytest.param(UNICODE_ALICE + b"\x00\x00", id="trailing-nul-pair"),
    pytest.param(UNICODE_ALICE + b"X", id="trailing-byte"),
    pytest.param(ANSI_ALICE + b"\x00", id="ansi-trailing-nul"),
    # A lone high surrogate (D800) is not UTF-16.
    pytest.param(h(HEADER + "0080" + "00D80000" + "53000000" + "61000000"), id="lone-surrogate"),
    # Wrong provider UID (last byte 02 -> 03) and an all-zero UID.
    pytest.param(h("00000000 812B1FA4BEA310199D6E00DD010F5403 0000 0080 410000005300000061000000"), id="wrong-uid"),
    pytest.param(h("00000000 00000000000000000000000000000000 0000 0080 410000005300000061000000"), id="zero-uid"),
    # Version 1 (01 00) and version 0x0100 (00 01).
    pytest.param(h(HEADER[:-4] + "0100 0080 410000005300000061000000"), id="version-1"),
    pytest.param(h(HEADER[:-4] + "0001 0080 410000005300000061000000"), id="version-256"),
]


@pytest.mark.parametrize("vector", MALFORMED)
def test_malformed_one_off_is_corrupt_data(vector: bytes) -> None:
    with pytest.raises(MAPIError) as exc:
        decode_one_off(vector)
    assert corrupt(exc)
    assert "MAPI_E_CORRUPT_DATA" in str(exc.value)


def test_is_one_off() -> None:
    assert is_one_off(UNICODE_ALICE)
    assert not is_one_off(UNICODE_ALICE[:23])
    assert not is_one_off(h("00000000 DCA740C8C042101AB4B908002B2FE182 01000000 00"))


# --- MAPIUID (spec §12.1) -----------------------------------------------------------------

ONE_OFF_UID_BYTES = h("81 2B 1F A4 BE A3 10 19 9D 6E 00 DD 01 0F 54 02")


def test_mapiuid_from_guid_is_little_endian() -> None:
    uid = MAPIUID.from_guid("{A41F2B81-A3BE-1910-9D6E-00DD010F5402}")
    assert bytes(uid) == ONE_OFF_UID_BYTES
    assert MAPIUID.from_guid("a41f2b81-a3be-1910-9d6e-00dd010f5402") == ONE_OFF_UID_BYTES
    assert MAPIUID.from_guid(uuid.UUID("A41F2B81-A3BE-1910-9D6E-00DD010F5402")) == ONE_OFF_UID_BYTES
    assert bytes(MAPI_ONE_OFF_UID) == ONE_OFF_UID_BYTES


def test_mapiuid_str_round_trip() -> None:
    uid = MAPIUID(ONE_OFF_UID_BYTES)
    assert str(uid) == "{A41F2B81-A3BE-1910-9D6E-00DD010F5402}"
    assert MAPIUID.from_guid(str(uid)) == uid
    assert uid.guid == uuid.UUID("A41F2B81-A3BE-1910-9D6E-00DD010F5402")
    assert MAPIUID.from_hex("812B1FA4BEA310199D6E00DD010F5402") == uid
    assert "A41F2B81-A3BE-1910-9D6E-00DD010F5402" in repr(uid)


def test_mapiuid_new_is_16_random_bytes() -> None:
    a, b = MAPIUID.new(), MAPIUID.new()
    assert len(a) == 16 and len(b) == 16
    assert a != b


@pytest.mark.parametrize("raw", [b"", b"\x00" * 15, b"\x00" * 17, b"\x01" * 32])
def test_mapiuid_wrong_length(raw: bytes) -> None:
    with pytest.raises(MAPIError) as exc:
        MAPIUID(raw)
    assert exc.value.code == HResult.MAPI_E_INVALID_PARAMETER


@pytest.mark.parametrize("text", ["{not-a-guid}", "", "A41F2B81-A3BE-1910-9D6E"])
def test_mapiuid_from_bad_guid(text: str) -> None:
    with pytest.raises(MAPIError) as exc:
        MAPIUID.from_guid(text)
    assert exc.value.code == HResult.MAPI_E_INVALID_PARAMETER


@pytest.mark.parametrize("text", ["812B1FA4", "not hex at all", "812B1FA4BEA310199D6E00DD010F54020000"])
def test_mapiuid_from_bad_hex(text: str) -> None:
    with pytest.raises(MAPIError) as exc:
        MAPIUID.from_hex(text)
    assert exc.value.code == HResult.MAPI_E_INVALID_PARAMETER


# --- entry IDs (spec §12.2) ---------------------------------------------------------------

PROVIDER = h("00112233445566778899AABBCCDDEEFF")


def test_provider_uid_of_is_bytes_4_to_19() -> None:
    eid = h("00000000 00112233445566778899AABBCCDDEEFF 0102030405")
    assert provider_uid_of(eid) == PROVIDER
    assert isinstance(provider_uid_of(eid), MAPIUID)
    assert provider_uid_of(UNICODE_ALICE) == ONE_OFF_UID_BYTES
    # Exactly 20 bytes is long enough; 19 and fewer are not.
    assert provider_uid_of(eid[:20]) == PROVIDER
    assert provider_uid_of(eid[:19]) is None
    assert provider_uid_of(b"") is None
    assert provider_uid_of(b"\x00\x00\x00\x00") is None


def test_provider_uid_of_shares_one_uid_object_per_uid_and_keeps_a_bounded_number(monkeypatch: Any) -> None:
    from postroom.mapi import entryid

    eid = h("00000000 00112233445566778899AABBCCDDEEFF 0102030405")
    other_recipient = h("00000000 00112233445566778899AABBCCDDEEFF 0A0B")
    assert provider_uid_of(eid) is provider_uid_of(other_recipient)
    # Any bytes-like entry ID still parses (a bytearray's slice cannot be shared).
    for spelled in (bytearray(eid), memoryview(eid)):
        uid = provider_uid_of(spelled)  # type: ignore[arg-type]
        assert uid == PROVIDER and isinstance(uid, MAPIUID)
    with pytest.raises(AttributeError):
        provider_uid_of(eid).note = "shared"  # type: ignore[union-attr]
    # A flood of distinct UIDs (garbage entry IDs) does not grow the table without bound.
    monkeypatch.setattr(entryid, "KNOWN_UIDS_KEPT", 16)
    for n in range(100):
        assert provider_uid_of(b"\0\0\0\0" + n.to_bytes(16, "little") + b"x") == n.to_bytes(16, "little")
    assert len(entryid._known_uids) <= 16


def test_make_entry_id_layout() -> None:
    uid = MAPIUID(PROVIDER)
    assert make_entry_id(uid, b"\xca\xfe") == h("00000000 00112233445566778899AABBCCDDEEFF CAFE")
    assert make_entry_id(uid, b"") == h("00000000 00112233445566778899AABBCCDDEEFF")
    # A short-term ID: MAPI_SHORTTERM (0x80) in abFlags[0].
    assert make_entry_id(uid, b"\x01", flags=b"\x80\x00\x00\x00") == h("80000000 00112233445566778899AABBCCDDEEFF 01")
    assert provider_uid_of(make_entry_id(uid, b"xyz")) == uid


@pytest.mark.parametrize("flags", [b"", b"\x00\x00\x00", b"\x00" * 5])
def test_make_entry_id_needs_four_flag_bytes(flags: bytes) -> None:
    with pytest.raises(MAPIError) as exc:
        make_entry_id(MAPIUID(PROVIDER), b"", flags=flags)
    assert exc.value.code == HResult.MAPI_E_INVALID_PARAMETER


def test_entry_id_flag_constants() -> None:
    from postroom.mapi import entryid as E

    assert (E.MAPI_SHORTTERM, E.MAPI_NOTRECIP, E.MAPI_THISSESSION, E.MAPI_NOW, E.MAPI_NOTRESERVED) == (
        0x80,
        0x40,
        0x20,
        0x10,
        0x08,
    )
    assert (E.MAPI_ONE_OFF_UNICODE, E.MAPI_ONE_OFF_NO_RICH_INFO, E.OOP_DONT_LOOKUP) == (0x8000, 0x0001, 0x1000)


# --- search keys (spec §12.4) -------------------------------------------------------------


def test_search_key_smtp_is_upper_cased() -> None:
    assert search_key("smtp", "Alice@Example.test") == b"SMTP:ALICE@EXAMPLE.TEST\x00"
    assert search_key("SMTP", "alice@example.test") == h("534D54503A414C494345404558414D504C452E5445535400")


def test_search_key_x400_keeps_case() -> None:
    assert search_key("x400", "c=US;a= ;p=Org;o=Site;s=Smith;") == b"X400:c=US;a= ;p=Org;o=Site;s=Smith;\x00"
    assert search_key("X400", "s=Smith") == b"X400:s=Smith\x00"


# --- property tags (spec §11) -------------------------------------------------------------

# (name, tag) written out from the spec §11 table.
SPEC_TAGS = [
    ("PR_MESSAGE_CLASS", 0x001A001F),
    ("PR_DEFERRED_DELIVERY_TIME", 0x000F0040),
    ("PR_DELIVER_TIME", 0x00100040),
    ("PR_ORIGINATOR_DELIVERY_REPORT_REQUESTED", 0x0023000B),
    ("PR_READ_RECEIPT_REQUESTED", 0x0029000B),
    ("PR_REPORT_TAG", 0x00310102),
    ("PR_REPORT_TIME", 0x00320040),
    ("PR_SUBJECT", 0x0037001F),
    ("PR_CLIENT_SUBMIT_TIME", 0x00390040),
    ("PR_REPORT_NAME", 0x003A001F),
    ("PR_SENT_REPRESENTING_SEARCH_KEY", 0x003B0102),
    ("PR_RECEIVED_BY_ENTRYID", 0x003F0102),
    ("PR_RECEIVED_BY_NAME", 0x0040001F),
    ("PR_SENT_REPRESENTING_ENTRYID", 0x00410102),
    ("PR_SENT_REPRESENTING_NAME", 0x0042001F),
    ("PR_REPORT_ENTRYID", 0x00450102),
    ("PR_READ_RECEIPT_ENTRYID", 0x00460102),
    ("PR_PROVIDER_SUBMIT_TIME", 0x00480040),
    ("PR_ORIGINAL_SUBJECT", 0x0049001F),
    ("PR_ORIG_MESSAGE_CLASS", 0x004B001F),
    ("PR_ORIGINAL_SUBMIT_TIME", 0x004E0040),
    ("PR_RECEIVED_BY_SEARCH_KEY", 0x00510102),
    ("PR_REPORT_SEARCH_KEY", 0x00540102),
    ("PR_SENT_REPRESENTING_ADDRTYPE", 0x0064001F),
    ("PR_SENT_REPRESENTING_EMAIL_ADDRESS", 0x0065001F),
    ("PR_ORIGINAL_DISPLAY_BCC", 0x0072001F),
    ("PR_ORIGINAL_DISPLAY_CC", 0x0073001F),
    ("PR_ORIGINAL_DISPLAY_TO", 0x0074001F),
    ("PR_RECEIVED_BY_ADDRTYPE", 0x0075001F),
    ("PR_RECEIVED_BY_EMAIL_ADDRESS", 0x0076001F),
    ("PR_TRANSPORT_MESSAGE_HEADERS", 0x007D001F),
    ("PR_BODY", 0x1000001F),
    ("PR_REPORT_TEXT", 0x1001001F),
    ("PR_ROWID", 0x30000003),
    ("PR_ADDRTYPE", 0x3002001F),
    ("PR_PROVIDER_DISPLAY", 0x3006001F),
    ("PR_PROVIDER_DLL_NAME", 0x300A001F),
    ("PR_PROVIDER_UID", 0x300C0102),
    ("PR_ATTACH_DATA_BIN", 0x37010102),
    ("PR_ATTACH_DATA_OBJ", 0x3701000D),
    ("PR_ATTACH_METHOD", 0x37050003),
    ("PR_RENDERING_POSITION", 0x370B0003),
    ("PR_DISPLAY_TYPE", 0x39000003),
    ("PR_SEND_RICH_INFO", 0x3A40000B),
    ("PR_IDENTITY_DISPLAY", 0x3E00001F),
    ("PR_IDENTITY_ENTRYID", 0x3E010102),
    ("PR_IDENTITY_SEARCH_KEY", 0x3E050102),
    ("PR_STATUS_CODE", 0x3E040003),
    ("PR_STATUS_STRING", 0x3E08001F),
    ("PR_DEFERRED_SEND_TIME", 0x3FEF0040),
    ("PR_NDR_REASON_CODE", 0x0C040003),
    ("PR_NDR_DIAG_CODE", 0x0C050003),
    ("PR_NDR_STATUS_CODE", 0x0C200003),
    ("PR_ORIGINATOR_NON_DELIVERY_REPORT_REQUESTED", 0x0C08000B),
    ("PR_RECIPIENT_TYPE", 0x0C150003),
    ("PR_SENDER_ENTRYID", 0x0C190102),
    ("PR_SENDER_NAME", 0x0C1A001F),
    ("PR_SENDER_SEARCH_KEY", 0x0C1D0102),
    ("PR_SENDER_ADDRTYPE", 0x0C1E001F),
    ("PR_SENDER_EMAIL_ADDRESS", 0x0C1F001F),
    ("PR_DELETE_AFTER_SUBMIT", 0x0E01000B),
    ("PR_DISPLAY_BCC", 0x0E02001F),
    ("PR_DISPLAY_CC", 0x0E03001F),
    ("PR_DISPLAY_TO", 0x0E04001F),
    ("PR_MESSAGE_DELIVERY_TIME", 0x0E060040),
    ("PR_MESSAGE_FLAGS", 0x0E070003),
    ("PR_MESSAGE_SIZE", 0x0E080003),
    ("PR_SENTMAIL_ENTRYID", 0x0E0A0102),
    ("PR_RESPONSIBILITY", 0x0E0F000B),
    ("PR_SPOOLER_STATUS", 0x0E100003),
    ("PR_TRANSPORT_STATUS", 0x0E110003),
    ("PR_MESSAGE_RECIPIENTS", 0x0E12000D),
    ("PR_MESSAGE_ATTACHMENTS", 0x0E13000D),
    ("PR_SUBMIT_FLAGS", 0x0E140003),
    ("PR_RECIPIENT_STATUS", 0x0E150003),
    ("PR_TRANSPORT_KEY", 0x0E160003),
    ("PR_HASATTACH", 0x0E1B000B),
    ("PR_ATTACH_SIZE", 0x0E200003),
    ("PR_ATTACH_NUM", 0x0E210003),
    ("PR_PREPROCESS", 0x0E22000B),
    ("PR_INSTANCE_KEY", 0x0FF60102),
    ("PR_RECORD_KEY", 0x0FF90102),
    ("PR_OBJECT_TYPE", 0x0FFE0003),
    ("PR_ENTRYID", 0x0FFF0102),
    ("PR_INTERNET_MESSAGE_ID", 0x1035001F),
    ("PR_DISPLAY_NAME", 0x3001001F),
    ("PR_EMAIL_ADDRESS", 0x3003001F),
    ("PR_RESOURCE_FLAGS", 0x30090003),
    ("PR_SEARCH_KEY", 0x300B0102),
    ("PR_IPM_SUBTREE_ENTRYID", 0x35E00102),
    ("PR_IPM_OUTBOX_ENTRYID", 0x35E20102),
    ("PR_IPM_WASTEBASKET_ENTRYID", 0x35E30102),
    ("PR_IPM_SENTMAIL_ENTRYID", 0x35E40102),
    ("PR_ATTACH_EXTENSION", 0x3703001F),
    ("PR_ATTACH_FILENAME", 0x3704001F),
    ("PR_ATTACH_LONG_FILENAME", 0x3707001F),
    ("PR_ATTACH_MIME_TAG", 0x370E001F),
    ("PR_ORIGINAL_ENTRYID", 0x3A120102),
    ("PR_TRANSPORT_PROVIDERS", 0x3D020102),
    ("PR_RESOURCE_METHODS", 0x3E020003),
    ("PR_RESOURCE_TYPE", 0x3E030003),
    ("PR_OWN_STORE_ENTRYID", 0x3E060102),
    ("PR_REMOTE_VALIDATE_OK", 0x3E0D000B),
    ("PR_NDR_FROM_ENTRYID", 0x69040102),
    ("PR_NDR_FROM_NAME", 0x6905001E),
    ("PR_NDR_FROM_SEARCH_KEY", 0x69060102),
]


@pytest.mark.parametrize(("name", "tag"), SPEC_TAGS, ids=[n for n, _ in SPEC_TAGS])
def test_property_tag_value(name: str, tag: int) -> None:
    assert getattr(T, name) == tag
    assert T.tag_name(tag) == name
    assert T.tag_by_name(name) == tag


def test_property_types() -> None:
    assert (T.PT_LONG, T.PT_BOOLEAN, T.PT_OBJECT, T.PT_STRING8, T.PT_UNICODE, T.PT_SYSTIME, T.PT_BINARY) == (
        0x0003,
        0x000B,
        0x000D,
        0x001E,
        0x001F,
        0x0040,
        0x0102,
    )
    assert T.PT_MV_BINARY == 0x1102
    assert T.PT_MV_UNICODE == 0x101F


def test_prop_id_type_tag() -> None:
    assert T.prop_id(0x0037001F) == 0x0037
    assert T.prop_type(0x0037001F) == 0x001F
    assert T.prop_tag(0x001F, 0x0037) == 0x0037001F
    assert T.prop_tag(0x000B, 0x0E0F) == 0x0E0F000B
    assert T.prop_id(0x3FEF0040) == 0x3FEF
    assert T.prop_type(0x3FEF0040) == 0x0040
    assert T.prop_tag(0x0102, 0xFFFF) == 0xFFFF0102


def test_tag_name() -> None:
    assert T.tag_name(0x0037001F) == "PR_SUBJECT"
    assert T.tag_name(0x0037001E) == "PR_SUBJECT_A"
    assert T.tag_name(0x3001001E) == "PR_DISPLAY_NAME_A"
    assert T.tag_name(0x12340003) == "0x12340003"
    assert T.tag_name(0x1234001E) == "0x1234001E"


def test_tag_by_name() -> None:
    assert T.tag_by_name("PR_SUBJECT") == 0x0037001F
    assert T.tag_by_name("pr_subject") == 0x0037001F
    assert T.tag_by_name(" PR_RESPONSIBILITY ") == 0x0E0F000B
    assert T.tag_by_name("0x0037001F") == 0x0037001F
    assert T.tag_by_name("0x12340003") == 0x12340003
    with pytest.raises(KeyError):
        T.tag_by_name("PR_NO_SUCH_PROPERTY")


@pytest.mark.parametrize("text", ["0xnothex", "0x", "0x123456789", "PR_NO_SUCH_PROPERTY_A"])
def test_tag_by_name_raises_key_error_as_documented(text: str) -> None:
    with pytest.raises(KeyError):
        T.tag_by_name(text)


@pytest.mark.parametrize("tag", [0x0037001F, 0x0037001E, 0x3001001E, 0x6905001E, 0x12340003, 0x1234001E])
def test_tag_by_name_reads_back_what_tag_name_prints(tag: int) -> None:
    """`postroom show --props` prints tag_name(); typing that back must give the same tag."""
    assert T.tag_by_name(T.tag_name(tag)) == tag


def test_ansi_twin_by_name() -> None:
    assert T.tag_by_name("PR_SUBJECT_A") == 0x0037001E
    assert T.tag_by_name("pr_display_name_a") == 0x3001001E


def test_non_transmittable_set() -> None:
    # spec §11: never to leave the client side.
    for tag in (0x0E0F000B, 0x0E140003, 0x0E01000B, 0x0E0A0102, 0x0E22000B, 0x0E100003):
        assert tag in T.NON_TRANSMITTABLE
    assert 0x0037001F not in T.NON_TRANSMITTABLE


# --- codes (spec §3.2) --------------------------------------------------------------------

SPEC_HRESULTS = [
    ("MAPI_E_CALL_FAILED", 0x80004005),
    ("MAPI_E_NO_SUPPORT", 0x80040102),
    ("MAPI_E_BAD_CHARWIDTH", 0x80040103),
    ("MAPI_E_UNKNOWN_FLAGS", 0x80040106),
    ("MAPI_E_OBJECT_DELETED", 0x8004010A),
    ("MAPI_E_BUSY", 0x8004010B),
    ("MAPI_E_NOT_FOUND", 0x8004010F),
    ("MAPI_E_VERSION", 0x80040110),
    ("MAPI_E_LOGON_FAILED", 0x80040111),
    ("MAPI_E_USER_CANCEL", 0x80040113),
    ("MAPI_E_UNABLE_TO_ABORT", 0x80040114),
    ("MAPI_E_NETWORK_ERROR", 0x80040115),
    ("MAPI_E_NO_ACCESS", 0x80070005),
    ("MAPI_E_WAIT", 0x80040500),
    ("MAPI_E_CANCEL", 0x80040501),
    ("MAPI_E_NOT_ME", 0x80040502),
    ("MAPI_W_CANCEL_MESSAGE", 0x00040580),
    ("MAPI_E_NOT_IN_QUEUE", 0x80040601),
    ("MAPI_E_NO_RECIPIENTS", 0x80040607),
    ("MAPI_E_SUBMITTED", 0x80040608),
    ("MAPI_E_CORRUPT_DATA", 0x8004011B),
    ("MAPI_E_UNCONFIGURED", 0x8004011C),
    ("MAPI_E_FAILONEPROVIDER", 0x8004011D),
    ("MAPI_E_UNKNOWN_CPID", 0x8004011E),
    ("MAPI_E_UNKNOWN_LCID", 0x8004011F),
    ("MAPI_W_ERRORS_RETURNED", 0x00040380),
    ("MAPI_E_INVALID_PARAMETER", 0x80070057),
]


@pytest.mark.parametrize(("name", "value"), SPEC_HRESULTS, ids=[n for n, _ in SPEC_HRESULTS])
def test_hresult_value(name: str, value: int) -> None:
    assert HResult[name] == value
    assert HResult(value).name == name


def test_mapi_error_carries_its_code() -> None:
    err = MAPIError(HResult.MAPI_E_NOT_FOUND, "no transport named 'fax'")
    assert "MAPI_E_NOT_FOUND" in str(err)
    assert "no transport named 'fax'" in str(err)
    assert err.code is HResult.MAPI_E_NOT_FOUND
    assert err.hresult == 0x8004010F
    bare = MAPIError(HResult.MAPI_E_BUSY)
    assert "MAPI_E_BUSY" in str(bare)
    assert bare.message == "MAPI_E_BUSY"
    assert isinstance(err, Exception)


# --- flags (spec §2.3, §2.4, §3.1, §3.3, §3.4) ----------------------------------------------


def test_logon_flags() -> None:
    assert LogonFlags.NO_DIALOG == 0x00000001
    assert LogonFlags.NO_CONNECT == 4
    assert LogonFlags.NO_INBOUND == 0x00000008
    assert LogonFlags.NO_OUTBOUND == 0x00000010
    assert LogonResultFlags.SP_IDLE == 0x00010000
    assert LogonResultFlags.SP_POLL == 0x00020000
    assert LogonResultFlags.SP_RESOLVE == 0x00040000
    assert F.LogoffFlags.NORMAL == 0x1
    assert F.LogoffFlags.HURRY == 0x80000000
    assert F.BEGIN_DEFERRED == 0x1
    assert F.CURRENT_SPI_VERSION == 0x00010010


def test_notify_flags() -> None:
    assert NotifyFlags.BEGIN_INBOUND == 0x00000001
    assert NotifyFlags.BEGIN_OUTBOUND == 0x00000002
    assert NotifyFlags.BEGIN_INBOUND_FLUSH == 0x00000004
    assert NotifyFlags.BEGIN_OUTBOUND_FLUSH == 0x00000008
    assert NotifyFlags.END_INBOUND == 0x00010000
    assert NotifyFlags.END_OUTBOUND == 0x00020000
    assert NotifyFlags.END_INBOUND_FLUSH == 0x00040000
    assert NotifyFlags.END_OUTBOUND_FLUSH == 0x00080000
    assert NotifyFlags.ABORT_DEFERRED == 0x40000000
    assert NotifyFlags.CANCEL_MESSAGE == 0x80000000
    sn = F.SpoolerNotifyFlags
    assert (sn.NEWMAIL, sn.READYTOSEND, sn.SENTDEFERRED) == (0x1, 0x2, 0x4)
    assert (sn.CRITSEC, sn.NONCRIT, sn.CONFIG_CHANGE) == (0x1000, 0x2000, 0x4000)
    assert (sn.CRITICAL_ERROR, sn.NEWMAIL_RECEIVED) == (0x10000000, 0x20000000)


def test_end_message_flags() -> None:
    assert EndMessageFlags.RESEND_NOW == 0x00010000
    assert EndMessageFlags.RESEND_LATER == 0x00020000
    assert EndMessageFlags.DONT_RESEND == 0x40000


def test_message_and_submit_flags() -> None:
    expected = {
        "READ": 0x1,
        "UNMODIFIED": 0x2,
        "SUBMIT": 4,
        "UNSENT": 0x8,
        "HASATTACH": 0x10,
        "FROMME": 0x20,
        "ASSOCIATED": 0x40,
        "RESEND": 0x80,
        "RN_PENDING": 0x100,
        "NRN_PENDING": 0x200,
        "ORIGIN_X400": 0x1000,
        "ORIGIN_INTERNET": 0x2000,
        "ORIGIN_MISC_EXT": 0x8000,
    }
    for name, value in expected.items():
        assert MessageFlags[name] == value, name
    assert SubmitFlags.LOCKED == 1
    assert SubmitFlags.PREPROCESS == 2


def test_recipient_type() -> None:
    assert (RecipientType.ORIG, RecipientType.TO, RecipientType.CC, RecipientType.BCC) == (0, 1, 2, 3)
    assert F.MAPI_P1 == 0x10000000
    assert F.MAPI_SUBMITTED == 0x80000000
    assert F.recipient_kind(0x80000001) is RecipientType.TO
    assert F.recipient_kind(0x10000003) is RecipientType.BCC
    assert F.recipient_kind(0x00000002) is RecipientType.CC
    assert F.recipient_kind(0x90000000) is RecipientType.ORIG


def test_status_and_resource_values() -> None:
    assert StatusCode.AVAILABLE == 0x00000001
    assert StatusCode.OFFLINE == 0x00000002
    assert StatusCode.FAILURE == 0x00000004
    assert StatusCode.INBOUND_ENABLED == 0x00010000
    assert StatusCode.INBOUND_ACTIVE == 0x00020000
    assert StatusCode.INBOUND_FLUSH == 0x00040000
    assert StatusCode.OUTBOUND_ENABLED == 0x00100000
    assert StatusCode.OUTBOUND_ACTIVE == 0x00200000
    assert StatusCode.OUTBOUND_FLUSH == 0x00400000
    assert StatusCode.REMOTE_ACCESS == 0x00800000
    assert (
        ResourceMethods.VALIDATE_STATE,
        ResourceMethods.SETTINGS_DIALOG,
        ResourceMethods.CHANGE_PASSWORD,
        ResourceMethods.FLUSH_QUEUES,
    ) == (0x1, 0x2, 0x4, 0x8)
    assert [int(t) for t in ResourceType] == [33, 34, 35, 36, 37, 38, 39, 40]
    assert ResourceType.TRANSPORT_PROVIDER == 36
    assert ResourceType.SPOOLER == 37
    assert ResourceFlags.DEFAULT_OUTBOUND == 0x1
    assert ResourceFlags.DEFAULT_STORE == 0x2
    assert ResourceFlags.PRIMARY_IDENTITY == 0x4
    assert ResourceFlags.SIMPLE_STORE == 0x8
    assert ResourceFlags.XP_PREFER_LAST == 0x10
    assert ResourceFlags.NO_PRIMARY_IDENTITY == 0x20


def test_flush_and_validate_flags() -> None:
    assert FlushFlags.UPLOAD == 2
    assert FlushFlags.DOWNLOAD == 0x4
    assert FlushFlags.FORCE == 0x8
    assert FlushFlags.NO_UI == 0x10
    assert FlushFlags.ASYNC_OK == 0x20
    v = F.ValidateFlags
    assert v.SUPPRESS_UI == 0x1
    assert v.REFRESH_XP_HEADER_CACHE == 0x10000
    assert v.PROCESS_XP_HEADER_CACHE == 0x20000
    assert v.FORCE_XP_CONNECT == 0x40000
    assert v.FORCE_XP_DISCONNECT == 0x80000
    assert v.CONFIG_CHANGED == 0x100000
    assert v.ABORT_XP_HEADER_OPERATION == 0x200000
    assert v.SHOW_XP_SESSION_UI == 0x400000


def test_attach_method() -> None:
    assert AttachMethod.BY_VALUE == 1
    assert AttachMethod.EMBEDDED_MSG == 5
    assert AttachMethod.OLE == 6


def test_ndr_reason() -> None:
    expected = [
        "TRANSFER_FAILED",
        "TRANSFER_IMPOSSIBLE",
        "CONVERSION_NOT_PERFORMED",
        "PHYSICAL_RENDITN_NOT_DONE",
        "PHYSICAL_DELIV_NOT_DONE",
        "RESTRICTED_DELIVERY",
        "DIRECTORY_OPERATN_FAILED",
    ]
    assert [(r.name, int(r)) for r in NDRReason] == [(n, i) for i, n in enumerate(expected)]


# The whole MAPI_DIAG_* list from spec §7, in order from -1.
SPEC_NDR_DIAG = [
    "NO_DIAGNOSTIC",
    "OR_NAME_UNRECOGNIZED",
    "OR_NAME_AMBIGUOUS",
    "MTS_CONGESTED",
    "LOOP_DETECTED",
    "RECIPIENT_UNAVAILABLE",
    "MAXIMUM_TIME_EXPIRED",
    "EITS_UNSUPPORTED",
    "CONTENT_TOO_LONG",
    "IMPRACTICAL_TO_CONVERT",
    "PROHIBITED_TO_CONVERT",
    "CONVERSION_UNSUBSCRIBED",
    "PARAMETERS_INVALID",
    "CONTENT_SYNTAX_IN_ERROR",
    "LENGTH_CONSTRAINT_VIOLATD",
    "NUMBER_CONSTRAINT_VIOLATD",
    "CONTENT_TYPE_UNSUPPORTED",
    "TOO_MANY_RECIPIENTS",
    "NO_BILATERAL_AGREEMENT",
    "CRITICAL_FUNC_UNSUPPORTED",
    "CONVERSION_LOSS_PROHIB",
    "LINE_TOO_LONG",
    "PAGE_TOO_LONG",
    "PICTORIAL_SYMBOL_LOST",
    "PUNCTUATION_SYMBOL_LOST",
    "ALPHABETIC_CHARACTER_LOST",
    "MULTIPLE_INFO_LOSSES",
    "REASSIGNMENT_PROHIBITED",
    "REDIRECTION_LOOP_DETECTED",
    "EXPANSION_PROHIBITED",
    "SUBMISSION_PROHIBITED",
    "EXPANSION_FAILED",
    "RENDITION_UNSUPPORTED",
    "MAIL_ADDRESS_INCORRECT",
    "MAIL_OFFICE_INCOR_OR_INVD",
    "MAIL_ADDRESS_INCOMPLETE",
    "MAIL_RECIPIENT_UNKNOWN",
    "MAIL_RECIPIENT_DECEASED",
    "MAIL_ORGANIZATION_EXPIRED",
    "MAIL_REFUSED",
    "MAIL_UNCLAIMED",
    "MAIL_RECIPIENT_MOVED",
    "MAIL_RECIPIENT_TRAVELLING",
    "MAIL_RECIPIENT_DEPARTED",
    "MAIL_NEW_ADDRESS_UNKNOWN",
    "MAIL_FORWARDING_UNWANTED",
    "MAIL_FORWARDING_PROHIB",
    "SECURE_MESSAGING_ERROR",
    "DOWNGRADING_IMPOSSIBLE",
]


def test_ndr_diag() -> None:
    assert NDRDiag.MAIL_RECIPIENT_UNKNOWN == 35
    assert NDRDiag.MAXIMUM_TIME_EXPIRED == 5
    assert NDRDiag.NO_DIAGNOSTIC == -1
    assert NDRDiag.DOWNGRADING_IMPOSSIBLE == 47
    assert [(d.name, int(d)) for d in NDRDiag] == [(n, i - 1) for i, n in enumerate(SPEC_NDR_DIAG)]


# --- property: decode(encode(x)) == x -----------------------------------------------------

# Lone surrogates (category Cs) are not text and have no UTF-16 form; they are tested above.
no_nul_text = st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=40)
cp1252_text = st.text(st.characters(codec="cp1252", exclude_characters="\0"), max_size=40)


@given(name=no_nul_text, adrtype=no_nul_text, address=no_nul_text, no_rich=st.booleans())
def test_unicode_one_off_round_trip(name: str, adrtype: str, address: str, no_rich: bool) -> None:
    encoded = encode_one_off(name, adrtype, address, no_rich_info=no_rich)
    decoded = decode_one_off(encoded)
    assert (decoded.display_name, decoded.address_type, decoded.email_address) == (name, adrtype, address)
    assert decoded.unicode is True
    assert decoded.no_rich_info is no_rich
    assert provider_uid_of(encoded) == MAPI_ONE_OFF_UID


@given(name=cp1252_text, adrtype=cp1252_text, address=cp1252_text, no_rich=st.booleans())
def test_ansi_one_off_round_trip(name: str, adrtype: str, address: str, no_rich: bool) -> None:
    encoded = encode_one_off(name, adrtype, address, unicode=False, no_rich_info=no_rich)
    decoded = decode_one_off(encoded)
    assert (decoded.display_name, decoded.address_type, decoded.email_address) == (name, adrtype, address)
    assert decoded.unicode is False
    assert decoded.no_rich_info is no_rich
