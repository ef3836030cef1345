"""Property bags round-trip: every storable property type, through the plain encoder, the template
encoder that batched submit uses, and the large-property split (schema 5)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.store.codec import (
    STREAM_THRESHOLD,
    TemplateBags,
    decode_bag,
    encode_bag,
    split_streams,
    stream_value,
)

# Text that UTF-8 can hold (no lone surrogates: refused on purpose, tested below).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
TIMES = st.datetimes(min_value=datetime(1601, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)).map(
    lambda d: d.astimezone(UTC)
)
INT32 = st.integers(-(2**31), 2**31 - 1)

#: A strategy for the values of each storable property type.
VALUES: dict[int, st.SearchStrategy[Any]] = {
    T.PT_SHORT: st.integers(-(2**15), 2**15 - 1),
    T.PT_LONG: INT32,
    T.PT_I8: st.integers(-(2**63), 2**63 - 1),
    T.PT_BOOLEAN: st.booleans(),
    T.PT_DOUBLE: st.floats(allow_nan=False),
    T.PT_UNICODE: TEXT,
    T.PT_STRING8: TEXT,
    T.PT_BINARY: st.binary(max_size=40),
    T.PT_CLSID: st.binary(min_size=16, max_size=16),
    T.PT_SYSTIME: TIMES,
    T.PT_MV_LONG: st.lists(INT32, max_size=4),
    T.PT_MV_UNICODE: st.lists(TEXT, max_size=4),
    T.PT_MV_BINARY: st.lists(st.binary(max_size=20), max_size=4),
}


@st.composite
def bags(draw: st.DrawFn) -> dict[int, Any]:
    """A bag with properties of every type, under random property IDs."""
    out: dict[int, Any] = {}
    for kind, values in VALUES.items():
        for _ in range(draw(st.integers(0, 2))):
            prop_id = draw(st.integers(0x0001, 0xFFFE))
            out[(prop_id << 16) | kind] = draw(values)
    return out


def same(a: dict[int, Any], b: dict[int, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for tag, value in a.items():
        other = b[tag]
        if isinstance(value, float):
            if not math.isclose(value, other, rel_tol=0, abs_tol=0) and value != other:
                return False
        elif value != other or type(value) is not type(other):
            return False
    return True


@settings(max_examples=150, deadline=None)
@given(bags())
def test_every_property_type_round_trips_through_a_bag(props: dict[int, Any]) -> None:
    text = encode_bag(props)
    json.loads(text)  # plain JSON, as every store version since 1 writes it
    assert same(decode_bag(text), props)
    assert same(decode_bag(text.encode("utf-8")), props)  # as a driver may hand it back


@settings(max_examples=100, deadline=None)
@given(bags(), st.lists(st.tuples(TEXT, TEXT, TIMES), min_size=1, max_size=4))
def test_template_bags_decode_to_the_same_properties_as_plain_ones(
    shared: dict[int, Any], own: list[tuple[str, str, datetime]]
) -> None:
    template = TemplateBags([T.PR_SUBJECT, T.PR_INTERNET_MESSAGE_ID, T.PR_CREATION_TIME])
    for subject, msgid, created in own:
        props = {**shared, T.PR_SUBJECT: subject, T.PR_INTERNET_MESSAGE_ID: msgid, T.PR_CREATION_TIME: created}
        text = template.encode(props)
        assert same(decode_bag(text), props)
        assert json.loads(text) == json.loads(encode_bag(props))


def test_a_template_with_nothing_shared_or_nothing_own_is_still_one_bag() -> None:
    template = TemplateBags([T.PR_SUBJECT])
    assert decode_bag(template.encode({T.PR_SUBJECT: "only own"})) == {T.PR_SUBJECT: "only own"}
    assert decode_bag(template.encode({T.PR_BODY: "only shared"})) == {T.PR_BODY: "only shared"}
    assert decode_bag(template.encode({})) == {}


@settings(max_examples=100, deadline=None)
@given(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8),
    st.binary(min_size=1, max_size=8),
    st.integers(-2, 2),
)
def test_large_text_and_binary_split_out_of_the_bag_and_read_back_exactly(unit: str, chunk: bytes, around: int) -> None:
    text = (unit * (STREAM_THRESHOLD // len(unit) + 1))[: STREAM_THRESHOLD + around]
    data = (chunk * (STREAM_THRESHOLD // len(chunk) + 1))[: STREAM_THRESHOLD + around]
    props = {T.PR_SUBJECT: "s", T.PR_BODY: text, T.PR_HTML: data}
    kept, streams = split_streams(props)
    assert set(streams) == {t for t, v in ((T.PR_BODY, text), (T.PR_HTML, data)) if len(v) >= STREAM_THRESHOLD}
    assert {**kept, **{t: stream_value(t, d) for t, d in streams.items()}} == props
    assert not set(kept) & set(streams)


def test_text_that_cannot_be_stored_is_refused_with_its_mapi_code() -> None:
    for props in ({T.PR_SUBJECT: "a\ud800b"}, {T.PR_BODY: "\ud800" * STREAM_THRESHOLD}):
        with pytest.raises(MAPIError) as err:
            encode_bag(split_streams(props)[0]) if T.PR_SUBJECT in props else split_streams(props)
        assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
    with pytest.raises(MAPIError) as err:
        encode_bag({T.PR_SUBJECT: 7})
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER


def test_bags_written_by_the_previous_codec_decode_the_same() -> None:
    # The exact text the schema-4 codec (before this change) wrote for these properties.
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    old = (
        '{"3604511":"Hello \u00e9","235339779":9,"4325387":1,"3670274":"00ff10","805765184":1767323045678901,'
        '"3739679":"[\\"a\\", \\"b\\"]","3805442":"[\\"0102\\"]","4390917":1.5,"4456468":1099511627776}'
    )
    props = {
        T.PR_SUBJECT: "Hello \u00e9",
        T.PR_MESSAGE_FLAGS: 9,
        0x00420000 | T.PT_BOOLEAN: True,
        0x00380000 | T.PT_BINARY: b"\x00\xff\x10",
        T.PR_CREATION_TIME: when,
        0x00391000 | T.PT_UNICODE: ["a", "b"],
        0x003A1000 | T.PT_BINARY: [b"\x01\x02"],
        0x00430000 | T.PT_DOUBLE: 1.5,
        0x00440000 | T.PT_I8: 2**40,
    }
    assert decode_bag(old) == props
    assert decode_bag(encode_bag(props)) == props
    assert json.loads(encode_bag(props)) == json.loads(old)  # the same JSON: no migration of the format
