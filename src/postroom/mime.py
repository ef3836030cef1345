"""MAPI ⇄ Internet mail: `MessageData` to RFC 5322/MIME and back, and delivery status notifications.

The heavy lifting (header encoding, RFC 2047/2231, folding, transfer encodings, parsing) is the
standard `email` package's; this module only decides which MAPI property goes where.

Outbound (`to_mime`, `to_bytes`, `to_bytes_with_flags`):

* A message that arrived as RFC 5322 and was not edited since is its original bytes, with only
  the transport's changes (`postroom.original`); an edited one is rendered from its properties
  as below and keeps what nobody edited of its original (`postroom.mime_reuse`).

* Only SMTP addresses reach address headers; recipients of other address types (FAX, X400 …)
  belong to other transports and are left out. Rows with the MAPI_P1 bit (envelope-only resends)
  never appear, and Bcc rows appear only with ``include_bcc=True``.
* Non-transmittable properties (`tags.NON_TRANSMITTABLE`) are never mapped to anything.
* Header text is single-line by construction. In the subject and in display names every run
  of control characters (CR, LF, TAB, NUL, C1 controls) and of Unicode line/paragraph separators
  becomes one space and the ends are stripped; display names additionally have every run of
  whitespace collapsed to one space (what an RFC 5322 phrase means anyway). E-mail addresses and
  message IDs are identifiers, not text: one containing whitespace or a control character is
  refused with MAPI_E_INVALID_PARAMETER, as is an address the `email` package cannot parse or a
  message ID too long for one header line. A message ID is written as it is stored.
* A UTF-8 address (EAI, RFC 6531) is allowed; `needs_smtputf8` tells whether a message needs the
  SMTPUTF8 extension, and `to_bytes` then serialises with `email.policy.SMTPUTF8`
  (`to_bytes_with_flags` gives the bytes and that answer from one conversion). Otherwise the
  output is pure ASCII (RFC 2047 words, RFC 2231 file names, base64/quoted-printable bodies).
* Subject and address headers are rendered with `email.header.Header` (see `_render_text`) to
  avoid a folding bug of Python 3.11's modern header API that loses blanks between encoded words.
* Speed: the modern API parses a header each time one is assigned or read (≈20-130 µs apiece),
  which made a small message cost ≈0.7 ms. Headers are therefore stored pre-rendered with
  ``set_raw`` and written as they are; text parts come from the content manager working under a
  compat32 policy (`_set_text`); the generator reads them back without parsing (`_WritePolicy`);
  a plain dot-atom address skips the address parser (`_SIMPLE_ADDRESS`). Attachment and multipart
  headers are still made by the modern API (their RFC 2231 parameters need its folding).

Inbound (`from_mime`): an incoming message as a transport's start_message fills it (spec §8.3),
never raising. PR_BODY has ``\\n`` line endings whatever the wire used. A bounce (what
`bounces.read_bounce` recognises: RFC 3464 and RFC 6533 reports, and the non-standard bounces of
Exim, qmail, Exchange …) becomes a ``REPORT.IPM.Note.*`` message with one recipient row per
reported recipient (spec §7). ``from_mime(data, submission=True)`` reads a message about to be
sent instead: a report stays a note, and the recipients are its To/Cc/Bcc (or Resent-*).
The Message-ID of the original message, which MAPI has no property for, is stored as its UTF-8
bytes in PR_REPORT_TAG (a postroom convention: the spooler finds the original by it);
`dsn_original_message_id` reads it from the raw report. A Message-ID is kept only when it is one
usable ID, exactly as written (`_message_id_of`); a malformed one is dropped rather than cut
short, so it can never make two messages share an ID. Whatever cannot be
converted exactly (no headers at all, a header that is not UTF-8, text not valid in its charset,
a broken MIME structure) keeps the bytes as received in an ``original-message.eml`` attachment:
a transport may delete the message on the server once it is stored.
"""

from __future__ import annotations

import binascii
import codecs
import email.policy
import functools
import io
import mimetypes
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from email import errors
from email.contentmanager import raw_data_manager
from email.generator import BytesGenerator
from email.header import Header, decode_header, make_header
from email.headerregistry import Address, AddressHeader, BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser, Parser
from email.policy import EmailPolicy
from email.utils import format_datetime, getaddresses, make_msgid, parsedate_to_datetime
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any, cast

from . import mime_reuse as _reuse
from . import original as _original
from .addressing import (
    ENCODED_WORD,
    ENCODED_WORD_PATTERN,
    FORBIDDEN_IN_EMAIL_ADDRESS,
    MAX_SMTP_ADDRESS,
    longer_than_smtp_allows,
)
from .bounces import ndr_codes, read_bounce
from .formats import tnef as _tnef
from .mapi import tags as T
from .mapi.codes import HResult, MAPIError
from .mapi.entryid import decode_one_off, is_one_off, one_off_entry_id, search_key
from .mapi.flags import MAPI_P1, MAPI_SUBMITTED, AttachMethod, NDRDiag, NDRReason, RecipientType
from .mapi.message import Attachment, MessageData, Props, Recipient

__all__ = [
    "RAW_ATTACHMENT_NAME",
    "dsn_original_message_id",
    "from_mime",
    "needs_smtputf8",
    "original_bytes",
    "raw_attachment",
    "status_to_ndr",
    "to_bytes",
    "to_bytes_with_flags",
    "to_mime",
]

SMTP = "SMTP"
UNPARSEABLE_SUBJECT = "(unparseable message)"
#: The attachment holding a message exactly as it was received, when converting it lost something.
RAW_ATTACHMENT_NAME = "original-message.eml"
#: How much of an unparseable message's text its body shows (all of it is in the attachment).
_PREVIEW_CHARS = 100_000

# Recipient-row constants not (yet) in postroom.mapi (mapidefs.h): PR_OBJECT_TYPE / PR_DISPLAY_TYPE values.
_MAPI_MAILUSER = 6
_DT_MAILUSER = 0

#: How deep embedded messages may nest (both directions); deeper ones stay opaque bytes inbound.
_MAX_DEPTH = 16

_HEADER_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_ID_FORBIDDEN = re.compile(r"[^\x21-\x7e]")
#: One message ID as a whole header value: printable ASCII, no white space, `<` and `>` only around it.
_ONE_MSG_ID = re.compile(r"<?[\x21-\x3b=\x3f-\x7e]+>?")
_COMMENT = re.compile(r"\([^()]*\)")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_ENCODED_WORD_GAP = re.compile(f"({ENCODED_WORD_PATTERN})[ \t]+(?={ENCODED_WORD_PATTERN})")
_LINE_BREAK = re.compile(r"[\r\n]")
# A plain ASCII dot-atom address (RFC 5322 §3.4.1 without quoting, comments or domain literals):
# every one the `email` package accepts as it is, with this very local part and domain.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@({_ATEXT}(?:\.{_ATEXT})*)")

_ADDRESS_HEADERS = (
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Bcc",
    "Disposition-Notification-To",
)

_ADDRESS_HEADER_NAMES = frozenset(h.lower() for h in _ADDRESS_HEADERS)

_IMPORTANCE_OUT = {0: ("low", "5"), 2: ("high", "1")}
_IMPORTANCE_IN = {"low": 0, "normal": 1, "high": 2}
_PRIORITY_OUT = {-1: "non-urgent", 1: "urgent"}
_PRIORITY_IN = {"non-urgent": -1, "normal": 0, "urgent": 1}
_BODY_ALTERNATIVES = frozenset({"text/plain", "text/html", "text/enriched", "text/richtext"})
_DR_ACTIONS = frozenset({"delivered", "relayed", "expanded"})


def _make_policy(base: EmailPolicy[EmailMessage]) -> EmailPolicy[EmailMessage]:
    # Disposition-Notification-To holds addresses (RFC 8098); the stock registry treats it as text.
    # (HeaderRegistry mixes BaseHeader into the class itself, hence the cast.)
    registry = HeaderRegistry()
    registry.map_to_type("disposition-notification-to", cast("type[BaseHeader]", AddressHeader))
    return base.clone(header_factory=registry)


# cte_type="7bit": the package then picks quoted-printable/base64 for non-ASCII bodies instead of
# 8bit, so the output needs neither 8BITMIME nor SMTPUTF8 unless an address demands it.
# refold_source="none": header lines rendered by `_render_*` below are written as they are.
_OUT_POLICY = _make_policy(email.policy.SMTP.clone(cte_type="7bit", refold_source="none"))
_IN_POLICY = email.policy.default
# Re-serialising a parsed embedded message: keep its header lines as they arrived.
_RAW_POLICY = email.policy.default.clone(refold_source="none")
# Text parts are made by the package's content manager (transfer encoding chosen and applied as
# `EmailMessage.set_content` does) on a scratch part with a compat32 policy, which stores header
# values as the strings they are instead of parsing each one into a header object.
_TEXT_POLICY = email.policy.compat32.clone(
    linesep=_OUT_POLICY.linesep, max_line_length=_OUT_POLICY.max_line_length, cte_type=_OUT_POLICY.cte_type
)

if TYPE_CHECKING:
    _EmailPolicy = EmailPolicy[EmailMessage]
else:
    _EmailPolicy = EmailPolicy


class _WritePolicy(_EmailPolicy):
    """`email.policy.SMTP`/`SMTPUTF8` for the generator (refold_source="none"), except that a
    header stored as a string is fetched as that string, as compat32 does, rather than parsed into
    a header object. The generator only asks for the content type, boundary and charset, which
    `Message` reads from the string as well; the modern parse of a Content-Type costs ≈90 µs and
    the generator fetches it three times per part. Header lines are written exactly as before."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if hasattr(value, "name"):
            return value  # a header object (made by add_attachment and friends)
        return _LINE_BREAK.sub("", value)


_WRITE_POLICIES = {
    (utf8, linesep): _WritePolicy(linesep=linesep, utf8=utf8, refold_source="none")
    for utf8 in (False, True)
    for linesep in ("\r\n", "\n")
}


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _legacy_bytes(exc: UnicodeError) -> tuple[str, int]:
    """A codec error handler: bytes that are not UTF-8 are read as Windows-1252 (Latin-1 where it
    has a gap), which is what 8-bit header text that is not UTF-8 almost always is."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    chunk = exc.object[exc.start : exc.end]
    return "".join(_windows_1252(byte) for byte in chunk), exc.end


def _windows_1252(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return chr(byte)


_LEGACY_ERRORS = "postroom-legacy-8bit"
codecs.register_error(_LEGACY_ERRORS, _legacy_bytes)


def _scrub(text: str) -> str:
    """Make text encodable as UTF-8: the parser's escaped raw bytes (8-bit or RFC 6532 UTF-8
    headers) are decoded as UTF-8, bytes that are not UTF-8 as Windows-1252 (`_legacy_bytes`),
    anything else unencodable becomes '?'."""
    if text.isascii():  # a flag of the string, no scan: nothing to scrub (a large body, at once)
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", _LEGACY_ERRORS)
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _header_text(value: object) -> str:
    """Subject-style header text: control/line-break runs → one space, ends stripped."""
    return _HEADER_BREAKS.sub(" ", _scrub(str(value))).strip()


def _display_name(value: object) -> str:
    """A display name: like `_header_text`, and whitespace runs collapsed to one space."""
    return " ".join(_header_text(value).split())


def _invalid(message: str) -> MAPIError:
    return MAPIError(HResult.MAPI_E_INVALID_PARAMETER, message)


def _address(name: object, addr: object, what: str) -> Address:
    """An `Address` for a header, validated by the `email` package; MAPIError when unusable."""
    spec = str(addr)
    if not spec or FORBIDDEN_IN_EMAIL_ADDRESS.search(spec):
        raise _invalid(f"{what}: the e-mail address {spec!r} contains whitespace or control characters")
    if longer_than_smtp_allows(spec):
        raise _invalid(f"{what}: the e-mail address {spec[:40]!r}… is longer than {MAX_SMTP_ADDRESS} bytes")
    if ENCODED_WORD.search(spec):
        raise _invalid(f"{what}: the e-mail address {spec!r} contains an RFC 2047 encoded word")
    display = _display_name(name)
    if display.lower() == spec.lower():
        display = ""
    simple = _SIMPLE_ADDRESS.fullmatch(spec)
    if simple is not None and "=?" not in spec:
        # What the parser below would make of it, without the parse; "=?" is left to the parser,
        # which reads a local part starting so as an encoded word.
        return Address(display_name=display, username=simple.group(1), domain=simple.group(2))
    try:
        return Address(display_name=display, addr_spec=spec)
    except Exception as exc:
        if not _NON_ASCII.search(spec):
            raise _invalid(f"{what}: {spec!r} is not a valid e-mail address ({exc})") from exc
    # A UTF-8 local part (RFC 6532): the package accepts it only as username=; check the syntax
    # with an ASCII stand-in for every non-ASCII character.
    try:
        Address(addr_spec=_NON_ASCII.sub("x", spec))
        local, _, domain = spec.rpartition("@")
        return Address(display_name=display, username=local, domain=domain)
    except Exception as exc:
        raise _invalid(f"{what}: {spec!r} is not a valid e-mail address ({exc})") from exc


def _msg_id(value: object, what: str) -> str:
    """A `<…>` message ID; MAPIError for whitespace, control or non-ASCII characters, or one too
    long for a header line (it cannot be folded)."""
    text = str(value)
    if not text or _ID_FORBIDDEN.search(text):
        raise _invalid(f"{what}: {text!r} contains whitespace, control or non-ASCII characters")
    if not text.startswith("<"):
        text = "<" + text
    if not text.endswith(">"):
        text += ">"
    if len(what) + 2 + len(text) > _MAX_HEADER_LINE:
        raise _invalid(f"{what}: {text[:40]!r}… does not fit on a header line")
    return text


# Subject and address headers are rendered with `email.header.Header` and stored with set_raw():
# Python 3.11's folder of the modern API drops the blank between two encoded words when it folds
# there (CPython gh-144156), which loses spaces in long non-ASCII subjects and names. Header puts
# every blank inside the encoded words, as RFC 2047 §5 wants.
_MAX_LINE = 76  # RFC 2047 §2: a line containing an encoded word is at most 76 characters
_MAX_PLAIN_WORD = 60
_MAX_HEADER_LINE = 998  # RFC 5322 §2.1.1: the hard limit, CRLF excluded


def _needs_encoded_words(text: str) -> bool:
    """Non-ASCII, text that looks like an encoded word, or a word too long to fold plainly."""
    return not text.isascii() or "=?" in text or any(len(word) > _MAX_PLAIN_WORD for word in text.split())


def _render_text(text: str, header: str) -> str:
    """The folded value of an unstructured header (one line of `_header_text` output)."""
    encode = _needs_encoded_words(text)
    if not encode and len(header) + 2 + len(text) <= _MAX_LINE:
        return text  # what Header makes of plain text that fits on the line, without the work
    charset = "utf-8" if encode else "us-ascii"
    return Header(text, charset, maxlinelen=_MAX_LINE, header_name=header).encode(linesep="\n")


def _render_addresses(addresses: list[Address], header: str) -> str:
    """The folded value of an address header: one address per line when they don't fit on one."""
    rendered: list[str] = []
    for addr in addresses:
        name = addr.display_name
        plain = str(addr)  # the package quotes ASCII names as needed, but never folds them
        # Octets, not characters: a UTF-8 address (SMTPUTF8) is longer on the wire than in len().
        if not name or (not _needs_encoded_words(name) and len(header) + 3 + _octets(plain) <= _MAX_HEADER_LINE):
            rendered.append(plain)
        else:
            words = Header(name, "utf-8", maxlinelen=_MAX_LINE, header_name=header if not rendered else None)
            encoded = words.encode(linesep="\n")
            rendered.append(f"{encoded} <{addr.addr_spec}>")
    single = ", ".join(rendered)
    if "\n" not in single and len(header) + 2 + _octets(single) <= _MAX_LINE:
        return single
    return ",\n ".join(rendered)


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _filename_param(filename: str) -> tuple[str, str, str] | None:
    """The filename= parameter in the (charset, language, value) form of RFC 2231.

    Given a plain str, the package parses the parameter again and decodes an RFC 2047 encoded
    word inside the quotes ("=?utf-8?q?=0D=0ABcc:...?="), then writes the decoded CR LF out
    raw: a header injection. The RFC 2231 form is never decoded that way.
    """
    return ("utf-8", "", filename) if filename else None


def _as_int(value: object, default: int) -> int:
    if isinstance(value, int | float | str):
        try:
            return int(value)
        except ValueError:
            return default
    return default


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class _TextExtractor(HTMLParser):
    _BLOCKS = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote"})
    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCKS:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.chunks.append(data)


def _html_to_text(html: str) -> str:
    """A crude plain-text rendering of HTML (for PR_BODY when only HTML exists, and vice versa)."""
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:
        return html
    lines = [" ".join(line.split()) for line in "".join(parser.chunks).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


# --------------------------------------------------------------------------------------
# MAPI → MIME
# --------------------------------------------------------------------------------------


def _originator(props: Props, name_tag: int, addr_tag: int, type_tag: int) -> tuple[str, str] | None:
    """(name, address) of an SMTP originator in the message's properties; missing addrtype = SMTP."""
    addr = props.get(addr_tag)
    if not addr:
        return None
    if str(props.get(type_tag) or SMTP).upper() != SMTP:
        return None
    return str(props.get(name_tag) or ""), str(addr)


def _read_receipt_target(props: Props, from_addr: Address | None) -> Address | None:
    entry = props.get(T.PR_READ_RECEIPT_ENTRYID)
    if isinstance(entry, bytes) and is_one_off(entry):
        try:
            one_off = decode_one_off(entry)
            if one_off.address_type.upper() == SMTP and one_off.email_address:
                return _address("", one_off.email_address, "Disposition-Notification-To")
        except MAPIError:
            pass  # not usable: notifications go to the author
    return None if from_addr is None else Address(username=from_addr.username, domain=from_addr.domain)


def _attachment_type(att: Attachment, filename: str) -> tuple[str, str]:
    tag = str(att.props.get(T.PR_ATTACH_MIME_TAG) or "").split(";", 1)[0].strip()
    if not _MIME_TYPE.fullmatch(tag):
        tag = (mimetypes.guess_type(filename)[0] or "") if filename else ""
    maintype, _, subtype = tag.lower().partition("/")
    # Bytes can't be sent as message/* or multipart/* (those may not be base64-encoded; RFC 2046).
    if not subtype or maintype in ("message", "multipart"):
        return "application", "octet-stream"
    return maintype, subtype


def _strip_part_mime_version(msg: Message) -> None:
    """The package stamps MIME-Version on every part it creates; only the top level needs it."""
    if not msg.is_multipart() or msg.get_content_maintype() != "multipart":
        return
    for part in msg.get_payload():
        if isinstance(part, Message) and not getattr(part, _reuse.REUSED, False):
            del part["MIME-Version"]
            _strip_part_mime_version(part)


def _set_text(part: EmailMessage, text: str, subtype: str) -> None:
    """Give ``part`` a text/``subtype`` UTF-8 content, as ``part.set_content(text, subtype)`` does
    (same Content-Type, transfer encoding and payload), but with header values stored as strings:
    the content manager works on a scratch part with the compat32 `_TEXT_POLICY`. A 7bit text
    needs no content manager at all: its headers are those of an empty text (`_seven_bit_headers`)
    and its payload is made at once (`_seven_bit_payload`)."""
    payload = _seven_bit_payload(text)
    if payload is not None:
        for name, value in _seven_bit_headers(subtype):
            part.set_raw(name, value)
        part.set_payload(payload)
        return
    scratch = MIMEPart(policy=_TEXT_POLICY)
    raw_data_manager.set_content(scratch, text, subtype)
    for name, value in scratch.raw_items():
        part.set_raw(name, value)
    part.set_payload(scratch.get_payload())


@functools.cache
def _seven_bit_headers(subtype: str) -> tuple[tuple[str, str], ...]:
    """The header fields the content manager gives a 7bit text/``subtype`` in UTF-8 (those of an
    empty text: every text `_seven_bit_payload` takes gets the same ones), made once per subtype.
    The content manager costs about 10 µs per part, a sixth of rendering a short message."""
    scratch = MIMEPart(policy=_TEXT_POLICY)
    raw_data_manager.set_content(scratch, "", subtype)
    return tuple(scratch.raw_items())


def _seven_bit_payload(text: str) -> str | None:
    """The payload the content manager makes of an ASCII text whose lines all fit (7bit, each line
    end LF, one at the end), made at once instead of line by line; None for any other text (the
    content manager decides). An empty text is 7bit as well, so the headers are the same."""
    if not text.isascii() or "\r" in text:
        return None
    if max(map(len, text.split("\n"))) > (_TEXT_POLICY.max_line_length or 78):
        return None
    return text if text.endswith("\n") else text + "\n"


def _build(msg: MessageData, sender: Recipient | None, include_bcc: bool, depth: int) -> EmailMessage:
    # Every header is stored with set_raw(), as the string it is written as: assigning one with
    # out[name] = value would parse it into a header object (the bulk of the cost of a message).
    if depth > _MAX_DEPTH:
        raise _invalid(f"embedded messages nest deeper than {_MAX_DEPTH} levels")
    top = depth == 0
    props = msg.props
    out = EmailMessage(policy=_OUT_POLICY)
    reuse = _reuse_plan(msg) if top and msg.original is not None else None

    # --- originator ---------------------------------------------------------------
    representing = _originator(
        props, T.PR_SENT_REPRESENTING_NAME, T.PR_SENT_REPRESENTING_EMAIL_ADDRESS, T.PR_SENT_REPRESENTING_ADDRTYPE
    )
    actual: tuple[str, str] | None
    if sender is not None:
        kind = sender.address_type.upper() or SMTP
        actual = (str(sender.get(T.PR_DISPLAY_NAME) or ""), sender.email_address) if kind == SMTP else None
        if actual is not None and not actual[1]:
            actual = None
    else:
        actual = _originator(props, T.PR_SENDER_NAME, T.PR_SENDER_EMAIL_ADDRESS, T.PR_SENDER_ADDRTYPE)
    author = representing or actual
    from_addr = _address(*author, "From") if author else None
    if from_addr is not None:
        out.set_raw("From", _render_addresses([from_addr], "From"))
    if representing and actual and representing[1].lower() != actual[1].lower():
        out.set_raw("Sender", _render_addresses([_address(*actual, "Sender")], "Sender"))

    # --- recipients -----------------------------------------------------------------
    by_kind: dict[int, list[Address]] = {RecipientType.TO: [], RecipientType.CC: [], RecipientType.BCC: []}
    for row in msg.recipients:
        value = _as_int(row.get(T.PR_RECIPIENT_TYPE, RecipientType.TO), RecipientType.TO)
        if value & MAPI_P1 or row.address_type.upper() != SMTP:
            continue
        kind_value = value & 0xFFFF
        if kind_value in by_kind:
            name = row.get(T.PR_DISPLAY_NAME) or ""
            by_kind[kind_value].append(_address(name, row.email_address, "recipient"))
    for kind_value, header in ((RecipientType.TO, "To"), (RecipientType.CC, "Cc"), (RecipientType.BCC, "Bcc")):
        if by_kind[kind_value] and (kind_value != RecipientType.BCC or include_bcc):
            out.set_raw(header, _render_addresses(by_kind[kind_value], header))

    # --- envelope-ish headers ---------------------------------------------------------
    subject = _header_text(props.get(T.PR_SUBJECT) or "")
    if subject:
        out.set_raw("Subject", _render_text(subject, "Subject"))
    submitted = props.get(T.PR_CLIENT_SUBMIT_TIME)
    if isinstance(submitted, datetime):
        out.set_raw("Date", format_datetime(_aware(submitted)))
    elif top:
        out.set_raw("Date", format_datetime(datetime.now(UTC)))
    message_id = props.get(T.PR_INTERNET_MESSAGE_ID)
    if message_id:
        out.set_raw("Message-ID", _msg_id(message_id, "Message-ID"))
    elif top:
        domain = from_addr.domain if from_addr is not None and from_addr.domain.isascii() else "localhost"
        generated = _msg_id(make_msgid(domain=domain.strip("[]") or "localhost"), "Message-ID")
        props[T.PR_INTERNET_MESSAGE_ID] = generated  # a retry must reuse the same ID
        out.set_raw("Message-ID", generated)
    if props.get(T.PR_IN_REPLY_TO_ID):
        out.set_raw("In-Reply-To", _msg_id(props[T.PR_IN_REPLY_TO_ID], "In-Reply-To"))
    importance = _IMPORTANCE_OUT.get(_as_int(props.get(T.PR_IMPORTANCE, 1), 1))
    if importance is not None:
        out.set_raw("Importance", importance[0])
        out.set_raw("X-Priority", importance[1])
    priority = _PRIORITY_OUT.get(_as_int(props.get(T.PR_PRIORITY, 0), 0))
    if priority is not None:
        out.set_raw("Priority", priority)
    if props.get(T.PR_READ_RECEIPT_REQUESTED):
        target = _read_receipt_target(props, from_addr)
        if target is not None:
            out.set_raw("Disposition-Notification-To", _render_addresses([target], "Disposition-Notification-To"))

    if reuse is not None and reuse.whole:  # only header fields were edited: the original content stays
        whole = _take_content(out, reuse.root)
        _reuse.merge_headers(whole, reuse.block)
        assert msg.original is not None
        setattr(whole, _reuse.WHOLE_BODY, _original.split(msg.original.read_all())[1])
        return whole

    # --- content ----------------------------------------------------------------------
    body = props.get(T.PR_BODY)
    html_value = props.get(T.PR_HTML)
    html: str | None = None
    if isinstance(html_value, bytes | bytearray | memoryview):
        html = bytes(html_value).decode("utf-8", "replace")
    elif isinstance(html_value, str):
        html = _scrub(html_value)
    text = _scrub(str(body)) if body is not None else _html_to_text(html) if html is not None else ""
    # What out.set_content(text) and out.add_alternative(html, subtype="html") make, minus the
    # header parsing (see `_set_text`).
    _set_text(out, text, "plain")
    out.set_raw("MIME-Version", "1.0")
    if html is not None:
        out.make_alternative()
        alternative = EmailMessage(policy=_OUT_POLICY)
        _set_text(alternative, html, "html")
        out.attach(alternative)
    if reuse is not None and reuse.wrap is not None:  # attachments only added: the original content first
        for name in [n for n in out if n.lower().startswith("content-")]:
            del out[name]
        out.set_raw("Content-Type", "multipart/mixed")
        out.set_payload([reuse.wrap])

    for num, att in enumerate(msg.attachments):
        try:
            method = att.method
        except ValueError:
            continue
        filename = _header_text(att.filename)
        if reuse is not None and num in reuse.held:
            continue
        kept = reuse.parts.get(num) if reuse is not None else None
        typed = att.mime_type.split(";", 1)[0].strip().lower()
        if kept is not None or (method == AttachMethod.BY_VALUE and typed in _TYPED_PARTS):
            if out.get_content_type() != "multipart/mixed":
                out.make_mixed()
            out.attach(cast(EmailMessage, kept or _typed_part(att.read_all(), typed, filename)))
        elif method == AttachMethod.EMBEDDED_MSG and att.embedded is not None:
            inner = _build(att.embedded, None, False, depth + 1)
            cte = "8bit" if needs_smtputf8(inner) else "7bit"
            out.add_attachment(inner, cte=cte, filename=_filename_param(filename))
        elif method == AttachMethod.BY_VALUE:
            maintype, subtype = _attachment_type(att, filename)
            content_id = att.props.get(T.PR_ATTACH_CONTENT_ID)
            cid = _msg_id(content_id, "Content-ID") if content_id else None
            data = att.read_all()
            large = len(data) >= _LARGE_BODY
            # A large attachment gets the content manager's headers for no data, then its data
            # encoded at once (its base64 is encoded 57 bytes at a time in a Python loop).
            out.add_attachment(b"" if large else data, maintype, subtype, filename=_filename_param(filename), cid=cid)
            if large:
                part = cast(list[Message], out.get_payload())[-1]
                part.set_payload(_base64_lines(data, part.policy.max_line_length or 78))
        # By reference / OLE attachments are not sent: the transport has no file system to share.

    _strip_part_mime_version(out)
    if reuse is not None:
        _reuse.merge_headers(out, reuse.block)
    return out


class _Plan:
    """What a re-rendering keeps of the original (`mime_reuse`): its header block, and its whole
    content (as the message's, or as the first part beside added attachments) or the parts of the
    unedited attachments."""

    def __init__(
        self,
        block: bytes,
        root: EmailMessage,
        whole: bool,
        parts: dict[int, Message],
        held: set[int] | None = None,
        wrap: Message | None = None,
    ) -> None:
        self.block, self.root, self.whole, self.parts = block, root, whole, parts
        self.held = held or set()  # attachments that a reused entity already holds
        self.wrap = wrap  # attachments were only added: the original content, as the first part


def _reuse_plan(msg: MessageData) -> _Plan | None:
    """How to render `msg` again keeping what is unedited of its original; None when the original
    cannot be parsed. Original content with a line over 998 octets is never reused."""
    assert msg.original is not None
    raw = msg.original.read_all()
    trace = _Trace()
    imported = _from_mime(raw, 0, trace=trace)
    if imported.original is not None and imported.original.fingerprint != msg.original.fingerprint:
        # Not as it arrived: read as a message to send (`send --eml`), when that is how it was read.
        submitted = _Trace()
        as_submitted = _from_mime(raw, 0, submission=True, trace=submitted)
        if as_submitted.original is not None and as_submitted.original.fingerprint == msg.original.fingerprint:
            imported, trace = as_submitted, submitted
    if trace.root is None:
        return None
    block = _original.split(raw)[0]
    if any(len(line.rstrip(b"\r")) > _MAX_HEADER_LINE for line in raw.split(b"\n")):
        return _Plan(block, trace.root, False, {})
    if _reuse.same_content(msg, imported) and _writable(trace.root):
        return _Plan(block, trace.root, True, {})
    if _reuse.only_added(msg, imported) and _writable(trace.root):
        entity = _content_entity(trace.root, trace.root)
        setattr(entity, _reuse.REUSED, True)
        return _Plan(block, trace.root, False, {}, set(range(len(imported.attachments))), entity)
    units = [
        (_content_entity(unit, trace.root), inside)
        for unit, inside in _reuse.sealed_units(trace.root, trace.parts, trace.bodies)
        if _writable(unit)
    ]
    writable = [p if _writable(p) else None for p in trace.parts]
    parts, held = _reuse.reused_parts(msg, imported, writable, units)
    return _Plan(block, trace.root, False, parts, held)


def _content_entity(part: Message, root: EmailMessage) -> Message:
    """`part` as a body part: the root of the message stands for its content only (its Content-*
    fields and body), without the message's other header fields."""
    if part is not root:
        return part
    entity = EmailMessage(policy=_IN_POLICY)
    for name, value in root.raw_items():
        if name.lower().startswith("content-"):
            entity.set_raw(name, value)
    entity.set_payload(root.get_payload())  # a multipart's list of parts, as parsed
    entity.preamble, entity.epilogue = root.preamble, root.epilogue
    return entity


def _writable(part: Message) -> bool:
    """Whether the generator can write a parsed part back (odd input can make it choke)."""
    try:
        part.as_bytes(policy=_WRITE_POLICIES[False, "\r\n"])
    except Exception:
        return False
    return True


def _take_content(out: EmailMessage, root: EmailMessage) -> EmailMessage:
    """The parsed original `root` (its Content-* fields and its body, untouched) with the other
    header fields of `out`; `root` is this rendering's own parse, so it may be changed."""
    content = [(n, v) for n, v in root.raw_items() if n.lower().startswith("content-")]
    for name in {n for n in root}:
        del root[name]
    for name, value in out.raw_items():
        if not name.lower().startswith("content-") and name.lower() != "mime-version":
            root.set_raw(name, value)
    root.set_raw("MIME-Version", "1.0")
    for name, value in content:
        root.set_raw(name, value)
    return root


#: Attachment types sent as they came (7bit or 8bit, never base64): RFC 3464, 6533, 2046, 6522.
_TYPED_PARTS = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "message/external-body",
        "message/disposition-notification",
        "message/global-headers",
        "text/rfc822-headers",
    }
)


def _typed_part(data: bytes, ctype: str, filename: str) -> Message:
    """A part of one of `_TYPED_PARTS` holding `data` as it is, parsed as the `email` package reads
    such a part so that its generator writes it back unchanged."""
    cte = "7bit" if data.isascii() else "8bit"
    part = BytesParser(policy=_OUT_POLICY).parsebytes(
        f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode("ascii") + data
    )
    if filename:
        part.add_header("Content-Disposition", "attachment", filename=_filename_param(filename))
    return part


def to_mime(msg: MessageData, *, sender: Recipient | None = None, include_bcc: bool = False) -> EmailMessage:
    """Convert a MAPI message to an RFC 5322/MIME message (policy `email.policy.SMTP`).

    From is PR_SENT_REPRESENTING_* when present, else the sender: ``sender`` (the identity that is
    actually sending, e.g. the transport's logon identity) if given, else PR_SENDER_*. When both a
    representing and an actual sender exist with different addresses, Sender carries the actual one.
    A missing PR_INTERNET_MESSAGE_ID is generated and stored back into ``msg.props`` so a retry
    sends the same ID; a missing PR_CLIENT_SUBMIT_TIME is "now" and a naive one is taken as UTC
    (neither is invented for embedded messages). Header sanitising (module docstring): CR/LF in
    the subject or a display name becomes a space; an address or message ID with CR/LF/NUL or
    whitespace raises ``MAPIError(MAPI_E_INVALID_PARAMETER)``. Serialise with `to_bytes`, which
    picks the SMTPUTF8 policy when a UTF-8 address needs it.
    """
    return _build(msg, sender, include_bcc, 0)


def needs_smtputf8(msg: EmailMessage, *, envelope: Iterable[str] = ()) -> bool:
    """Whether sending ``msg`` needs SMTPUTF8 (RFC 6531): a UTF-8 address in any address header
    of the message or of an embedded message, or among the ``envelope`` addresses (MAIL FROM and
    RCPT TO, which include Bcc recipients that are not in the headers)."""
    if any(not str(addr).isascii() for addr in envelope):
        return True
    for part in msg.walk():
        for name, value in part.raw_items():
            # Names are RFC 2047 encoded by the builder, so raw non-ASCII text in an address header
            # can only come from a UTF-8 address; checking the raw value avoids parsing the header.
            if (
                not str(value).isascii()
                and name.lower() in _ADDRESS_HEADER_NAMES
                and any(not spec.isascii() for _, spec in _get_addresses(part, name))
            ):
                return True
    return False


def to_bytes_with_flags(
    msg: MessageData,
    *,
    sender: Recipient | None = None,
    include_bcc: bool = False,
    linesep: str = "\r\n",
) -> tuple[bytes, bool]:
    """`to_bytes`, and whether the headers need SMTPUTF8 (``needs_smtputf8(to_mime(msg))``; the
    envelope addresses are the caller's to check), from a single conversion."""
    if linesep not in ("\r\n", "\n"):
        raise _invalid(f"linesep must be CRLF or LF, not {linesep!r}")
    if _original.sendable(msg):  # the original bytes, with only the transport's changes
        data = _original.as_sent(msg, include_bcc=include_bcc, linesep=linesep)
        head = BytesParser(policy=_IN_POLICY).parsebytes(_original.split(data)[0] + b"\n\n", headersonly=True)
        return data, needs_smtputf8(head)
    em = to_mime(msg, sender=sender, include_bcc=include_bcc)
    utf8 = needs_smtputf8(em)
    body = getattr(em, _reuse.WHOLE_BODY, None)
    out = io.BytesIO()
    _Generator(out, mangle_from_=False, policy=_WRITE_POLICIES[utf8, linesep]).flatten(em)  # as em.as_bytes
    data = out.getvalue()
    if body is not None:  # the original content, byte for byte, after the rendered header block
        end = linesep.encode("ascii")
        data = _original.split(data)[0] + end + end + _original.line_ends(body, end)
    return data, utf8


def _base64_lines(data: bytes, max_line_length: int) -> str:
    """`data` in base64 as the content manager writes it (lines of max_line_length // 4 * 3 bytes'
    worth, each ended by LF), encoded in one call instead of one call per line."""
    width = max_line_length // 4 * 4
    encoded = binascii.b2a_base64(data, newline=False)
    lines = b"\n".join(encoded[i : i + width] for i in range(0, len(encoded), width))
    return (lines + b"\n").decode("ascii") if data else ""


class _Generator(BytesGenerator):
    """The package's generator, but a payload without CR is written with all its line ends made
    the output's at once: it writes one line at a time (50 ms for a MiB of base64 or text)."""

    def _write_lines(self, lines: str) -> None:
        if "\r" in lines:
            super()._write_lines(lines)  # type: ignore[misc]  # a private method of the package
            return
        if lines:
            self.write(lines.replace("\n", self._NL))  # type: ignore[attr-defined]


#: From this size on, an attachment's base64 (`_base64_lines`) is made at once instead of by the
#: content manager, line by line.
_LARGE_BODY = 64 * 1024


def original_bytes(msg: MessageData) -> bytes | None:
    """The bytes `msg` arrived as, exactly, when it has them and was not edited since; else None."""
    return _original.exact(msg)


def to_bytes(
    msg: MessageData,
    *,
    sender: Recipient | None = None,
    include_bcc: bool = False,
    linesep: str = "\r\n",
) -> bytes:
    """`to_mime` serialised for SMTP DATA (CRLF) or a Maildir file (``linesep="\\n"``).

    Uses `email.policy.SMTP`, or `email.policy.SMTPUTF8` when `needs_smtputf8` says so (header
    lines written as `to_mime` rendered them). Dot stuffing is the SMTP client's business, not
    done here.
    """
    return to_bytes_with_flags(msg, sender=sender, include_bcc=include_bcc, linesep=linesep)[0]


# --------------------------------------------------------------------------------------
# status codes → NDR reason/diagnostic
# --------------------------------------------------------------------------------------


def status_to_ndr(enhanced: str) -> tuple[NDRReason, NDRDiag]:
    """Map an SMTP enhanced status code (RFC 3463 ``X.Y.Z``) to PR_NDR_REASON_CODE/PR_NDR_DIAG_CODE.

    ``enhanced`` may be the bare code or text that contains it (``"550 5.1.1 User unknown"``);
    without a code the answer is (TRANSFER_FAILED, NO_DIAGNOSTIC). The table, every code of
    RFC 3463 and the IANA registry (X.1.0 to X.7.30), is `bounces.ndr_codes`'.
    """
    return ndr_codes(enhanced)


# --------------------------------------------------------------------------------------
# MIME → MAPI
# --------------------------------------------------------------------------------------


def _get_text(part: Message, name: str) -> str:
    """A header's decoded value, or its raw value if the package chokes on it; '' when absent.

    8-bit text that is not UTF-8 is read by `_scrub` (the package would make it U+FFFD)."""
    for key, raw in part.raw_items():
        if key.lower() == name.lower() and _undecodable(str(raw)):
            return _decode_words(_scrub("".join(str(raw).splitlines())))
    try:
        value = part.get(name)
        return "" if value is None else str(value)
    except Exception:
        for key, raw in part.raw_items():
            if key.lower() == name.lower():
                return str(raw)
        return ""


def _get_date(part: Message, name: str) -> datetime | None:
    """A date header as an aware UTC datetime, or None when absent or unreadable.

    Read as the email package's `DateHeader` reads it (`parsedate_to_datetime` of the field's
    unfolded text; an encoded word is not decoded there either), without building the header
    object, the dearer step on the listener's intake (issue 18)."""
    wanted = name.lower()
    for key, raw in part.raw_items():
        if key.lower() == wanted:
            try:
                when = parsedate_to_datetime(" ".join(str(raw).split()))
            except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: a huge year
                return None
            return _aware(when).astimezone(UTC)
    return None


def _decode_words(text: str) -> str:
    try:
        return str(make_header(decode_header(text)))
    except Exception:
        return text


def _address_pairs(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """(display name, address) pairs of one unfolded address field. A short field is remembered
    (the last 1,024): the email package's address parser is the dearest step of reading a message,
    and the programs that hand mail to the listener send the same From and To again and again. A
    long one (a list of many recipients) is parsed each time, so the cache stays small."""
    if len(raw) > _REMEMBERED_FIELD:
        return _parse_address_pairs(name, raw)
    return _remembered_address_pairs(name, raw)


def _parse_address_pairs(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    # Python 3.11's phrase parser keeps the blank between two adjacent encoded words, which
    # RFC 2047 §6.2 says to drop (long names are folded exactly so); drop it before parsing.
    unfolded = _ENCODED_WORD_GAP.sub(r"\1", _scrub(raw) if _undecodable(raw) else raw)
    try:
        header = _IN_POLICY.header_factory(name, unfolded)
        return tuple((str(a.display_name), str(a.addr_spec)) for a in header.addresses)
    except Exception:
        # e.g. a name that decodes to CR/LF, which the package refuses outright
        return tuple((_decode_words(n), a) for n, a in getaddresses([raw]))


#: The longest address field `_address_pairs` remembers: 1,024 of them and their pairs stay near 2 MiB.
_REMEMBERED_FIELD = 1024
_remembered_address_pairs = functools.lru_cache(maxsize=1024)(_parse_address_pairs)


def _get_addresses(part: Message, name: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of an address header, groups flattened, empties dropped."""
    pairs: list[tuple[str, str]] = []
    for key, value in part.raw_items():
        if key.lower() != name.lower():
            continue
        pairs.extend(_address_pairs(name, "".join(str(value).splitlines())))
    cleaned = [(_display_name(n), _HEADER_BREAKS.sub("", _scrub(a)).strip()) for n, a in pairs]
    return [(n, a) for n, a in cleaned if a and a != "<>"]


def _smtp_identity(name: str, addr: str) -> tuple[str, bytes, bytes]:
    """(display name, one-off entry ID, search key) of an SMTP address."""
    display = name or addr
    return display, one_off_entry_id(display, SMTP, addr), search_key(SMTP, addr)


def _set_originator(props: Props, tags: tuple[int, int, int, int, int], who: tuple[str, str]) -> None:
    name_tag, addr_tag, type_tag, entry_tag, key_tag = tags
    props[name_tag], props[entry_tag], props[key_tag] = _smtp_identity(*who)
    props[addr_tag] = who[1]
    props[type_tag] = SMTP


def _recipient(name: str, addr: str, kind: int, row_id: int) -> Recipient:
    display, entry_id, key = _smtp_identity(name, addr)
    return Recipient(
        props={
            T.PR_DISPLAY_NAME: display,
            T.PR_ADDRTYPE: SMTP,
            T.PR_EMAIL_ADDRESS: addr,
            T.PR_RECIPIENT_TYPE: int(kind),
            T.PR_ENTRYID: entry_id,
            T.PR_SEARCH_KEY: key,
            T.PR_OBJECT_TYPE: _MAPI_MAILUSER,
            T.PR_DISPLAY_TYPE: _DT_MAILUSER,
        },
        row_id=row_id,
    )


def _raw_header_block(raw: bytes) -> str:
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    block = raw[: min(ends)] if ends else raw
    return block.decode("utf-8", _LEGACY_ERRORS)


def _serialise(part: Message) -> bytes:
    """A parsed part back to bytes; the generator can choke on odd input, then compat32, then b''."""
    for policy in (_RAW_POLICY, email.policy.compat32):
        try:
            return part.as_bytes(policy=policy)
        except Exception:
            continue
    return b""


def _header_lines(part: Message) -> str:
    """The header block of an already parsed message, as PR_TRANSPORT_MESSAGE_HEADERS text."""
    return "".join(f"{key}: {_scrub(str(value))}\n" for key, value in part.raw_items())


def _part_bytes(part: Message) -> bytes:
    """The decoded content of a leaf part; message/* parts other than rfc822 re-serialised."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload
    inner = part.get_payload()
    if isinstance(inner, list):
        return b"".join(_serialise(sub) for sub in inner if isinstance(sub, Message))
    return _scrub(str(inner or "")).encode("utf-8")


def _part_text(part: Message) -> str:
    try:
        content = part.get_content() if isinstance(part, EmailMessage) else None
        if isinstance(content, str):
            return content.replace("\r\n", "\n").replace("\r", "\n")
    except Exception:
        pass
    raw = _part_bytes(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        text = raw.decode(charset, "replace")
    except LookupError:
        text = raw.decode("utf-8", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _find_body(msg: EmailMessage, subtype: str) -> Message | None:
    try:
        return msg.get_body(preferencelist=(subtype,))
    except Exception:
        return None


def _filename(part: Message) -> str:
    try:
        return _header_text(part.get_filename() or "")
    except Exception:
        return ""


def _is_attachment_like(part: Message) -> bool:
    try:
        return part.get_content_disposition() == "attachment" or bool(part.get_filename())
    except Exception:
        return False


class _Collector:
    """Walks a parsed message: body parts, attachments (by value and embedded)."""

    def __init__(self, root: EmailMessage, md: MessageData, depth: int, skip: set[int]) -> None:
        self.md = md
        self.depth = depth
        self.skip = skip
        self.parts: list[Message] = []  # the part each attachment came from, in order
        self.plain = _find_body(root, "plain")
        self.html = _find_body(root, "html")
        for body in (self.plain, self.html):
            if body is not None:
                skip.add(id(body))

    def visit(self, part: Message, parent_subtype: str | None) -> None:
        if id(part) in self.skip:
            return
        ctype = part.get_content_type()
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            for sub in part.get_payload():
                if isinstance(sub, Message):
                    self.visit(sub, part.get_content_subtype())
            return
        if parent_subtype == "alternative" and ctype in _BODY_ALTERNATIVES and not _is_attachment_like(part):
            return  # another rendering of the body we already have
        # One odd part must not cost the whole message: fall back to its bytes, else drop it.
        makers = (
            (self._embedded, self._by_value) if ctype in ("message/rfc822", "message/global") else (self._by_value,)
        )
        for make in makers:
            try:
                self.md.attachments.append(make(part))
                self.parts.append(part)
                return
            except Exception:
                continue

    def _by_value(self, part: Message) -> Attachment:
        num = len(self.md.attachments)
        data = _part_bytes(part)
        props: Props = {
            T.PR_ATTACH_METHOD: int(AttachMethod.BY_VALUE),
            T.PR_ATTACH_MIME_TAG: part.get_content_type(),
            T.PR_ATTACH_SIZE: len(data),
            T.PR_ATTACH_NUM: num,
            T.PR_RENDERING_POSITION: -1,
        }
        filename = _filename(part)
        if filename:
            # postroom does not synthesise 8.3 names: both carry the real name.
            props[T.PR_ATTACH_LONG_FILENAME] = filename
            props[T.PR_ATTACH_FILENAME] = filename
            extension = os.path.splitext(filename)[1]
            if extension:
                props[T.PR_ATTACH_EXTENSION] = extension
        content_id = _header_text(_get_text(part, "Content-ID")).strip("<>")
        if content_id:
            props[T.PR_ATTACH_CONTENT_ID] = content_id
        return Attachment(props=props, num=num, data=data, size=len(data))

    def _embedded(self, part: Message) -> Attachment:
        num = len(self.md.attachments)
        if self.depth + 1 > _MAX_DEPTH:
            return self._by_value(part)
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], EmailMessage):
            inner = payload[0]  # already parsed with the outer message: convert it as it is
            size = len(_serialise(inner))
            embedded = _convert(inner, _header_lines(inner), self.depth + 1)
        else:  # e.g. a base64-encoded message/rfc822 (not allowed, but seen)
            inner_bytes = _part_bytes(part)
            size = len(inner_bytes)
            embedded = _from_mime(inner_bytes, self.depth + 1)
        filename = _filename(part)
        props: Props = {
            T.PR_ATTACH_METHOD: int(AttachMethod.EMBEDDED_MSG),
            T.PR_ATTACH_MIME_TAG: "message/rfc822",
            T.PR_ATTACH_SIZE: size,
            T.PR_ATTACH_NUM: num,
            T.PR_RENDERING_POSITION: -1,
            T.PR_DISPLAY_NAME: filename or embedded.subject,
        }
        if filename:
            props[T.PR_ATTACH_LONG_FILENAME] = filename
            props[T.PR_ATTACH_FILENAME] = filename
        return Attachment(props=props, num=num, embedded=embedded, size=size)


def _report_parts(msg: EmailMessage) -> tuple[Message | None, Message | None]:
    """(message/delivery-status part, returned original or its headers) of a multipart/report."""
    if msg.get_content_type() != "multipart/report":
        return None, None
    status: Message | None = None
    original: Message | None = None
    for part in msg.iter_parts():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status" and status is None:
            status = part
        elif ctype in ("message/rfc822", "message/global", "text/rfc822-headers") and original is None:
            original = part
    return status, original


def _original_headers(part: Message | None) -> Message | None:
    if part is None:
        return None
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload[0] if payload and isinstance(payload[0], Message) else None
    return Parser(policy=_IN_POLICY).parsestr(_part_text(part), headersonly=True)


def _message_id_of(original: Message) -> str:
    """The Message-ID exactly as the sender wrote it, or '' when it is not one usable ID.

    Read from the raw header: the `email` package's parser cuts a malformed ID at its first
    blank (`<a b@c>` reads as `<a`), and so would give unrelated messages one ID. A value with
    white space, control or non-ASCII characters, or more than one ID, is not kept at all:
    a message without one gets a fresh, unique ID when it is submitted."""
    raw = next((str(v) for k, v in original.raw_items() if k.lower() == "message-id"), "")
    text = _COMMENT.sub(" ", _LINE_BREAK.sub("", raw)).strip()
    fits = len(text) <= _MAX_HEADER_LINE - len("Message-ID: <>")
    return text if fits and _ONE_MSG_ID.fullmatch(text) else ""


def _apply_dsn(msg: EmailMessage, md: MessageData, skip: set[int]) -> None:
    """Turn a bounce (`bounces.read_bounce`) into REPORT.IPM.Note.(N)DR properties and rows."""
    bounce = read_bounce(msg)
    if bounce is None:
        return
    now = datetime.now(UTC)
    rows: list[Recipient] = []
    actions: list[str] = []
    for status in bounce.recipients:
        diagnostic = status.diagnostic
        row = _report_recipient(status.address, status.mapi_address_type, len(rows))
        row[T.PR_REPORT_TEXT] = diagnostic or status.status
        row[T.PR_REPORT_TIME] = status.last_attempt or bounce.arrival or now
        if status.reply_code is not None:
            row[T.PR_NDR_STATUS_CODE] = status.reply_code
        if status.action in _DR_ACTIONS:
            row[T.PR_DELIVER_TIME] = status.last_attempt or bounce.arrival or now
        elif status.action != "delayed":  # "failed", or something unknown: report it as not delivered
            reason, diag = status_to_ndr(status.status or diagnostic)
            row[T.PR_NDR_REASON_CODE] = int(reason)
            row[T.PR_NDR_DIAG_CODE] = int(diag)
        rows.append(row)
        actions.append(status.action)
    if any(a not in _DR_ACTIONS and a != "delayed" for a in actions):
        suffix = "NDR"
    elif "delayed" in actions:
        suffix = "Delayed.DR"
    else:
        suffix = "DR"
    props = md.props
    props[T.PR_MESSAGE_CLASS] = f"REPORT.IPM.Note.{suffix}"
    props[T.PR_REPORT_TIME] = _get_date(msg, "Date") or now
    md.recipients = rows
    props[T.PR_DISPLAY_TO] = "; ".join(r.display_name for r in rows)
    props[T.PR_DISPLAY_CC] = ""
    props.pop(T.PR_DISPLAY_BCC, None)
    if bounce.status_part is not None:
        skip.add(id(bounce.status_part))
    original = bounce.original
    if original is not None:
        props[T.PR_ORIG_MESSAGE_CLASS] = "IPM.Note"
        props[T.PR_ORIGINAL_SUBJECT] = _header_text(_get_text(original, "Subject"))
        props[T.PR_ORIGINAL_DISPLAY_TO] = "; ".join(n or a for n, a in _get_addresses(original, "To"))
        props[T.PR_ORIGINAL_DISPLAY_CC] = "; ".join(n or a for n, a in _get_addresses(original, "Cc"))
        submitted = _get_date(original, "Date")
        if submitted is not None:
            props[T.PR_ORIGINAL_SUBMIT_TIME] = submitted
        original_id = _message_id_of(original)
        if original_id:
            props[T.PR_REPORT_TAG] = original_id.encode("utf-8")


def _report_recipient(addr: str, address_type: str, row_id: int) -> Recipient:
    """A report row: an SMTP row as `_recipient` makes it; another address type (``unknown``,
    ``X400`` …) keeps its type, so no transport takes it for an e-mail address."""
    if address_type == SMTP:
        return _recipient("", addr, RecipientType.TO, row_id)
    display = _display_name(addr) or addr
    return Recipient(
        props={
            T.PR_DISPLAY_NAME: display,
            T.PR_ADDRTYPE: address_type,
            T.PR_EMAIL_ADDRESS: addr,
            T.PR_RECIPIENT_TYPE: int(RecipientType.TO),
            T.PR_ENTRYID: one_off_entry_id(display, address_type, addr),
            T.PR_SEARCH_KEY: search_key(address_type, addr),
            T.PR_OBJECT_TYPE: _MAPI_MAILUSER,
            T.PR_DISPLAY_TYPE: _DT_MAILUSER,
        },
        row_id=row_id,
    )


def raw_attachment(raw: bytes, num: int) -> Attachment:
    """A message exactly as it was received, as an attachment by value (``original-message.eml``).

    application/octet-stream rather than message/rfc822: the bytes may not be a valid message at all.
    """
    return Attachment(
        props={
            T.PR_ATTACH_METHOD: int(AttachMethod.BY_VALUE),
            T.PR_ATTACH_LONG_FILENAME: RAW_ATTACHMENT_NAME,
            T.PR_ATTACH_FILENAME: RAW_ATTACHMENT_NAME,
            T.PR_ATTACH_EXTENSION: ".eml",
            T.PR_ATTACH_MIME_TAG: "application/octet-stream",
            T.PR_ATTACH_SIZE: len(raw),
            T.PR_ATTACH_NUM: num,
            T.PR_RENDERING_POSITION: -1,
        },
        num=num,
        data=raw,
        size=len(raw),
    )


def _unparseable(raw: bytes, why: str) -> MessageData:
    # PR_BODY has \n line ends whatever the input used, as for a message that parses.
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    preview = text[:_PREVIEW_CHARS]
    more = "\n… (the rest is in the attachment)\n" if len(text) > _PREVIEW_CHARS else ""
    return MessageData(
        props={
            T.PR_MESSAGE_CLASS: "IPM.Note",
            T.PR_SUBJECT: UNPARSEABLE_SUBJECT,
            T.PR_BODY: (
                f"postroom could not read this as an Internet message ({why}). The message as it was "
                f"received ({len(raw)} bytes) is attached as {RAW_ATTACHMENT_NAME}; its text, as far as "
                f"it can be shown, follows.\n\n{preview}{more}"
            ),
            T.PR_MESSAGE_DELIVERY_TIME: datetime.now(UTC),
            T.PR_IMPORTANCE: 1,
            T.PR_PRIORITY: 0,
            T.PR_HASATTACH: True,
        },
        attachments=[raw_attachment(raw, 0)],
    )


# Defects after which the converted message no longer holds everything the bytes said.
_LOSSY_DEFECTS: dict[type[errors.MessageDefect], str] = {
    errors.StartBoundaryNotFoundDefect: "its MIME boundary never occurs",
    errors.CloseBoundaryNotFoundDefect: "a MIME part is never closed",
    errors.NoBoundaryInMultipartDefect: "a multipart part has no boundary",
    errors.FirstHeaderLineIsContinuationDefect: "its first header line is a continuation line",
    errors.InvalidBase64CharactersDefect: "a base64 part holds invalid characters",
    errors.InvalidBase64PaddingDefect: "a base64 part is badly padded",
    errors.InvalidBase64LengthDefect: "a base64 part has an impossible length",
}


def _undecodable(text: str) -> bool:
    """Whether a raw header value (bytes escaped by the parser) is not valid UTF-8."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        return True
    return False


def _text_loses(part: Message) -> bool:
    """Whether showing a text part as text replaces bytes that are not valid in its charset."""
    try:
        payload = part.get_payload(decode=True)
        charset = part.get_content_charset() or "us-ascii"
    except Exception:
        return True
    if not isinstance(payload, bytes):
        return False
    try:
        try:
            payload.decode(charset)
        except LookupError:  # an unknown charset is read as UTF-8 (`_part_text`)
            payload.decode("utf-8")
    except UnicodeError:
        return True
    return False


_UTF8_FIELD_PARTS = frozenset({"message/global-delivery-status", "message/global-disposition-notification"})


def _loss(parsed: Message) -> str | None:
    """Why the conversion of `parsed` cannot be exact (the first reason found), or None when it is.

    The checks run after the conversion, which decoded the parts and so noted their defects.
    """
    # The fields of an RFC 6533 status part are UTF-8 that the package reads as a text/plain
    # message without a charset; `bounces` reads them as UTF-8, so they lose nothing.
    fields = {
        id(inner)
        for p in parsed.walk()
        if p.get_content_type() in _UTF8_FIELD_PARTS and p.is_multipart()
        for inner in cast("list[Message]", p.get_payload())
    }
    for part in parsed.walk():
        for name, value in part.raw_items():
            if _undecodable(str(value)):
                return f"its {name} header is not valid UTF-8"
        for defect in part.defects:
            why = _LOSSY_DEFECTS.get(type(defect))
            if why is not None:
                return why
        if (
            part.get_content_maintype() == "text"
            and id(part) not in fields
            and not _is_attachment_like(part)
            and _text_loses(part)
        ):
            charset = part.get_content_charset() or "us-ascii"
            return f"a {part.get_content_type()} part is not valid {charset}"
    return None


def _keep_raw(md: MessageData, raw: bytes, why: str) -> None:
    """Attach the message as received to its lossy conversion, and say so at the end of the body."""
    md.attachments.append(raw_attachment(raw, len(md.attachments)))
    md.props[T.PR_HASATTACH] = True
    body = str(md.props.get(T.PR_BODY, ""))
    md.props[T.PR_BODY] = (
        f"{body.rstrip()}\n\n[postroom: {why}, so this message may not show exactly as it was sent. "
        f"The message as it was received is attached as {RAW_ATTACHMENT_NAME}.]\n"
    )


class _Trace:
    """Where a conversion found things: the parsed message, and the part of each attachment."""

    def __init__(self) -> None:
        self.root: EmailMessage | None = None
        self.parts: list[Message] = []
        self.bodies: set[int] = set()  # ids of the parts the text and HTML came from


def _convert(
    msg: EmailMessage, raw_headers: str, depth: int, submission: bool = False, trace: _Trace | None = None
) -> MessageData:
    md = MessageData()
    props = md.props
    props[T.PR_MESSAGE_CLASS] = "IPM.Note"
    props[T.PR_SUBJECT] = _header_text(_get_text(msg, "Subject"))
    submitted = _get_date(msg, "Date")
    if submitted is not None:
        props[T.PR_CLIENT_SUBMIT_TIME] = submitted
    props[T.PR_MESSAGE_DELIVERY_TIME] = datetime.now(UTC)
    message_id = _message_id_of(msg)
    if message_id:
        props[T.PR_INTERNET_MESSAGE_ID] = message_id
    in_reply_to = _header_text(_get_text(msg, "In-Reply-To"))
    if in_reply_to:
        props[T.PR_IN_REPLY_TO_ID] = in_reply_to
    props[T.PR_TRANSPORT_MESSAGE_HEADERS] = raw_headers

    authors = _get_addresses(msg, "From")
    senders = _get_addresses(msg, "Sender") or authors
    if senders:
        _set_originator(
            props,
            (
                T.PR_SENDER_NAME,
                T.PR_SENDER_EMAIL_ADDRESS,
                T.PR_SENDER_ADDRTYPE,
                T.PR_SENDER_ENTRYID,
                T.PR_SENDER_SEARCH_KEY,
            ),
            senders[0],
        )
    if authors:
        _set_originator(
            props,
            (
                T.PR_SENT_REPRESENTING_NAME,
                T.PR_SENT_REPRESENTING_EMAIL_ADDRESS,
                T.PR_SENT_REPRESENTING_ADDRTYPE,
                T.PR_SENT_REPRESENTING_ENTRYID,
                T.PR_SENT_REPRESENTING_SEARCH_KEY,
            ),
            authors[0],
        )

    for kind, header, display_tag in (
        (RecipientType.TO, "To", T.PR_DISPLAY_TO),
        (RecipientType.CC, "Cc", T.PR_DISPLAY_CC),
        (RecipientType.BCC, "Bcc", T.PR_DISPLAY_BCC),
    ):
        rows = [_recipient(n, a, kind, len(md.recipients) + i) for i, (n, a) in enumerate(_get_addresses(msg, header))]
        md.recipients.extend(rows)
        if rows or kind != RecipientType.BCC:
            props[display_tag] = "; ".join(r.display_name for r in rows)

    importance = _get_text(msg, "Importance").strip().lower()
    x_priority = re.match(r"\s*(\d)", _get_text(msg, "X-Priority"))
    if importance in _IMPORTANCE_IN:
        props[T.PR_IMPORTANCE] = _IMPORTANCE_IN[importance]
    elif x_priority:
        level = int(x_priority.group(1))
        props[T.PR_IMPORTANCE] = 2 if level in (1, 2) else 0 if level in (4, 5) else 1
    else:
        props[T.PR_IMPORTANCE] = 1
    props[T.PR_PRIORITY] = _PRIORITY_IN.get(_get_text(msg, "Priority").strip().lower(), 0)
    if _get_text(msg, "Disposition-Notification-To").strip():
        props[T.PR_READ_RECEIPT_REQUESTED] = True

    skip: set[int] = set()
    saved_props, saved_rows = dict(props), list(md.recipients)
    if submission:
        _resent_envelope(msg, md)
    else:
        try:
            _apply_dsn(msg, md, skip)
        except Exception:  # a broken report is still mail: keep it as the plain message it is
            props.clear()
            props.update(saved_props)
            md.recipients = saved_rows
            skip.clear()

    collector = _Collector(msg, md, depth, skip)
    if collector.plain is not None:
        props[T.PR_BODY] = _part_text(collector.plain)
    if collector.html is not None:
        html = _part_text(collector.html)
        props[T.PR_HTML] = html.encode("utf-8")
        if collector.plain is None:
            props[T.PR_BODY] = _html_to_text(html)
    props.setdefault(T.PR_BODY, "")
    if msg.get_content_maintype() == "multipart" and msg.is_multipart():
        for part in msg.get_payload():
            if isinstance(part, Message):
                collector.visit(part, msg.get_content_subtype())
    else:
        collector.visit(msg, None)
    props[T.PR_HASATTACH] = bool(md.attachments)
    if trace is not None:
        trace.root, trace.parts = msg, collector.parts
        trace.bodies = {id(b) for b in (collector.plain, collector.html) if b is not None}
    return md


def _resent_envelope(msg: EmailMessage, md: MessageData) -> None:
    """What ``sendmail -t`` does with Resent-To/Cc/Bcc: when there are any, they and not To/Cc/Bcc
    are the envelope. In MAPI's words (spec §6.5) the header rows were delivered earlier
    (MAPI_SUBMITTED: shown, not sent again) and the resent addresses are envelope-only rows
    (MAPI_P1: sent, never written into the headers)."""
    resent = [
        (kind, _get_addresses(msg, header))
        for kind, header in (
            (RecipientType.TO, "Resent-To"),
            (RecipientType.CC, "Resent-Cc"),
            (RecipientType.BCC, "Resent-Bcc"),
        )
    ]
    if not any(pairs for _, pairs in resent):
        return
    for row in md.recipients:
        row[T.PR_RECIPIENT_TYPE] = _as_int(row.get(T.PR_RECIPIENT_TYPE), RecipientType.TO) | MAPI_SUBMITTED
    for kind, pairs in resent:
        for name, addr in pairs:
            row = _recipient(name, addr, kind, len(md.recipients))
            row[T.PR_RECIPIENT_TYPE] = int(kind) | MAPI_P1
            md.recipients.append(row)


def _from_mime(data: bytes, depth: int, submission: bool = False, trace: _Trace | None = None) -> MessageData:
    try:
        parsed = BytesParser(policy=_IN_POLICY).parsebytes(data)
        if not any(True for _ in parsed.raw_items()):
            return _unparseable(data, "it has no header lines")
        md = _convert(parsed, _raw_header_block(data), depth, submission, trace)
        md = _tnef.expand(md)  # winmail.dat: the MAPI message it carries (formats/tnef.py)
    except Exception as exc:
        return _unparseable(data, f"the parser failed: {type(exc).__name__}")
    if depth == 0:  # an embedded message's bytes are inside its parent's
        try:
            why = _loss(parsed)
        except Exception:
            why = "it could not be checked"
        if why is not None:
            _keep_raw(md, data, why)
        _original.keep(md, data)
    return md


def from_mime(data: bytes, *, submission: bool = False) -> MessageData:
    """Convert an RFC 5322/MIME message to MAPI, as a transport's start_message fills it.

    Never raises, and never loses the bytes it was given: input without a single header line (or
    that the `email` package cannot digest) becomes an IPM.Note with subject
    ``"(unparseable message)"``, a body saying why and showing what text it can, and the bytes as
    received attached as ``original-message.eml``. A message that converts, but not exactly (a
    header that is not UTF-8, text not valid in its charset, a broken MIME structure, bad base64),
    gets that attachment too, and a line at the end of its body saying why. Delivery status
    notifications become report messages (see the module docstring). The message gets no
    PR_ENTRYID (the store assigns it); recipients and originators get one-off entry IDs.

    ``submission=True`` reads a message that is about to be sent (``send --eml``), not one that
    arrived: a report stays the IPM.Note it is, its status part an attachment, and its
    recipients are its To/Cc/Bcc (or Resent-To/Cc/Bcc, as ``sendmail -t`` takes them; see
    `_resent_envelope`), never the addresses the report is about.

    A message with header lines keeps `data` as its original MIME stream (`MessageData.original`,
    see `postroom.original`): sent unedited, it goes out as those bytes.
    """
    return _from_mime(bytes(data), 0, submission)


def dsn_original_message_id(data: bytes) -> str | None:
    """The Message-ID of the original message returned in a multipart/report (DSN or MDN), from
    its third part (message/rfc822 or text/rfc822-headers), or quoted by a non-standard bounce
    (`bounces.read_bounce`); None when there is none. `from_mime`
    stores the same value, as bytes, in PR_REPORT_TAG of the report."""
    try:
        parsed = BytesParser(policy=_IN_POLICY).parsebytes(bytes(data))
        bounce = read_bounce(parsed)
        original = bounce.original if bounce is not None else _original_headers(_report_parts(parsed)[1])
        if original is None:
            return None
        return _message_id_of(original) or None
    except Exception:
        return None
