"""The original MIME stream of a message that arrived as RFC 5322 (`send --eml`, IMAP, POP3).

`mime.from_mime` keeps the bytes it was given beside the properties it made of them
(`MessageData.original`), with a fingerprint of the properties the MIME rendering depends on
(`fingerprint`). The store keeps both in a table of their own, read only when a message is
sent or exported. While the fingerprint still matches, the message is *unchanged* and these
bytes are the message (if its header block is well formed, `sendable`):

* `exact` gives them back as stored (`postroom export ID --eml`);
* `as_sent` gives what a transport sends, with exactly these changes (`TRANSPORT_CHANGES`):
  the `Bcc` and `Resent-Bcc` fields are removed (unless a Bcc header is asked for); a missing
  `Date` is added (PR_CLIENT_SUBMIT_TIME, the submit time) and a missing `Message-ID` too
  (PR_INTERNET_MESSAGE_ID, fixed at submit, or made here and stored back so a retry sends the
  same one), both after the last header field; line ends become the transport's (CRLF for
  SMTP and pipes, LF for Maildir files). Nothing else changes: no trace header is added, no
  part is re-encoded, so a signed or encrypted part goes out byte for byte.

A message edited through its properties after import is rendered again by `mime` (see
`mime_reuse.py` for what of the original it keeps).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid
from typing import Any

from .mapi import tags as T
from .mapi.codes import HResult, MAPIError
from .mapi.flags import MAPI_P1, RecipientType
from .mapi.message import Attachment, MessageData, OriginalMime

__all__ = [
    "TRANSPORT_CHANGES",
    "as_sent",
    "attachment_key",
    "exact",
    "fingerprint",
    "header_fields",
    "keep",
    "line_ends",
    "sendable",
    "split",
    "text_key",
    "unchanged",
    "well_formed",
]

#: What `as_sent` changes in the original bytes, in words (the README says the same).
TRANSPORT_CHANGES = (
    "Bcc and Resent-Bcc removed",
    "a missing Date added (the submit time)",
    "a missing Message-ID added (PR_INTERNET_MESSAGE_ID)",
    "line ends made the transport's (CRLF, or LF for Maildir)",
)

#: Message properties the MIME rendering depends on (`mime._build`), compared by `fingerprint`.
_RENDERED_PROPS = (
    T.PR_SUBJECT,
    T.PR_BODY,
    T.PR_HTML,
    T.PR_IMPORTANCE,
    T.PR_PRIORITY,
    T.PR_READ_RECEIPT_REQUESTED,
    T.PR_IN_REPLY_TO_ID,
    T.PR_SENT_REPRESENTING_NAME,
    T.PR_SENT_REPRESENTING_EMAIL_ADDRESS,
    T.PR_SENT_REPRESENTING_ADDRTYPE,
    T.PR_SENDER_NAME,
    T.PR_SENDER_EMAIL_ADDRESS,
    T.PR_SENDER_ADDRTYPE,
)
_BCC_FIELDS = frozenset({"bcc", "resent-bcc"})
_LINE_END = re.compile(rb"\r?\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+):")
#: What no header line may hold on the wire: a CR that ends no line, NUL.
_BAD_IN_HEADER = re.compile(rb"\r(?!\n)|\x00")
_MAX_LINE = 998  # RFC 5322 §2.1.1, without the line end
_ID_FORBIDDEN = re.compile(r"[^\x21-\x7e]")


# --- the fingerprint -------------------------------------------------------------------------------
def _value(value: Any) -> Any:
    """A property value in a form that survives the store (bytes as hex, booleans as 0/1)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    return str(value)


def attachment_key(att: Attachment) -> list[Any]:
    """What of an attachment its rendering depends on (an embedded message: its whole content)."""
    props = att.props
    head = [
        _value(props.get(T.PR_ATTACH_METHOD)),
        _value(att.filename),
        _value(props.get(T.PR_ATTACH_MIME_TAG)),
        _value(props.get(T.PR_ATTACH_CONTENT_ID)),
    ]
    if att.embedded is not None:
        return [*head, _content(att.embedded)]
    size = att.size if att.size is not None else props.get(T.PR_ATTACH_SIZE)
    return [*head, _value(size)]


def text_key(md: MessageData) -> list[Any]:
    """The text and HTML of a message, as the fingerprint sees them."""
    return [_value(md.props.get(T.PR_BODY)), _value(md.props.get(T.PR_HTML))]


def _content(md: MessageData) -> list[Any]:
    props = [[tag, _value(md.props.get(tag))] for tag in _RENDERED_PROPS]
    rows = []
    for row in md.recipients:
        kind = int(row.props.get(T.PR_RECIPIENT_TYPE, 1) or 0)
        if kind & MAPI_P1 or kind & 0xFFFF == RecipientType.BCC:
            continue  # envelope-only rows never reach the header, and a transport never sends Bcc
        rows.append([kind & 0xFFFF, row.address_type.upper(), row.email_address, _value(row.get(T.PR_DISPLAY_NAME))])
    return [props, rows, [attachment_key(a) for a in md.attachments]]


def fingerprint(md: MessageData) -> str:
    """A digest of what the MIME rendering of `md` depends on: the subject, body and HTML, the
    originator, importance, priority, read receipt and In-Reply-To; every To and Cc row (kind,
    address, display name; Bcc rows never reach a header a transport sends); every attachment
    (method, name, type, Content-ID and size, or an embedded message's own content).
    Submitting (which stamps the submit time, the Message-ID and flags) or moving a message
    leaves it as it was."""
    text = json.dumps(_content(md), ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def keep(md: MessageData, raw: bytes) -> None:
    """Keep `raw` as the original of `md`, as `md` is now."""
    md.original = OriginalMime(fingerprint=fingerprint(md), size=len(raw), data=bytes(raw))


def unchanged(md: MessageData) -> bool:
    """Whether `md` has an original and was not edited since it was kept."""
    return md.original is not None and fingerprint(md) == md.original.fingerprint


def well_formed(block: bytes) -> bool:
    """Whether every line of a header block is a field (`Name:` with no blank before the colon)
    or a continuation, with no stray CR or NUL: only such a block is sent as it is."""
    return not _BAD_IN_HEADER.search(block) and all(name for name, _ in header_fields(block))


def sendable(md: MessageData) -> bool:
    """Whether a transport sends the original bytes of `md` (`as_sent`): it has them, was not
    edited since, its header block is well formed and no line is longer than RFC 5322 allows
    (998 octets). Otherwise it is rendered from its properties."""
    if md.original is None or not unchanged(md):
        return False
    raw = md.original.read_all()
    return well_formed(split(raw)[0]) and not _overlong(raw)


def _overlong(raw: bytes) -> bool:
    """Whether a line (without its line end) is longer than 998 octets; the quick test first."""
    lines = raw.split(b"\n")
    return max(map(len, lines)) > _MAX_LINE + 1 and any(len(line.rstrip(b"\r")) > _MAX_LINE for line in lines)


def exact(md: MessageData) -> bytes | None:
    """The original bytes exactly as stored, when `md` has them and was not edited; else None."""
    return md.original.read_all() if md.original is not None and unchanged(md) else None


# --- raw header fields ---------------------------------------------------------------------------
def split(raw: bytes) -> tuple[bytes, bytes]:
    """(header block, body) of a message: the block without the empty line that ends it; the body
    after it (b"" when there is no empty line)."""
    match = _HEADER_END.search(raw)
    if match is None:
        return raw, b""
    return raw[: match.start()], raw[match.end() :]


def header_fields(block: bytes) -> list[tuple[str, bytes]]:
    """Every field of a header block as (lower-case name, the field's exact bytes with its
    continuation lines, without the final line end). A line that is no field and no
    continuation is kept as a field with the name ''."""
    fields: list[tuple[str, bytes]] = []
    for line in _LINE_END.split(block):
        if line[:1] in (b" ", b"\t") and fields:
            name, text = fields[-1]
            fields[-1] = (name, text + b"\n" + line)
            continue
        match = _FIELD_NAME.match(line)
        fields.append((match.group(1).decode("ascii").lower() if match else "", line))
    return fields


# --- what a transport sends --------------------------------------------------------------------------
def _message_id(md: MessageData, domain: str) -> str:
    value = str(md.props.get(T.PR_INTERNET_MESSAGE_ID) or "")
    if not value:
        value = make_msgid(domain=domain or "localhost")
        md.props[T.PR_INTERNET_MESSAGE_ID] = value  # a retry must send the same one
    if _ID_FORBIDDEN.search(value):
        raise MAPIError(
            HResult.MAPI_E_INVALID_PARAMETER,
            f"Message-ID: {value!r} contains whitespace, control or non-ASCII characters",
        )
    return value if value.startswith("<") and value.endswith(">") else f"<{value.strip('<>')}>"


def _sender_domain(md: MessageData) -> str:
    for tag in (T.PR_SENT_REPRESENTING_EMAIL_ADDRESS, T.PR_SENDER_EMAIL_ADDRESS):
        domain = str(md.props.get(tag) or "").rpartition("@")[2].strip("[]")
        if domain and domain.isascii():
            return domain
    return "localhost"


def as_sent(md: MessageData, *, include_bcc: bool = False, linesep: str = "\r\n") -> bytes:
    """The original bytes of an unchanged message as a transport sends them (`TRANSPORT_CHANGES`)."""
    if md.original is None:
        raise MAPIError(HResult.MAPI_E_NOT_FOUND, "the message has no original MIME stream")
    block, body = split(md.original.read_all())
    fields = header_fields(block)
    names = {name for name, _ in fields}
    lines = [text for name, text in fields if include_bcc or name not in _BCC_FIELDS]
    if "date" not in names:
        when = md.props.get(T.PR_CLIENT_SUBMIT_TIME)
        when = when if isinstance(when, datetime) else datetime.now(UTC)
        lines.append(b"Date: " + format_datetime(when if when.tzinfo else when.replace(tzinfo=UTC)).encode())
    if "message-id" not in names:
        lines.append(b"Message-ID: " + _message_id(md, _sender_domain(md)).encode("ascii"))
    end = linesep.encode("ascii")
    return line_ends(b"\n".join(lines), end) + end + end + line_ends(body, end)


def line_ends(data: bytes, end: bytes) -> bytes:
    """Every CRLF or LF made `end` (as `_LINE_END.sub`, many times faster on a large message)."""
    if end == b"\r\n" and data.count(b"\n") == data.count(b"\r\n"):
        return data  # CRLF already, as messages from servers and most files are
    lf = data.replace(b"\r\n", b"\n") if b"\r" in data else data
    return lf if end == b"\n" else lf.replace(b"\n", end)
