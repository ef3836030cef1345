"""Bounces as they arrive from the real world: what each says about each recipient.

`mime.from_mime` turns what this module reads into a ``REPORT.IPM.Note.*`` message; this module
only reads. Three kinds are recognised, the most reliable first:

* RFC 3464 delivery status notifications: a ``message/delivery-status`` part, with or without the
  ``report-type`` parameter on its ``multipart/report`` (some MTAs leave it out);
* RFC 6533 ``message/global-delivery-status`` (what Postfix sends for SMTPUTF8 mail): the same
  fields, in UTF-8, with ``utf-8`` addresses that may carry ``\\x{HEX}`` escapes;
* anything else that looks like a bounce (from MAILER-DAEMON or postmaster, or with a bounce
  subject: plain-text Exim, qmail's QSBMF, Exchange, old Postfix) goes to flufl.bounce, the
  bounce detector GNU Mailman maintains, for the failed addresses; the status code and the
  server's words are then taken from the text around each address, and the original's headers
  from a returned message part or from where the bounce quotes them.

An address whose RFC 3464 address type is neither ``rfc822`` nor ``utf-8`` (``unknown; x``,
``x400; …``) is not an SMTP address: `BouncedRecipient.mapi_address_type` says what it is.

Enhanced status codes (RFC 3463 and the IANA registry, X.0.0 to X.7.30) map to MAPI NDR reason
and diagnostic codes in `ndr_codes`; see its table for the choices made.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.parser import Parser
from email.policy import default as _DEFAULT_POLICY
from email.utils import parsedate_to_datetime
from io import BytesIO
from typing import cast

from flufl.bounce import all_failures

from .mapi.flags import NDRDiag, NDRReason

__all__ = ["Bounce", "BouncedRecipient", "ndr_codes", "read_bounce"]

# flufl.bounce logs each detector it runs (INFO) and the traceback of one that raises (ERROR)
# before re-raising; `_read_heuristic` handles that (the message stays ordinary mail), so neither
# belongs on a user's terminal.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

#: Writes a parsed part back as the bytes it was read from, 8-bit UTF-8 included.
_RAW_8BIT = _DEFAULT_POLICY.clone(utf8=True, cte_type="8bit", refold_source="none")
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_ORIGINAL_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers")
_SMTP_ADDRESS_TYPES = frozenset({"rfc822", "utf-8"})
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_REPLY = re.compile(r"(?<![\d.])([245]\d\d)(?:[ -]|$)")
_UTF8_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_TYPED = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9.+-]*)\s*;(.*)", re.DOTALL)
_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_HEADER_LINE = re.compile(r"[!-9;-~]+:[ \t]")
_MESSAGE_ID_LINE = re.compile(r"message-id:[ \t]*<", re.IGNORECASE)
_BOUNCE_SENDER = re.compile(r"(?<![\w.+-])(mailer-daemon|postmaster|mail-daemon|mailerdaemon|mdaemon)@", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status notification|failure|has failed|failed)|mail delivery failed"
    r"|failure notice|returned mail|non[- ]?delivery|could not be delivered|delivery problem",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class BouncedRecipient:
    """One recipient as a bounce reports it (an RFC 3464 per-recipient block, or its equivalent)."""

    address: str
    address_type: str  # the RFC 3464 address type, lower case ("rfc822", "utf-8", "unknown", …)
    action: str  # failed, delayed, delivered, relayed, expanded (lower case)
    status: str = ""  # the enhanced status code, "5.1.1"
    diagnostic: str = ""  # the server's words, without the "smtp;" type
    last_attempt: datetime | None = None
    reply_code: int | None = None  # the SMTP reply code in the server's words (550), if any

    @property
    def is_smtp(self) -> bool:
        return self.address_type in _SMTP_ADDRESS_TYPES

    @property
    def mapi_address_type(self) -> str:
        """PR_ADDRTYPE for the row: SMTP for rfc822/utf-8 addresses, else the report's type."""
        return "SMTP" if self.is_smtp else self.address_type.upper()


@dataclass(frozen=True)
class Bounce:
    """What a bounce says: each recipient's outcome, and where the original message is."""

    recipients: tuple[BouncedRecipient, ...]
    arrival: datetime | None
    #: The part to leave out of the report's attachments (it became the recipient rows), if any.
    status_part: Message | None
    #: The returned original: a message/rfc822 (or global) part, text/rfc822-headers, or the
    #: headers a plain-text bounce quotes, parsed; None when the bounce returns nothing.
    original: Message | None
    kind: str  # "rfc3464", "rfc6533" or "heuristic"


def read_bounce(msg: Message) -> Bounce | None:
    """What ``msg`` reports about its recipients, or None when it is not a bounce (or says nothing
    usable). Never raises for odd input: a bounce that cannot be read is ordinary mail."""
    try:
        status_part = _status_part(msg)
        if status_part is not None:
            bounce = _read_status(msg, status_part)
            if bounce is not None:
                return bounce
        if _looks_like_bounce(msg):
            return _read_heuristic(msg)
    except Exception:
        return None
    return None


# --------------------------------------------------------------------------------------
# RFC 3464 / RFC 6533
# --------------------------------------------------------------------------------------


def _status_part(msg: Message) -> Message | None:
    """The first (global-)delivery-status part of a multipart/report, whatever its report-type."""
    if msg.get_content_type() != "multipart/report" or not msg.is_multipart():
        return None
    for part in msg.get_payload():
        if isinstance(part, Message) and part.get_content_type() in _STATUS_TYPES:
            return part
    return None


def _original_part(msg: Message) -> Message | None:
    for part in msg.walk():
        if part is not msg and part.get_content_type() in _ORIGINAL_TYPES:
            return part
    return None


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a status part; a global one (RFC 6533) is UTF-8 text the email
    package leaves unparsed, so it is split and parsed here."""
    payload = part.get_payload()
    if part.get_content_type() == "message/delivery-status" and isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    text = _unparsed_text(part).replace("\r\n", "\n").replace("\r", "\n")
    parser = Parser(policy=_DEFAULT_POLICY)
    chunks = [c for c in re.split(r"\n[ \t]*\n", text) if c.strip()]
    return [parser.parsestr(chunk.strip("\n") + "\n", headersonly=True) for chunk in chunks]


def _unparsed_text(part: Message) -> str:
    """A message/* part's content as UTF-8 text. The email package reads any message/* part as an
    embedded message (its first header block as headers, the rest as body) with 8-bit bytes
    escaped; the generator, told that 8-bit UTF-8 is fine, gives those bytes back as they came."""
    payload = part.get_payload()
    if isinstance(payload, list):
        if not payload or not isinstance(payload[0], Message):
            return ""
        out = BytesIO()
        BytesGenerator(out, mangle_from_=False, policy=_RAW_8BIT).flatten(cast(EmailMessage, payload[0]))
        return out.getvalue().decode("utf-8", "replace")
    raw = part.get_payload(decode=True)  # e.g. a base64-encoded one (RFC 6533 allows it)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload or "")


def _field(block: Message, name: str) -> str:
    value = block.get(name)
    return "" if value is None else " ".join(str(value).split())


def _date(block: Message, name: str) -> datetime | None:
    value = _field(block, name)
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)


def _typed(value: str) -> tuple[str, str]:
    """``rfc822; bob@x`` → (``rfc822``, ``bob@x``); an untyped value is (``""``, value)."""
    match = _TYPED.fullmatch(value)
    if match is None:
        return "", value.strip()
    return match.group(1).lower(), match.group(2).strip()


def _clean_address(address: str, address_type: str) -> str:
    """The address alone: escapes decoded first, so that an escaped CR or LF is dropped too."""
    if address_type == "utf-8":  # RFC 6533 §3: utf-8-addr-xtext / utf-8-addr-unitext
        address = _UTF8_ESCAPE.sub(lambda m: _code_point(m.group(1)), address)
    address = _BREAKS.sub("", address).strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    return address


def _code_point(hex_digits: str) -> str:
    value = int(hex_digits, 16)
    return chr(value) if value <= 0x10FFFF and not 0xD800 <= value <= 0xDFFF else "\ufffd"


def _read_status(msg: Message, part: Message) -> Bounce | None:
    blocks = _blocks(part)
    if len(blocks) < 2:
        return None
    per_message, per_recipient = blocks[0], blocks[1:]
    rows: list[BouncedRecipient] = []
    for block in per_recipient:
        address_type, address = _typed(_field(block, "Final-Recipient") or _field(block, "Original-Recipient"))
        if not address_type:
            # No type at all: an e-mail address is still one; anything else is not.
            address_type = "rfc822" if "@" in address else "unknown"
        address = _clean_address(address, address_type)
        if not address:
            continue
        action = (_field(block, "Action").lower().split() or [""])[0]
        diagnostic = _typed(_field(block, "Diagnostic-Code"))[1]
        reply = _SMTP_REPLY.match(diagnostic)
        rows.append(
            BouncedRecipient(
                address=address,
                address_type=address_type,
                action=action,
                status=_field(block, "Status"),
                diagnostic=diagnostic,
                last_attempt=_date(block, "Last-Attempt-Date"),
                reply_code=int(reply.group(1)) if reply else None,
            )
        )
    if not rows:
        return None
    kind = "rfc6533" if part.get_content_type() == "message/global-delivery-status" else "rfc3464"
    return Bounce(tuple(rows), _date(per_message, "Arrival-Date"), part, _original_of(msg), kind)


def _original_of(msg: Message) -> Message | None:
    part = _original_part(msg)
    if part is None:
        return None
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload[0] if payload and isinstance(payload[0], Message) else None
    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload or "")
    return Parser(policy=_DEFAULT_POLICY).parsestr(text, headersonly=True)


# --------------------------------------------------------------------------------------
# non-standard bounces (flufl.bounce)
# --------------------------------------------------------------------------------------


def _looks_like_bounce(msg: Message) -> bool:
    """From a mailer daemon or postmaster, or with a bounce subject: flufl.bounce's heuristics are
    meant for bounces, and ordinary mail must never be read as one. Read from the raw headers:
    parsing them costs more than the rest of this module for an ordinary message."""
    for name, value in msg.raw_items():
        key = name.lower()
        if key == "from" and _BOUNCE_SENDER.search(str(value)):
            return True
        if key == "subject" and _BOUNCE_SUBJECT.search(str(value)):
            return True
    return False


def _bounce_text(msg: Message) -> str:
    """The bounce's own words: its text/plain parts outside any returned message, in order."""
    texts: list[str] = []
    stack: list[Message] = [msg]
    while stack:
        part = stack.pop(0)
        ctype = part.get_content_type()
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            stack[:0] = [p for p in part.get_payload() if isinstance(p, Message)]
        elif ctype == "text/plain":
            raw = part.get_payload(decode=True)
            charset = part.get_content_charset() or "utf-8"
            if isinstance(raw, bytes):
                try:
                    texts.append(raw.decode(charset, "replace"))
                except LookupError:
                    texts.append(raw.decode("utf-8", "replace"))
    return "\n".join(texts).replace("\r\n", "\n").replace("\r", "\n")


def _read_heuristic(msg: Message) -> Bounce | None:
    text = _bounce_text(msg)
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector tripped over odd input: not a bounce we can read
        temporary, permanent = frozenset(), frozenset()
    if not temporary and not permanent:
        permanent = _exchange_2003(text)
    if not temporary and not permanent:
        return None
    quoted_at, quoted = _quoted_original(text)
    own_words = text[:quoted_at]
    found = [(a, "failed") for a in sorted(permanent)] + [(a, "delayed") for a in sorted(temporary - permanent)]
    rows: list[BouncedRecipient] = []
    for raw, action in found:
        address = _clean_address(raw.decode("ascii", "replace"), "rfc822")
        if not address:
            continue
        words = _words_about(own_words, address, alone=len(found) == 1)
        enhanced = _ENHANCED.search(words)
        reply = _SMTP_REPLY.search(words)
        rows.append(
            BouncedRecipient(
                address=address,
                address_type="rfc822" if "@" in address else "unknown",
                action=action,
                status=enhanced.group(0) if enhanced else "",
                diagnostic=words,
                reply_code=int(reply.group(1)) if reply else None,
            )
        )
    if not rows:
        return None
    original = _original_of(msg) or quoted
    return Bounce(tuple(rows), None, None, original, "heuristic")


_EXCHANGE_2003_START = re.compile(r"^\s*The following recipient\(s\) could not be reached:", re.MULTILINE)
_EXCHANGE_2003_RECIPIENT = re.compile(r"^[ \t]+(\S+@[^\s@]+) on \S", re.MULTILINE)


def _exchange_2003(text: str) -> frozenset[bytes]:
    """The failed addresses of an Exchange 2003 NDR ("The following recipient(s) could not be
    reached:", then "<address> on <date>" lines, indented), which flufl.bounce's Exchange
    detector (Exchange 5.5/2000 wording) and its generic patterns (unindented) do not read."""
    start = _EXCHANGE_2003_START.search(text)
    if start is None:
        return frozenset()
    found = _EXCHANGE_2003_RECIPIENT.findall(text, start.end())
    return frozenset(a.encode("ascii") for a in found if a.isascii())


def _words_about(text: str, address: str, *, alone: bool) -> str:
    """What the bounce says about ``address``: the paragraph that names it, from the address on,
    if it names a code; for the only recipient, else the first line in the text with one."""
    lowered, needle = text.lower(), address.lower()
    at = lowered.find(needle)
    if at >= 0:
        end = text.find("\n\n", at)
        paragraph = text[at : end if end >= 0 else len(text)]
        # The address itself, with its punctuation, is not the server's words.
        after = paragraph[len(address) :].lstrip(">:;,. \t\n")
        if _SMTP_REPLY.search(after) or _ENHANCED.search(after) or not alone:
            return " ".join(after.split())[:1000]
    if alone:
        for line in text.split("\n"):
            if _ENHANCED.search(line) or _SMTP_REPLY.match(line.strip()):
                return " ".join(line.split())[:1000]
    return ""


def _quoted_original(text: str) -> tuple[int, Message | None]:
    """Where a plain-text bounce quotes the original's header block, and those headers parsed:
    the first block of header lines, after a blank line, that holds a Message-ID."""
    lines = text.split("\n")
    offset = 0
    starts: list[tuple[int, int]] = []
    previous_blank = True
    for index, line in enumerate(lines):
        if previous_blank and _HEADER_LINE.match(line.lstrip()):
            starts.append((index, offset))
        previous_blank = not line.strip()
        offset += len(line) + 1
    for index, at in starts:
        block: list[str] = []
        for line in lines[index:]:
            if not line.strip():
                break
            block.append(line)
        indent = len(block[0]) - len(block[0].lstrip())
        unindented = [b[indent:] if b[:indent].isspace() else b for b in block]
        if any(_MESSAGE_ID_LINE.match(b) for b in unindented):
            parsed = Parser(policy=_DEFAULT_POLICY).parsestr("\n".join(unindented) + "\n\n", headersonly=True)
            return at, parsed
    return len(text), None


# --------------------------------------------------------------------------------------
# enhanced status codes → PR_NDR_REASON_CODE / PR_NDR_DIAG_CODE
# --------------------------------------------------------------------------------------

_FAILED, _IMPOSSIBLE = NDRReason.TRANSFER_FAILED, NDRReason.TRANSFER_IMPOSSIBLE
_CONVERSION = NDRReason.CONVERSION_NOT_PERFORMED
_D = NDRDiag

#: (subject, detail) → (reason, diagnostic), after RFC 3463 and the IANA "Enumerated Status
#: Codes" registry. The gromox mapping (spec §7) where it has one; elsewhere the MAPI diagnostic
#: that says the same thing. The reason is TRANSFER_IMPOSSIBLE where the address itself is
#: wrong or gone, CONVERSION_NOT_PERFORMED for media and downgrade failures (X.6.*),
#: DIRECTORY_OPERATN_FAILED for X.4.3 and RESTRICTED_DELIVERY for a plain refusal (X.7.1).
_CODES: dict[tuple[int, int], tuple[NDRReason, NDRDiag]] = {
    (0, 0): (_FAILED, _D.NO_DIAGNOSTIC),
    # X.1 addressing
    (1, 0): (_IMPOSSIBLE, _D.OR_NAME_UNRECOGNIZED),
    (1, 1): (_IMPOSSIBLE, _D.MAIL_RECIPIENT_UNKNOWN),  # bad destination mailbox address
    (1, 2): (_IMPOSSIBLE, _D.OR_NAME_UNRECOGNIZED),  # bad destination system address
    (1, 3): (_IMPOSSIBLE, _D.MAIL_ADDRESS_INCORRECT),  # bad destination mailbox address syntax
    (1, 4): (_IMPOSSIBLE, _D.OR_NAME_AMBIGUOUS),
    (1, 5): (_FAILED, _D.NO_DIAGNOSTIC),  # destination address valid (a success detail)
    (1, 6): (_IMPOSSIBLE, _D.MAIL_RECIPIENT_MOVED),  # moved, no forwarding address
    (1, 7): (_FAILED, _D.PARAMETERS_INVALID),  # bad sender's mailbox address syntax
    (1, 8): (_FAILED, _D.PARAMETERS_INVALID),  # bad sender's system address
    (1, 9): (_FAILED, _D.NO_DIAGNOSTIC),  # relayed to a non-compliant mailer (RFC 3886)
    # RFC 7505's null MX, and Exchange Online's "recipient not found by SMTP address lookup".
    (1, 10): (_IMPOSSIBLE, _D.MAIL_RECIPIENT_UNKNOWN),
    # X.2 mailbox
    (2, 0): (_FAILED, _D.MAIL_REFUSED),
    (2, 1): (_FAILED, _D.MAIL_REFUSED),  # mailbox disabled, not accepting messages
    (2, 2): (_FAILED, _D.LENGTH_CONSTRAINT_VIOLATD),  # mailbox full
    (2, 3): (_FAILED, _D.LENGTH_CONSTRAINT_VIOLATD),  # message longer than the mailbox allows
    (2, 4): (_FAILED, _D.EXPANSION_FAILED),  # mailing list expansion problem
    # X.3 mail system
    (3, 0): (_FAILED, _D.NO_DIAGNOSTIC),
    (3, 1): (_FAILED, _D.MTS_CONGESTED),  # mail system full
    (3, 2): (_FAILED, _D.RECIPIENT_UNAVAILABLE),  # system not accepting network messages
    (3, 3): (_FAILED, _D.CRITICAL_FUNC_UNSUPPORTED),  # not capable of selected features
    (3, 4): (_FAILED, _D.LENGTH_CONSTRAINT_VIOLATD),  # message too big for system
    (3, 5): (_FAILED, _D.CRITICAL_FUNC_UNSUPPORTED),  # system incorrectly configured
    (3, 6): (_FAILED, _D.NO_DIAGNOSTIC),  # requested priority was changed (RFC 6710)
    # X.4 network and routing
    (4, 0): (_FAILED, _D.NO_DIAGNOSTIC),
    (4, 1): (_FAILED, _D.RECIPIENT_UNAVAILABLE),  # no answer from host
    (4, 2): (_FAILED, _D.RECIPIENT_UNAVAILABLE),  # bad connection
    (4, 3): (NDRReason.DIRECTORY_OPERATN_FAILED, _D.NO_DIAGNOSTIC),  # directory server failure
    (4, 4): (_IMPOSSIBLE, _D.OR_NAME_UNRECOGNIZED),  # unable to route (no such domain)
    (4, 5): (_FAILED, _D.MTS_CONGESTED),
    (4, 6): (_FAILED, _D.LOOP_DETECTED),
    (4, 7): (_FAILED, _D.MAXIMUM_TIME_EXPIRED),
    # X.5 protocol
    (5, 0): (_FAILED, _D.NO_DIAGNOSTIC),
    (5, 1): (_FAILED, _D.PARAMETERS_INVALID),  # invalid command
    (5, 2): (_FAILED, _D.PARAMETERS_INVALID),  # syntax error
    (5, 3): (_FAILED, _D.TOO_MANY_RECIPIENTS),
    (5, 4): (_FAILED, _D.PARAMETERS_INVALID),  # invalid command arguments
    (5, 5): (_FAILED, _D.CRITICAL_FUNC_UNSUPPORTED),  # wrong protocol version
    (5, 6): (_FAILED, _D.PARAMETERS_INVALID),  # authentication exchange line too long (RFC 4954)
    # X.6 media
    (6, 0): (_FAILED, _D.NO_DIAGNOSTIC),
    (6, 1): (_FAILED, _D.CONTENT_TYPE_UNSUPPORTED),  # media not supported
    (6, 2): (_CONVERSION, _D.PROHIBITED_TO_CONVERT),  # conversion required and prohibited
    (6, 3): (_CONVERSION, _D.IMPRACTICAL_TO_CONVERT),  # conversion required but not supported
    (6, 4): (_CONVERSION, _D.CONVERSION_LOSS_PROHIB),  # conversion with loss performed
    (6, 5): (_CONVERSION, _D.IMPRACTICAL_TO_CONVERT),  # conversion failed
    (6, 6): (_FAILED, _D.NO_DIAGNOSTIC),  # message content not available (RFC 4468)
    (6, 7): (_CONVERSION, _D.DOWNGRADING_IMPOSSIBLE),  # non-ASCII addresses not permitted (RFC 6531)
    (6, 8): (_CONVERSION, _D.DOWNGRADING_IMPOSSIBLE),  # UTF-8 reply required but not permitted
    (6, 9): (_CONVERSION, _D.DOWNGRADING_IMPOSSIBLE),  # UTF-8 header message cannot be transferred
    (6, 10): (_CONVERSION, _D.DOWNGRADING_IMPOSSIBLE),  # (registered again as X.6.10, RFC 6531)
    # X.7 security and policy
    (7, 0): (_FAILED, _D.NO_DIAGNOSTIC),
    (7, 1): (NDRReason.RESTRICTED_DELIVERY, _D.MAIL_REFUSED),  # delivery not authorized, refused
    (7, 2): (_FAILED, _D.EXPANSION_PROHIBITED),  # mailing list expansion prohibited
    (7, 3): (_CONVERSION, _D.SECURE_MESSAGING_ERROR),  # security conversion required, not possible
    (7, 4): (_FAILED, _D.SECURE_MESSAGING_ERROR),  # security features not supported
    (7, 5): (_FAILED, _D.SECURE_MESSAGING_ERROR),  # cryptographic failure
    (7, 6): (_FAILED, _D.SECURE_MESSAGING_ERROR),  # cryptographic algorithm not supported
    (7, 7): (_FAILED, _D.SECURE_MESSAGING_ERROR),  # message integrity failure
    (7, 8): (_FAILED, _D.SUBMISSION_PROHIBITED),  # authentication credentials invalid (RFC 4954)
    (7, 9): (_FAILED, _D.SECURE_MESSAGING_ERROR),  # authentication mechanism is too weak
    (7, 10): (_FAILED, _D.SECURE_MESSAGING_ERROR),  # encryption needed (RFC 5248)
    (7, 11): (_FAILED, _D.SECURE_MESSAGING_ERROR),  # encryption required for the mechanism
    (7, 12): (_FAILED, _D.SUBMISSION_PROHIBITED),  # a password transition is needed
    (7, 13): (_FAILED, _D.SUBMISSION_PROHIBITED),  # user account disabled
    (7, 14): (_FAILED, _D.SECURE_MESSAGING_ERROR),  # trust relationship required
    (7, 15): (_FAILED, _D.MAIL_REFUSED),  # priority level is too low (RFC 6710)
    (7, 16): (_FAILED, _D.CONTENT_TOO_LONG),  # message too big for the specified priority
    (7, 17): (_IMPOSSIBLE, _D.MAIL_RECIPIENT_DEPARTED),  # mailbox owner has changed (RFC 7293)
    (7, 18): (_IMPOSSIBLE, _D.MAIL_ORGANIZATION_EXPIRED),  # domain owner has changed
    (7, 19): (_FAILED, _D.NO_DIAGNOSTIC),  # RRVS test cannot be completed
    (7, 20): (_FAILED, _D.MAIL_REFUSED),  # no passing DKIM signature found (RFC 7372)
    (7, 21): (_FAILED, _D.MAIL_REFUSED),  # no acceptable DKIM signature found
    (7, 22): (_FAILED, _D.MAIL_REFUSED),  # no valid author-matched DKIM signature found
    (7, 23): (_FAILED, _D.MAIL_REFUSED),  # SPF validation failed
    (7, 24): (_FAILED, _D.MAIL_REFUSED),  # SPF validation error
    (7, 25): (_FAILED, _D.MAIL_REFUSED),  # reverse DNS validation failed
    (7, 26): (_FAILED, _D.MAIL_REFUSED),  # multiple authentication checks failed
    (7, 27): (_FAILED, _D.MAIL_REFUSED),  # sender address has null MX (RFC 7505)
    (7, 28): (_FAILED, _D.MAIL_REFUSED),  # mail flood detected
    (7, 29): (_FAILED, _D.SECURE_MESSAGING_ERROR),  # ARC validation failure (RFC 8617)
    (7, 30): (_FAILED, _D.SECURE_MESSAGING_ERROR),  # REQUIRETLS support required (RFC 8689)
}

#: A detail not in the registry: what the subject's X.Y.0 says (X.1.* is still addressing).
_SUBJECT_DEFAULT = {subject: _CODES[subject, 0] for subject in range(8)}


def ndr_codes(text: str) -> tuple[NDRReason, NDRDiag]:
    """PR_NDR_REASON_CODE and PR_NDR_DIAG_CODE for the first enhanced status code in ``text``
    (``"5.1.1"``, or ``"550 5.1.1 User unknown"``); without one, (TRANSFER_FAILED, NO_DIAGNOSTIC)."""
    match = _ENHANCED.search(text or "")
    if match is None:
        return _FAILED, _D.NO_DIAGNOSTIC
    subject, detail = int(match.group(2)), int(match.group(3))
    return _CODES.get((subject, detail)) or _SUBJECT_DEFAULT.get(subject, (_FAILED, _D.NO_DIAGNOSTIC))
