"""Random MAPI messages for property tests: property bags of every type MAPI defines (multi-valued
ones included), named properties with their names, recipients, attachments and embedded messages.
`strip` leaves out what a file layout itself adds (row IDs, attachment numbers and methods)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from postroom import MessageData
from postroom.formats import mapiprops
from postroom.mapi import tags as T
from postroom.mapi.message import Attachment, Recipient

PT_FLOAT, PT_CURRENCY, PT_APPTIME = 0x0004, 0x0006, 0x0007
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
float32 = st.floats(width=32, allow_nan=False)
double = st.floats(allow_nan=False)
times = st.datetimes(min_value=datetime(1601, 1, 2), max_value=datetime(9999, 12, 30)).map(
    lambda d: d.replace(tzinfo=UTC)
)
unicode_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=30)
ansi_text = st.text(st.characters(codec="cp1252", exclude_characters="\0"), max_size=30)
blobs = st.binary(max_size=40)
VALUES: dict[int, st.SearchStrategy[Any]] = {
    T.PT_SHORT: int16,
    T.PT_LONG: int32,
    PT_FLOAT: float32,
    T.PT_DOUBLE: double,
    PT_CURRENCY: int64,
    PT_APPTIME: double,
    T.PT_ERROR: st.integers(0, 2**32 - 1),
    T.PT_BOOLEAN: st.booleans(),
    T.PT_I8: int64,
    T.PT_STRING8: ansi_text,
    T.PT_UNICODE: unicode_text,
    T.PT_SYSTIME: times,
    T.PT_CLSID: st.binary(min_size=16, max_size=16),
    T.PT_BINARY: blobs,
}
MULTI = [
    T.PT_SHORT,
    T.PT_LONG,
    PT_FLOAT,
    T.PT_DOUBLE,
    PT_CURRENCY,
    PT_APPTIME,
    T.PT_I8,
    T.PT_STRING8,
    T.PT_UNICODE,
    T.PT_SYSTIME,
    T.PT_CLSID,
    T.PT_BINARY,
]
TYPES = [*VALUES, *(T.MV_FLAG | t for t in MULTI)]


@st.composite
def bags(draw: st.DrawFn, ids: tuple[int, int] = (0x6000, 0x65FF), max_size: int = 12) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for _ in range(draw(st.integers(0, max_size))):
        kind = draw(st.sampled_from(TYPES))
        pid = draw(st.integers(*ids))
        if kind & T.MV_FLAG:
            value: Any = draw(st.lists(VALUES[kind & ~T.MV_FLAG], max_size=4))
        else:
            value = draw(VALUES[kind])
        out[T.prop_tag(kind, pid)] = value
    return out


@st.composite
def messages(draw: st.DrawFn, depth: int = 0) -> MessageData:
    """A message; at the top, the names of every named property in it (its embedded messages'
    too, which share the mapping as in a .msg file) in PR_POSTROOM_NAMEID_MAP."""
    props = draw(bags())
    named = draw(bags(ids=(0x8000, 0x8010), max_size=4))
    md = MessageData(props={**props, **named})
    for _ in range(draw(st.integers(0, 2))):
        md.recipients.append(Recipient(props=draw(bags(max_size=5))))
    for _ in range(draw(st.integers(0, 2))):
        att = Attachment(props=draw(bags(max_size=4)))
        if depth == 0 and draw(st.booleans()):
            att.embedded = draw(messages(depth=1))
        else:
            att.data = draw(blobs)
        md.attachments.append(att)
    ids = {T.prop_id(tag) for tag in named}
    ids |= {
        T.prop_id(tag) for a in md.attachments if a.embedded for tag in a.embedded.props if T.prop_id(tag) >= 0x8000
    }
    if ids and depth == 0:
        guids = st.sampled_from(
            [mapiprops.PS_MAPI, mapiprops.PS_PUBLIC_STRINGS, "00062008-0000-0000-c000-000000000046"]
        )
        names = st.one_of(
            st.integers(0, 2**31 - 1),
            st.text(
                st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\0"),
                min_size=1,
                max_size=12,
            ),
        )
        mapping = {f"{pid:04X}": [draw(guids), draw(names)] for pid in sorted(ids)}
        md.props[mapiprops.PR_POSTROOM_NAMEID_MAP] = json.dumps(mapping, separators=(",", ":"))
    return md


def strip(md: MessageData) -> dict[str, Any]:
    """A message without what the .msg layout itself adds (row IDs, attachment numbers and method)."""
    added = {T.PR_ROWID, T.PR_ATTACH_NUM, T.PR_ATTACH_METHOD}
    props = dict(md.props)
    if mapiprops.PR_POSTROOM_NAMEID_MAP in props:  # the mapping, as JSON whatever the order of its keys
        props[mapiprops.PR_POSTROOM_NAMEID_MAP] = json.loads(props[mapiprops.PR_POSTROOM_NAMEID_MAP])
    return {
        "props": props,
        "recipients": [{k: v for k, v in r.props.items() if k not in added} for r in md.recipients],
        "attachments": [
            (
                {k: v for k, v in a.props.items() if k not in added},
                strip(a.embedded) if a.embedded is not None else a.read_all(),
            )
            for a in md.attachments
        ],
    }
