"""Compressed RTF (MS-OXRTFCP) and HTML encapsulated in RTF (MS-OXRTFEX), postroom's own code,
checked against an independent implementation (the compressed_rtf package, a test dependency
that comes with extract-msg) and against the real samples."""

from __future__ import annotations

import struct
from pathlib import Path

import compressed_rtf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom import HResult, MAPIError
from postroom.formats import mapiprops, msg, rtf

DATA = Path(__file__).parents[1] / "data" / "msg"
rtf_like = st.lists(
    st.sampled_from([b"{\\rtf1\\ansi ", b"\\par ", b"\\pard\\plain", b"hello ", b"world", b"}", b"{", b"\\'e9", b"x"]),
    max_size=200,
).map(b"".join) | st.binary(max_size=3000)


@settings(max_examples=150, deadline=None)
@given(rtf_like)
def test_whatever_an_independent_compressor_packs_is_unpacked_to_the_same_bytes(data: bytes) -> None:
    assert rtf.decompress(compressed_rtf.compress(data, compressed=True)) == data


@settings(max_examples=50, deadline=None)
@given(rtf_like)
def test_the_stored_form_postroom_writes_is_read_by_an_independent_reader(data: bytes) -> None:
    packed = rtf.compress(data)
    assert compressed_rtf.decompress(packed) == data
    assert rtf.decompress(packed) == data


def test_the_crc_of_a_samples_compressed_rtf_is_the_one_its_header_carries() -> None:
    packed = msg.read_msg((DATA / "strangeDate.msg").read_bytes()).props[mapiprops.PR_RTF_COMPRESSED]
    assert struct.unpack_from("<I", packed, 12)[0] == rtf.crc32(packed[16:])
    assert rtf.decompress(packed) == compressed_rtf.decompress(packed)
    assert rtf.is_html_wrapper(rtf.decompress(packed))


def test_a_value_that_is_not_compressed_rtf_is_corrupt_data() -> None:
    with pytest.raises(MAPIError) as caught:
        rtf.decompress(b"short")
    assert caught.value.code is HResult.MAPI_E_CORRUPT_DATA
    with pytest.raises(MAPIError, match="unknown compression type"):
        rtf.decompress(struct.pack("<IIII", 12, 0, 0x12345678, 0))


def test_html_is_taken_from_htmltag_groups_and_from_text_outside_htmlrtf_runs() -> None:
    wrapped = (
        b"{\\rtf1\\ansi\\ansicpg1252\\fromhtml1 \\deff0{\\fonttbl{\\f0\\fswiss Arial;}}"
        b"{\\*\\htmltag19 <html>}{\\*\\htmltag34 <body>}\\htmlrtf {\\htmlrtf0 caf\\'e9 \\{x\\}"
        b"\\htmlrtf }\\htmlrtf0 {\\*\\htmltag84 &nbsp;}\\htmlrtf \\par\\htmlrtf0 \\u8364?"
        b"{\\*\\htmltag64 </body>}{\\*\\htmltag27 </html>}}"
    )
    assert rtf.html_from_rtf(wrapped).decode() == "<html><body>café {x}&nbsp;€</body></html>"


def test_rtf_that_wraps_no_html_is_not_taken_for_html() -> None:
    assert not rtf.is_html_wrapper(b"{\\rtf1\\ansi\\ansicpg1252\\fromtext \\deff0 hello}")


def test_the_crc_is_the_table_driven_one_of_the_spec() -> None:
    def by_the_table(data: bytes) -> int:  # MS-OXRTFCP §3.1.3.2, byte by byte
        crc = 0
        for byte in data:
            c = (crc ^ byte) & 0xFF
            for _ in range(8):
                c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
            crc = c ^ (crc >> 8)
        return crc

    for data in (b"", b"\x00", b"{\\rtf1 hello}", bytes(range(256)) * 3):
        assert rtf.crc32(data) == by_the_table(data)
