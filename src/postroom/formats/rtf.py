"""Compressed RTF (MS-OXRTFCP) and HTML encapsulated in RTF (MS-OXRTFEX), postroom's own code.

Outlook keeps the body of many messages only as PR_RTF_COMPRESSED: RTF run through a small
LZ77 variant whose dictionary starts with a fixed RTF prologue. `decompress` undoes it (both
the compressed `LZFu` and the stored `MELA` forms). When Outlook received HTML, the RTF is a
wrapper (`\\fromhtml1`): the HTML is in `{\\*\\htmltag…}` groups and in the text outside
`\\htmlrtf … \\htmlrtf0` runs; `html_from_rtf` takes it back out. `compress` writes the
stored (`MELA`) form, which every reader accepts, so an exported message carries its RTF.
"""

from __future__ import annotations

import re
import struct
import zlib

from ..mapi.codes import HResult, MAPIError

__all__ = ["compress", "crc32", "decompress", "html_from_rtf", "is_html_wrapper"]

#: The dictionary's initial contents (MS-OXRTFCP §2.1.3.1.1): 207 bytes of a common RTF prologue.
PROLOGUE = (
    b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss \\fmodern \\fscript "
    b"\\fdecor MS Sans SerifSymbolArialTimes New RomanCourier{\\colortbl\\red0\\green0\\blue0\r\n\\par "
    b"\\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx"
)
COMPRESSED = 0x75465A4C  # "LZFu"
UNCOMPRESSED = 0x414C454D  # "MELA"
_HEADER = struct.Struct("<IIII")


def crc32(data: bytes) -> int:
    """The CRC of MS-OXRTFCP §2.1.3.2: the CRC-32 table, started at 0 and not inverted, which is
    zlib's CRC-32 with its inversions undone (zlib starts from the inverse of its argument)."""
    return zlib.crc32(data, 0xFFFFFFFF) ^ 0xFFFFFFFF


def _bad(why: str) -> MAPIError:
    return MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"compressed RTF: {why}")


def decompress(data: bytes) -> bytes:
    """The RTF in a PR_RTF_COMPRESSED value; MAPI_E_CORRUPT_DATA when it is not one."""
    if len(data) < _HEADER.size:
        raise _bad("shorter than its 16-byte header")
    comp_size, raw_size, comp_type, _crc = _HEADER.unpack_from(data)
    body = data[_HEADER.size : 4 + comp_size] if comp_size >= 12 else b""
    if comp_type == UNCOMPRESSED:
        return bytes(body[:raw_size])
    if comp_type != COMPRESSED:
        raise _bad(f"unknown compression type 0x{comp_type:08X}")
    window = bytearray(4096)
    window[: len(PROLOGUE)] = PROLOGUE
    write = len(PROLOGUE)
    out = bytearray()
    pos, end = 0, len(body)
    while pos < end:
        control = body[pos]
        pos += 1
        for bit in range(8):
            if pos >= end:
                break
            if control & (1 << bit):
                if pos + 1 >= end:
                    raise _bad("a dictionary reference is cut short")
                ref = (body[pos] << 8) | body[pos + 1]
                pos += 2
                offset, length = ref >> 4, (ref & 0xF) + 2
                if offset == write:
                    return bytes(out)  # the end marker
                for _ in range(length):
                    byte = window[offset]
                    out.append(byte)
                    window[write] = byte
                    write = (write + 1) & 0xFFF
                    offset = (offset + 1) & 0xFFF
            else:
                byte = body[pos]
                pos += 1
                out.append(byte)
                window[write] = byte
                write = (write + 1) & 0xFFF
    return bytes(out)


def compress(rtf: bytes) -> bytes:
    """`rtf` as a PR_RTF_COMPRESSED value in the stored (`MELA`) form (CRC 0, as the spec asks)."""
    return _HEADER.pack(len(rtf) + 12, len(rtf), UNCOMPRESSED, 0) + rtf


def is_html_wrapper(rtf: bytes) -> bool:
    """Whether the RTF encapsulates HTML (`\\fromhtml1` in its header, MS-OXRTFEX §2.1.3.1)."""
    return b"\\fromhtml1" in rtf[:2048]


_TOKEN = re.compile(rb"\\([a-zA-Z]+)(-?\d+)? ?|\\'([0-9a-fA-F]{2})|\\(.)|([{}])|([\r\n]+)|([^\\{}\r\n]+)", re.S)
#: Destinations whose text is never HTML (font and colour tables, pictures, document info …).
_SKIP = frozenset(
    {b"fonttbl", b"colortbl", b"stylesheet", b"info", b"pict", b"object", b"listtable", b"generator", b"xmlnstbl"}
)
_CONTROL_TEXT = {b"par": b"\r\n", b"line": b"\r\n", b"tab": b"\t", b"lquote": b"\x91", b"rquote": b"\x92"}
_CONTROL_TEXT |= {b"ldblquote": b"\x93", b"rdblquote": b"\x94", b"bullet": b"\x95", b"endash": b"\x96"}
_CONTROL_TEXT |= {b"emdash": b"\x97", b"emspace": b" ", b"enspace": b" ", b"~": b"\xa0"}


def html_from_rtf(rtf: bytes) -> bytes:
    """The HTML of an RTF wrapper (MS-OXRTFEX §2.1.3.1), in the RTF's code page (`\\ansicpg`,
    Windows-1252 when it names none) re-encoded as UTF-8; `\\uN` characters are kept."""
    match = re.search(rb"\\ansicpg(\d+)", rtf[:2048])
    codepage = f"cp{int(match.group(1))}" if match else "cp1252"
    try:
        "".encode(codepage)
    except LookupError:
        codepage = "cp1252"
    out: list[str] = []
    pending = bytearray()

    def flush() -> None:
        if pending:
            out.append(pending.decode(codepage, "replace"))
            pending.clear()

    # One state per group: (skipped, inside an htmltag, \htmlrtf on, characters to skip after \uN).
    stack: list[tuple[bool, bool, bool, int]] = []
    skipped, in_tag, suppressed, uc = False, False, False, 1
    first = False  # the next token is the first of its group (a destination word may follow)
    skip_chars = 0
    for m in _TOKEN.finditer(rtf):
        word, arg, hexbyte, symbol, brace, newline, text = m.groups()
        if brace == b"{":
            stack.append((skipped, in_tag, suppressed, uc))
            first = True
            continue
        if brace == b"}":
            if stack:
                skipped, in_tag, suppressed, uc = stack.pop()
            first = False
            continue
        starting, first = first, False
        if newline is not None:
            continue
        visible = not skipped and (in_tag or not suppressed)
        if skip_chars and (text is not None or hexbyte is not None):
            if text is not None and len(text) > skip_chars:
                text, skip_chars = text[skip_chars:], 0
            else:
                skip_chars -= 1 if hexbyte is not None else len(text or b"")
                skip_chars = max(skip_chars, 0)
                continue
        if word is not None:
            if word == b"htmlrtf":
                suppressed = arg != b"0"
            elif word in (b"htmltag", b"mhtmltag") and stack:
                in_tag, skipped = word == b"htmltag", skipped or word == b"mhtmltag"
            elif starting and word in _SKIP:
                skipped = True
            elif word == b"uc":
                uc = int(arg or 1)
            elif word == b"u" and arg is not None:
                if visible:
                    flush()
                    out.append(chr(int(arg) & 0xFFFF))
                skip_chars = uc
            elif visible and word in _CONTROL_TEXT:
                pending.extend(_CONTROL_TEXT[word])
            continue
        if symbol is not None:
            if symbol == b"*":
                # An ignorable destination: skipped unless it is HTML (decided by its next word).
                nxt = rtf[m.end() : m.end() + 9]
                if not nxt.startswith((b"\\htmltag", b"\\mhtmltag")):
                    skipped = True
            elif visible and symbol in (b"{", b"}", b"\\"):
                pending.extend(symbol)
            elif visible and symbol == b"~":
                pending.extend(b"\xa0")
            continue
        if not visible:
            continue
        if hexbyte is not None:
            pending.append(int(hexbyte, 16))
        elif text is not None:
            pending.extend(text)
    flush()
    return "".join(out).encode("utf-8")
