"""Property bags for people and machines (`postroom show ID --props`), the way MFCMAPI lists them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..mapi.message import MessageData
from ..mapi.tags import PT_BINARY, PT_LONG, TYPE_NAMES, prop_type, tag_name
from .output import jsonable

BINARY_LIMIT = 64
TEXT_LIMIT = 200


def type_name(tag: int) -> str:
    return TYPE_NAMES.get(prop_type(tag), f"0x{prop_type(tag):04X}")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def format_value(tag: int, value: Any) -> str:
    """A value in one line: binary as hex (at most 64 bytes shown), long text cut short."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        shown = data[:BINARY_LIMIT].hex().upper()
        return shown + (f"… ({len(data)} bytes)" if len(data) > BINARY_LIMIT else "")
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int) and prop_type(tag) == PT_LONG:
        return f"{value} (0x{value & 0xFFFFFFFF:08X})"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        text = _escape(value)
        return text[:TEXT_LIMIT] + (f"… ({len(value)} characters)" if len(text) > TEXT_LIMIT else "")
    if isinstance(value, list | tuple):
        element = tag & ~0x1000
        return "[" + ", ".join(format_value(element, v) for v in value) + "]"
    return repr(value)


def prop_rows(props: dict[int, Any]) -> list[list[str]]:
    """NAME, TAG, TYPE, VALUE for each property, by tag."""
    return [[tag_name(t), f"0x{t:08X}", type_name(t), format_value(t, props[t])] for t in sorted(props)]


def prop_list(props: dict[int, Any]) -> list[dict[str, Any]]:
    """The machine form: full values (binary as complete hex)."""
    return [
        {
            "name": tag_name(t),
            "tag": f"0x{t:08X}",
            "type": type_name(t),
            "value": bytes(props[t]).hex().upper()
            if prop_type(t) == PT_BINARY and props[t] is not None
            else jsonable(props[t]),
        }
        for t in sorted(props)
    ]


def message_props(message: MessageData) -> dict[str, Any]:
    """Every property of a message, its recipients and attachments (embedded messages nested)."""
    return {
        "props": prop_list(message.props),
        "recipients": [{"row_id": r.row_id, "props": prop_list(r.props)} for r in message.recipients],
        "attachments": [
            {
                "num": a.num,
                "props": prop_list(a.props),
                **({"embedded": message_props(a.embedded)} if a.embedded is not None else {}),
            }
            for a in message.attachments
        ],
    }
