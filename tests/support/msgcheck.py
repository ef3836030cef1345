"""What an independent `.msg` reader (extract-msg, GPL-3: a test dependency only, never imported by
postroom) reports of a file: every property of the message, its recipients and its attachments,
keyed by tag, in postroom's value types. Multi-valued and named-property details are left to
postroom's own round-trip tests; this view covers every single-valued property."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import extract_msg
from extract_msg.properties.prop import FixedLengthProp

#: Types whose value is a stream (variable size) and how to read its bytes.
_STRING8, _UNICODE, _BINARY, _CLSID = 0x001E, 0x001F, 0x0102, 0x0048


def _bag(obj: Any, codepage: str) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for key, prop in obj.props.items():
        tag = int(key, 16)
        kind = tag & 0xFFFF
        if isinstance(prop, FixedLengthProp):
            value = prop.value
            if kind == 0x000B:
                value = bool(value)
            out[tag] = value
            continue
        if kind & 0x1000 or kind == 0x000D:
            continue
        raw = obj.getStream(f"__substg1.0_{key.upper()}")
        if raw is None:
            continue
        if kind == _UNICODE:
            out[tag] = raw.decode("utf-16-le").split("\0", 1)[0]
        elif kind == _STRING8:
            out[tag] = raw.decode(codepage).split("\0", 1)[0]
        elif kind in (_BINARY, _CLSID):
            out[tag] = bytes(raw)
    return out


def independent_view(path: Path, codepage: str = "cp1252") -> dict[str, Any]:
    """{"message": props, "recipients": [props…], "attachments": [props…]} as extract-msg reads them."""
    msg = extract_msg.openMsg(str(path))
    try:
        return {
            "message": _bag(msg, codepage),
            "recipients": [_bag(r, codepage) for r in msg.recipients],
            "attachments": [_bag(a, codepage) for a in msg.attachments],
        }
    finally:
        msg.close()
