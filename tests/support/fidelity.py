"""Comparing messages byte for byte, allowing only the documented transport changes.

A message that postroom takes in as RFC 5322 keeps its bytes (issue 16). What a transport may
change when it sends such a message, and nothing else:

* line endings: CRLF on the wire, LF in a Maildir (so both sides are compared with LF);
* `Bcc` (and `Resent-Bcc`) removed;
* a missing `Date` or `Message-ID` added (exactly one each, well formed, anywhere in the header);
* trace fields prepended (`Received`, and the receiving server's `Return-Path`, `Delivered-To`,
  `X-Original-To`);
* a final line end added to a message that has none (SMTP DATA ends with CRLF.CRLF).

The comparison is on raw header fields (folding and all) and raw body bytes, never on parsed
trees, so a re-folded header or a re-encoded part is a difference.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus"

#: Fields a transport or the receiving server may put in front of a message.
TRACE_FIELDS = frozenset({"received", "return-path", "delivered-to", "x-original-to"})
#: Fields a transport removes.
REMOVED_FIELDS = frozenset({"bcc", "resent-bcc"})
#: Fields a transport adds when the message has none.
ADDED_IF_MISSING = ("date", "message-id")

_FIELD_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def corpus_files() -> list[Path]:
    """Every message of the corpus (tests/data/corpus/<source>/*.eml), in a stable order."""
    return sorted(CORPUS.glob("*/*.eml"))


def corpus_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def to_crlf(data: bytes) -> bytes:
    return to_lf(data).replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class Field:
    """One raw header field: its name (lower case) and its bytes, continuation lines included."""

    name: str
    raw: bytes


@dataclass(frozen=True)
class Split:
    fields: tuple[Field, ...]
    body: bytes


def split(data: bytes) -> Split:
    """Header fields and body of an LF message (the body starts after the first empty line)."""
    head, sep, body = data.partition(b"\n\n")
    if not sep:  # header fields only
        head = head.rstrip(b"\n")
    fields: list[Field] = []
    for line in head.split(b"\n") if head else []:
        if fields and line[:1] in (b" ", b"\t"):
            last = fields[-1]
            fields[-1] = Field(last.name, last.raw + b"\n" + line)
            continue
        match = _FIELD_NAME.match(line)
        name = match.group(1).decode("ascii").lower() if match else ""
        fields.append(Field(name, line))
    return Split(tuple(fields), body)


def expected_after_transport(original: bytes) -> Split:
    """What a transport sends of `original`, before the additions it may make (LF line ends)."""
    data = to_lf(original)
    if not data.endswith(b"\n"):
        data += b"\n"
    parts = split(data)
    return Split(tuple(f for f in parts.fields if f.name not in REMOVED_FIELDS), parts.body)


def transport_differences(original: bytes, sent: bytes) -> list[str]:
    """How `sent` differs from `original` beyond the documented transport changes ([] if not)."""
    want = expected_after_transport(original)
    got = split(to_lf(sent))
    problems: list[str] = []
    fields = list(got.fields)
    for name in ADDED_IF_MISSING:
        had = [f for f in want.fields if f.name == name]
        has = [f for f in fields if f.name == name]
        if not had and len(has) == 1:
            fields.remove(has[0])
            problems += _malformed_addition(has[0])
        elif not had:
            problems.append(f"{len(has)} {name} field(s) sent for none in the original (one must be added)")
        elif len(has) != len(had):
            problems.append(f"{len(had)} {name} field(s) in the original, {len(has)} sent")
    problems += _field_differences(want.fields, tuple(fields))
    if got.body != want.body:
        at = next((i for i, (a, b) in enumerate(zip(want.body, got.body, strict=False)) if a != b), None)
        at = min(len(want.body), len(got.body)) if at is None else at
        problems.append(
            f"body differs at byte {at} of {len(want.body)} (sent {len(got.body)}): "
            f"{want.body[max(0, at - 40) : at + 40]!r} became {got.body[max(0, at - 40) : at + 40]!r}"
        )
    return problems


_MSG_ID = re.compile(rb"^Message-ID: *<[\x21-\x3d\x3f-\x7e]+@[\x21-\x3d\x3f-\x7e]+>$", re.IGNORECASE)


def _malformed_addition(field: Field) -> list[str]:
    """What is wrong with a Date or Message-ID field a transport added ([] if nothing)."""
    if field.name == "message-id":
        return [] if _MSG_ID.match(field.raw) else [f"added a malformed Message-ID: {_short(field)}"]
    value = field.raw.partition(b":")[2].strip().decode("ascii", "replace")
    try:
        parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return [f"added a malformed Date: {_short(field)}"]
    return []


def _short(field: Field) -> str:
    text = field.raw.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= 160 else text[:160] + "…")


def _field_differences(want: tuple[Field, ...], got: tuple[Field, ...]) -> list[str]:
    """The header fields removed, added (other than trace fields in front) and changed."""
    problems: list[str] = []
    matcher = difflib.SequenceMatcher(a=[f.raw for f in want], b=[f.raw for f in got], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        if op == "insert" and i1 == 0 and all(f.name in TRACE_FIELDS for f in got[j1:j2]):
            continue  # trace fields prepended
        removed, added = want[i1:i2], got[j1:j2]
        if op == "replace" and len(removed) == len(added):
            problems += [f"changed {_short(a)} to {_short(b)}" for a, b in zip(removed, added, strict=True)]
            continue
        problems += [f"removed {_short(f)}" for f in removed]
        problems += [f"added {_short(f)}" for f in added]
    return problems
