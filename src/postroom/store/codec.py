"""How property values are kept in SQL columns; the tag's type decides the decoding.

SQLite's dynamic typing keeps ints, text and blobs natively. Times are integer
microseconds since the Unix epoch (exact, sortable); multi-valued properties are JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
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


def encode_bag(props: Mapping[int, Any]) -> str:
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


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dump_raw(raw: dict[str, Any]) -> str:
    # One check for the whole bag: a lone surrogate cannot be stored as UTF-8; refuse it clearly.
    return _check_storable(_dumps(raw))


# The per-tag work is looked up once per tag, not worked out per property: a bag's cost is then
# the dict walk and the C JSON codec (about a microsecond a property). Bounded, since a bag may
# name any of 2**32 tags.
_KEY_CACHE_LIMIT = 4096
_KEYS: dict[int, str] = {}
_DECODERS: dict[str, tuple[int, Callable[[Any], Any] | None]] = {}
_PLAIN_ENCODE = {
    T.PT_UNICODE: str,
    T.PT_STRING8: str,
    T.PT_LONG: int,
    T.PT_SHORT: int,
    T.PT_I8: int,
}


#: What encode_value and then the bag make of a binary, a time and a boolean of exactly these
#: types, without its checks: a submitted message has entry IDs, search keys and two times.
_CONVERTED: dict[int, tuple[type, Callable[[Any], Any]]] = {
    T.PT_BINARY: (bytes, bytes.hex),
    T.PT_SYSTIME: (datetime, to_micros),
    T.PT_BOOLEAN: (bool, int),
}


def _key(tag: int) -> str:
    key = _KEYS.get(tag)
    if key is None:
        key = str(tag)
        if len(_KEYS) < _KEY_CACHE_LIMIT:
            _KEYS[tag] = key
    return key


def update_raw(raw: dict[str, Any], props: Mapping[int, Any], delete: Iterable[int] = ()) -> None:
    """Set (encoded) and delete properties of a raw bag; a value of None is not stored."""
    for tag, value in props.items():
        if value is None:
            continue
        kind = tag & 0xFFFF
        if _PLAIN_ENCODE.get(kind) is type(value):  # text as text, integers as integers: the common case
            raw[_KEYS.get(tag) or _key(tag)] = value
            continue
        if kind == T.PT_OBJECT:
            continue
        converted = _CONVERTED.get(kind)
        if converted is not None and converted[0] is type(value):  # an entry ID, a time, a flag
            raw[_KEYS.get(tag) or _key(tag)] = converted[1](value)
            continue
        encoded = encode_value(tag, value)
        raw[_key(tag)] = encoded.hex() if isinstance(encoded, bytes) else encoded
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


def _mv_decoder(base: int) -> Callable[[Any], Any]:
    """How a multi-valued property of this base type is read back: JSON, then each item as
    `_mv_decode` reads it (binary, CLSID and times are not JSON types)."""
    if base in (T.PT_BINARY, T.PT_CLSID, T.PT_SYSTIME):
        return lambda value: [_mv_decode(base, v) for v in json.loads(value)]
    return json.loads


def _decoder(key: str) -> tuple[int, Callable[[Any], Any] | None]:
    """The tag of a stored key and how its value is read back (None: as JSON gave it)."""
    entry = _DECODERS.get(key)
    if entry is not None:
        return entry
    tag = int(key)
    kind = T.prop_type(tag)
    fn: Callable[[Any], Any] | None = None
    if kind in (T.PT_BINARY, T.PT_CLSID):
        fn = bytes.fromhex
    elif kind == T.PT_BOOLEAN:
        fn = bool
    elif kind == T.PT_SYSTIME:
        fn = from_micros
    elif kind & T.MV_FLAG:
        fn = _mv_decoder(kind & ~T.MV_FLAG)
    entry = (tag, fn)
    if len(_DECODERS) < _KEY_CACHE_LIMIT:
        _DECODERS[key] = entry
    return entry


def decode_bag(text: str | bytes | None) -> dict[int, Any]:
    if not text:
        return {}
    out: dict[int, Any] = {}
    for key, value in json.loads(text).items():
        tag, fn = _DECODERS.get(key) or _decoder(key)
        out[tag] = value if fn is None or value is None else fn(value)
    return out


class TemplateBags:
    """Bags of many messages that share all but a few properties (a batch of one message to many
    people): the shared properties are encoded once, and each bag adds only its own ones.

    The text is the same JSON as encode_bag's, so nothing that reads a bag can tell the difference.
    """

    def __init__(self, own: Iterable[int]) -> None:
        self._own = frozenset(own)
        self._shared: dict[int, Any] | None = None
        self._prefix = "{"

    def encode(self, props: Mapping[int, Any]) -> str:
        own_tags = self._own
        shared = {t: v for t, v in props.items() if t not in own_tags}
        if shared != self._shared:
            text = encode_bag(shared)
            self._shared, self._prefix = shared, text[:-1]
        own = encode_bag({t: props[t] for t in own_tags if t in props})
        if own == "{}":
            return self._prefix + "}"
        if self._prefix == "{":
            return own
        return self._prefix + "," + own[1:]


#: A text or binary property at least this large is kept outside its message's bag
#: (message_streams, schema 5): a change of the message's state then rewrites a small row, never
#: its body. Below it, one bag is cheaper than one more row.
STREAM_THRESHOLD = 16 * 1024
_STREAM_KINDS = frozenset((T.PT_UNICODE, T.PT_STRING8, T.PT_BINARY))
_SIZED = frozenset((str, bytes, bytearray, memoryview))


def split_streams(props: Mapping[int, Any]) -> tuple[Mapping[int, Any], dict[int, bytes]]:
    """(the properties kept in the bag, the large ones as the bytes stored apart)."""
    streams: dict[int, bytes] = {}
    for tag, value in props.items():
        # By exact type (the cheap test, made for every property of every message); a subclass of
        # str stays in the bag, which is only slower.
        if type(value) in _SIZED and len(value) >= STREAM_THRESHOLD and tag & 0xFFFF in _STREAM_KINDS:
            streams[tag] = stream_bytes(tag, value)
    if not streams:
        return props, streams
    return {t: v for t, v in props.items() if t not in streams}, streams


def stream_bytes(tag: int, value: Any) -> bytes:
    """A large property as stored apart: text as UTF-8, binary as is."""
    if isinstance(value, str):
        if tag & 0xFFFF == T.PT_BINARY:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"bad value for {T.tag_name(tag)}: a binary property")
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER, f"text that cannot be stored (lone surrogate): {exc}"
            ) from exc
    if tag & 0xFFFF != T.PT_BINARY:
        raise MAPIError(
            HResult.MAPI_E_INVALID_PARAMETER, f"bad value for {T.tag_name(tag)}: a string property needs text"
        )
    return bytes(value)


def stream_value(tag: int, data: bytes) -> str | bytes:
    """A large property read back from its stream."""
    return bytes(data) if tag & 0xFFFF == T.PT_BINARY else bytes(data).decode("utf-8")
