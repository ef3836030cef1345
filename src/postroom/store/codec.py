"""How property values are kept in SQL columns; the tag's type decides the decoding.

SQLite's dynamic typing keeps ints, text and blobs natively. Times are integer
microseconds since the Unix epoch (exact, sortable); multi-valued properties are JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(value))


def to_epoch(value: datetime | None) -> float | None:
    return None if value is None else to_micros(value) / 1_000_000


def from_epoch(value: float | None) -> datetime | None:
    return None if value is None else from_micros(round(value * 1_000_000))


def encode_value(tag: int, value: Any) -> Any:
    """A property value as an SQL parameter; MAPI_E_INVALID_PARAMETER when it doesn't fit the type."""
    kind = T.prop_type(tag)
    try:
        if kind in _INTEGERS:
            return int(value)
        if kind == T.PT_BOOLEAN:
            return 1 if value else 0
        if kind in (T.PT_UNICODE, T.PT_STRING8):
            if not isinstance(value, str):
                raise TypeError("a string property needs text")
            value.encode("utf-8")  # a lone surrogate cannot be stored: refuse it here, clearly
            return value
        if kind in (T.PT_BINARY, T.PT_CLSID):
            return bytes(value)
        if kind == T.PT_SYSTIME:
            if not isinstance(value, datetime):
                raise TypeError("a time property needs a datetime")
            return to_micros(value)
        if kind in _FLOATS:
            return float(value)
        if kind & T.MV_FLAG:
            base = kind & ~T.MV_FLAG
            return json.dumps([_mv_item(base, v) for v in value])
    except (TypeError, ValueError, UnicodeError) as exc:
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"bad value for {T.tag_name(tag)}: {exc}") from exc
    raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"{T.tag_name(tag)}: property type 0x{kind:04X} cannot be stored")


#: Integer-valued types: PT_SHORT, PT_LONG, PT_CURRENCY (scaled by 10,000), PT_ERROR, PT_I8.
_INTEGERS = frozenset({T.PT_SHORT, T.PT_LONG, 0x0006, T.PT_ERROR, T.PT_I8})
#: Floating-point types: PT_FLOAT, PT_DOUBLE, PT_APPTIME (kept as Python floats; a .msg keeps
#: PT_FLOAT as 4 bytes, so a value read from one survives the round trip exactly).
_FLOATS = frozenset({0x0004, T.PT_DOUBLE, 0x0007})


def _mv_item(base: int, value: Any) -> Any:
    """One value of a multi-valued property in its JSON form (binary and CLSID as hex, times as
    microseconds); the .msg import (branch i20formats) brings every multi-valued type MAPI has."""
    if base in (T.PT_BINARY, T.PT_CLSID):
        return bytes(value).hex()
    if base == T.PT_SYSTIME:
        if not isinstance(value, datetime):
            raise TypeError("a time property needs a datetime")
        return to_micros(value)
    if base in _INTEGERS:
        return int(value)
    if base in _FLOATS:
        return float(value)
    if base in (T.PT_UNICODE, T.PT_STRING8) and not isinstance(value, str):
        raise TypeError("a string property needs text")
    return value


def _mv_decode(base: int, value: Any) -> Any:
    if base in (T.PT_BINARY, T.PT_CLSID):
        return bytes.fromhex(value)
    if base == T.PT_SYSTIME:
        return from_micros(value)
    return value


def decode_value(tag: int, value: Any) -> Any:
    kind = T.prop_type(tag)
    if value is None:
        return None
    if kind == T.PT_BOOLEAN:
        return bool(value)
    if kind == T.PT_SYSTIME:
        return from_micros(value)
    if kind in (T.PT_BINARY, T.PT_CLSID):
        return bytes(value)
    if kind & T.MV_FLAG:
        base = kind & ~T.MV_FLAG
        return [_mv_decode(base, v) for v in json.loads(value)]
    return value


def encode_bag(props: dict[int, Any]) -> str:
    """A whole property bag as one JSON text: {"<tag>": value}; binary values as hex.

    One column per object instead of one row per property: far fewer statements per message,
    and the tag's type still decides how each value is read back.
    """
    raw: dict[str, Any] = {}
    update_raw(raw, props)
    return dump_raw(raw)


# A bag changed in place: parsed as JSON but not decoded, so that changing one property of a
# message does not decode and re-encode all the others (its body among them).
def load_raw(text: str | bytes | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def dump_raw(raw: dict[str, Any]) -> str:
    # One check for the whole bag: a lone surrogate cannot be stored as UTF-8; refuse it clearly.
    return _check_storable(json.dumps(raw, ensure_ascii=False, separators=(",", ":")))


def update_raw(raw: dict[str, Any], props: Mapping[int, Any], delete: Iterable[int] = ()) -> None:
    """Set (encoded) and delete properties of a raw bag; a value of None is not stored."""
    for tag, value in props.items():
        if value is None:
            continue
        kind = tag & 0xFFFF
        if kind == T.PT_UNICODE and type(value) is str:  # the common case, kept fast
            raw[str(tag)] = value
            continue
        if kind == T.PT_OBJECT:
            continue
        encoded = encode_value(tag, value)
        raw[str(tag)] = encoded.hex() if isinstance(encoded, bytes) else encoded
    for tag in delete:
        raw.pop(str(tag), None)


def raw_value(raw: Mapping[str, Any], tag: int) -> Any:
    """One property of a raw bag, decoded (None when absent)."""
    value = raw.get(str(tag))
    if value is None:
        return None
    if T.prop_type(tag) in (T.PT_BINARY, T.PT_CLSID):
        return bytes.fromhex(value)
    return decode_value(tag, value)


def _check_storable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MAPIError(
            HResult.MAPI_E_INVALID_PARAMETER, f"text that cannot be stored (lone surrogate): {exc}"
        ) from exc
    return text


def decode_bag(text: str | bytes | None) -> dict[int, Any]:
    if not text:
        return {}
    out: dict[int, Any] = {}
    for key, value in json.loads(text).items():
        tag = int(key)
        kind = T.prop_type(tag)
        if kind in (T.PT_BINARY, T.PT_CLSID):
            out[tag] = bytes.fromhex(value)
        else:
            out[tag] = decode_value(tag, value)
    return out
