"""What the MAPI file formats share (`msg`, `tnef`): property types and their binary forms, FILETIME,
the named-property mapping postroom keeps with a message, and the body a message keeps only as
compressed RTF. No compound-file code here: `tnef` (which `mime` uses) needs none.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ..mapi import tags as T
from ..mapi.codes import MAPIError
from ..mapi.message import MessageData
from . import rtf

__all__ = [
    "FIXED",
    "MV_FIXED",
    "PR_INTERNET_CPID",
    "PR_MESSAGE_CODEPAGE",
    "PR_POSTROOM_NAMEID_MAP",
    "PR_RTF_COMPRESSED",
    "PS_MAPI",
    "PS_PUBLIC_STRINGS",
    "PT_APPTIME",
    "PT_CURRENCY",
    "PT_FLOAT",
    "VARIABLE",
    "add_unicode_twins",
    "filetime",
    "fill_body",
    "from_filetime",
]

PR_POSTROOM_NAMEID_MAP = T.prop_tag(T.PT_UNICODE, 0x67F0)
T.TAG_NAMES.setdefault(PR_POSTROOM_NAMEID_MAP, "PR_POSTROOM_NAMEID_MAP")
PR_RTF_COMPRESSED = T.prop_tag(T.PT_BINARY, 0x1009)
T.TAG_NAMES.setdefault(PR_RTF_COMPRESSED, "PR_RTF_COMPRESSED")
PR_MESSAGE_CODEPAGE = T.prop_tag(T.PT_LONG, 0x3FFD)
PR_INTERNET_CPID = T.prop_tag(T.PT_LONG, 0x3FDE)
PS_MAPI = "00020328-0000-0000-c000-000000000046"
PS_PUBLIC_STRINGS = "00020329-0000-0000-c000-000000000046"

PT_FLOAT, PT_CURRENCY, PT_APPTIME = 0x0004, 0x0006, 0x0007
#: Fixed-size types: their struct format (little-endian). The value sits in the property stream.
FIXED: dict[int, str] = {
    T.PT_SHORT: "<h",
    T.PT_LONG: "<i",
    PT_FLOAT: "<f",
    T.PT_DOUBLE: "<d",
    PT_CURRENCY: "<q",
    PT_APPTIME: "<d",
    T.PT_ERROR: "<I",
    T.PT_BOOLEAN: "<H",
    T.PT_I8: "<q",
    T.PT_SYSTIME: "<Q",
}
#: Fixed-size types whose multi-valued form is one stream of packed values (CLSID: 16 bytes each).
MV_FIXED = {**{t: f for t, f in FIXED.items() if t not in (T.PT_ERROR, T.PT_BOOLEAN)}, T.PT_CLSID: "16s"}
VARIABLE = (T.PT_STRING8, T.PT_UNICODE, T.PT_BINARY)

_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def from_filetime(value: int) -> datetime:
    """A FILETIME (100 ns ticks since 1601) as a datetime, to the microsecond; the largest
    datetime for a FILETIME past the year 9999 (Outlook's "none" dates)."""
    try:
        return _FILETIME_EPOCH + timedelta(microseconds=value // 10)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def filetime(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _FILETIME_EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 10


def fill_body(md: MessageData) -> None:
    """PR_BODY or PR_HTML from PR_RTF_COMPRESSED when the file has neither (see the docstring)."""
    packed = md.props.get(PR_RTF_COMPRESSED)
    if not isinstance(packed, bytes) or (T.PR_HTML in md.props and T.PR_BODY in md.props):
        return
    try:
        text = rtf.decompress(packed)
    except MAPIError:
        return
    if rtf.is_html_wrapper(text) and T.PR_HTML not in md.props:
        md.props[T.PR_HTML] = rtf.html_from_rtf(text)


def add_unicode_twins(md: MessageData) -> MessageData:
    """Give every ANSI string property (PT_STRING8) of `md`, its recipients, attachments and
    embedded messages its Unicode twin (PT_UNICODE, same ID) where it has none: postroom reads
    subjects, names, addresses and file names by their Unicode tags. The ANSI ones stay as they
    were, so a message exported again carries both."""
    for bag in (md.props, *(r.props for r in md.recipients), *(a.props for a in md.attachments)):
        for tag, value in list(bag.items()):
            if T.prop_type(tag) == T.PT_STRING8 and isinstance(value, str):
                bag.setdefault(T.prop_tag(T.PT_UNICODE, T.prop_id(tag)), value)
    for att in md.attachments:
        if att.embedded is not None:
            add_unicode_twins(att.embedded)
    return md
