"""Recipient addresses as users type them: `ADRTYPE:address`, `Name <ADRTYPE:address>`, or a bare e-mail address.

A bare address containing `@` means address type `SMTP`. Anything that could smuggle a
header or break an entry ID (CR, LF, NUL) is refused here, before it reaches the store.

This module is also the one place that says which characters an address may hold on its way
out: what a user may type (no line break, no NUL), and what an e-mail address in a header
(`mime.py`) or on the SMTP wire (`transports/smtp.py`) may hold (no white space, no control
character, no Unicode line separator), and how long it may be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .mapi.codes import HResult, MAPIError

#: What could smuggle a header or break an entry ID: refused in everything a user types.
BREAKS = "\r\n\0"
#: The characters an e-mail address never holds in a header or an SMTP path (a character-class
#: body): white space, C0 and C1 control characters, and the Unicode line and paragraph separators.
NOT_IN_EMAIL_ADDRESS = r"\s\x00-\x1f\x7f-\x9f\u2028\u2029"
FORBIDDEN_IN_EMAIL_ADDRESS = re.compile(f"[{NOT_IN_EMAIL_ADDRESS}]")

ADDRESS_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
# Deliberately plain: local@domain, no spaces, no brackets; the domain has at least one label.
SMTP_ADDRESS = re.compile(r"^[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+$")
NAMED = re.compile(r"^\s*(?P<name>.*?)\s*<(?P<addr>[^<>]*)>\s*$")
#: RFC 5321 §4.5.3.1.3: a path is at most 256 octets, so an address at most 254 (between < and >).
MAX_SMTP_ADDRESS = 254
#: An RFC 2047 encoded word. Never valid in an address (RFC 2047 §5), yet readers decode it there:
#: `a@=?utf-8?q?x=0D=0ABcc=3A_evil=40x?=` would reach them as another address and a line break.
ENCODED_WORD_PATTERN = r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?="
ENCODED_WORD = re.compile(ENCODED_WORD_PATTERN)


_BREAK = re.compile(f"[{re.escape(BREAKS)}]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_break(text: str) -> bool:
    """Whether `text` holds a line break or a NUL (see BREAKS)."""
    return _BREAK.search(text) is not None  # one C scan: called for every address and name


def has_lone_surrogate(text: str) -> bool:
    """Whether `text` holds half of a UTF-16 surrogate pair, which no encoding can store."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def longer_than_smtp_allows(address: str) -> bool:
    """Whether an e-mail address is longer than RFC 5321 allows in a path (MAX_SMTP_ADDRESS octets)."""
    return len(address.encode("utf-8", "surrogatepass")) > MAX_SMTP_ADDRESS


@dataclass(frozen=True)
class ParsedAddress:
    display_name: str
    address_type: str
    email_address: str

    @property
    def address(self) -> str:
        return f"{self.address_type}:{self.email_address}"


def _bad(text: str, why: str) -> MAPIError:
    return MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"malformed address {text!r}: {why}")


def parse_address(text: str, default_type: str = "SMTP") -> ParsedAddress:
    """Parse one recipient address; raises MAPI_E_INVALID_PARAMETER with the reason."""
    if has_break(text):
        raise _bad(text, "it contains a line break or NUL")
    raw = text.strip()
    if not raw:
        raise _bad(text, "it is empty")
    name = ""
    m = NAMED.match(raw)
    if m:
        name = m.group("name").strip().strip('"').strip()
        raw = m.group("addr").strip()
        if not raw:
            raise _bad(text, "nothing between < and >")
    elif "<" in raw or ">" in raw:
        raise _bad(text, "unbalanced < >")
    address_type = default_type
    address = raw
    head, sep, tail = raw.partition(":")
    if sep and "@" not in head and ADDRESS_TYPE.match(head):
        address_type, address = head.upper(), tail.strip()
    elif sep and "@" not in raw:
        raise _bad(text, f"{head!r} is not a valid address type")
    if not address:
        raise _bad(text, "the address after the address type is empty")
    if address_type == "SMTP" and not SMTP_ADDRESS.match(address):
        raise _bad(text, "an SMTP address looks like name@domain")
    if address_type == "SMTP" and longer_than_smtp_allows(address):
        raise _bad(text, f"an SMTP address is at most {MAX_SMTP_ADDRESS} bytes long")
    if address_type == "SMTP" and ENCODED_WORD.search(address):
        raise _bad(text, "an SMTP address cannot contain an RFC 2047 encoded word (=?…?=)")
    return ParsedAddress(name or address, address_type, address)
