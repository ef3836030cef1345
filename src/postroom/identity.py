"""Who a message is from: the mailbox checks, the profile's identity and the fallback identity.

A message's `From` is, in this order (the first that exists wins):

1. the sender the message names itself (PR_SENT_REPRESENTING_*: `send --from`, `Draft.set_sender`,
   the `From` of a `send --eml` file);
2. the `from_address` / `from_name` of the account (smtp service) that sends it;
3. the profile's identity (`postroom identity set`, kept as `sender_name` / `sender_address` in
   profile.toml);
4. the fallback identity: the login name ($LOGNAME, $USER, else the passwd entry, else `uid<N>`
   for a uid without one, as in containers) at `localhost`.

This module owns the checks every one of them passes (no header injection, a plain SMTP
address) and the last two steps; the account step is the smtp transport's, the first the
message's own. It never asks the passwd database for more than the name, and a uid without an
entry is not an error.
"""

from __future__ import annotations

import os
import pwd
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .addressing import (
    ENCODED_WORD,
    FORBIDDEN_IN_EMAIL_ADDRESS,
    SMTP_ADDRESS,
    has_lone_surrogate,
    longer_than_smtp_allows,
)
from .mapi.codes import HResult, MAPIError

#: The profile.toml keys ([profile] table) that hold the profile's identity.
NAME_KEY = "sender_name"
ADDRESS_KEY = "sender_address"
#: The domain of the fallback identity.
FALLBACK_DOMAIN = "localhost"
#: A display name longer than this is refused (a header line stays readable).
MAX_NAME = 256
#: An RFC 5322 dot-atom: what a login name must look like to be a local part as it is.
_HOST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$")
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


class IdentitySource(StrEnum):
    """Where an identity comes from (see the module docstring for the order)."""

    MESSAGE = "message"
    ACCOUNT = "account"
    PROFILE = "profile"
    FALLBACK = "fallback"


@dataclass(frozen=True)
class Identity:
    """A display name and an SMTP address, and where they come from."""

    name: str
    address: str
    source: IdentitySource

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


def _invalid(message: str) -> MAPIError:
    return MAPIError(HResult.MAPI_E_INVALID_PARAMETER, message)


def check_name(name: object, what: str = "the display name") -> str:
    """A display name for a From header: text without line breaks or control characters (which could
    start a new header), at most MAX_NAME characters; surrounding spaces are dropped."""
    if not isinstance(name, str):
        raise _invalid(f"{what} must be text, not {type(name).__name__}")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name) or has_lone_surrogate(name):
        raise _invalid(f"{what} {name!r} contains a line break or another control character")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise _invalid(f"{what} is longer than {MAX_NAME} characters")
    return name


def check_address(address: object, what: str = "the address") -> str:
    """A plain SMTP address (name@domain, nothing else): what may go into From and MAIL FROM."""
    if not isinstance(address, str):
        raise _invalid(f"{what} must be an e-mail address, not {type(address).__name__}")
    text = address.strip()
    if not text:
        raise _invalid(f"{what} is empty: give an e-mail address such as alice@example.org")
    if "<" in text or ">" in text:
        raise _invalid(f"{what} {address!r} is not a plain address: give name@domain alone, without a display name")
    if FORBIDDEN_IN_EMAIL_ADDRESS.search(text) or has_lone_surrogate(text):
        raise _invalid(f"{what} {address!r} contains white space, a line break or a control character")
    if text.upper().startswith("SMTP:"):
        text = text[5:]
    if not SMTP_ADDRESS.match(text) or text.endswith(".") or ".." in text.rpartition("@")[2]:
        raise _invalid(f"{what} {address!r} is not an SMTP address: it looks like name@domain, without a display name")
    if ENCODED_WORD.search(text):
        raise _invalid(f"{what} {address!r} contains an RFC 2047 encoded word (=?…?=)")
    if longer_than_smtp_allows(text):
        raise _invalid(f"{what} {address!r} is longer than an SMTP address may be (254 bytes)")
    return text


def profile_identity(settings: Mapping[str, Any], where: str = "profile.toml") -> Identity | None:
    """The identity `postroom identity set` keeps in the profile, or None when none is set.

    A hand-edited value that fails the checks is MAPI_E_CORRUPT_DATA, naming the key: mail must
    never go out with a From that was not checked."""
    address = settings.get(ADDRESS_KEY)
    if address in (None, ""):
        return None
    try:
        checked = check_address(address, f"{ADDRESS_KEY} in {where}")
        name = check_name(settings.get(NAME_KEY) or "", f"{NAME_KEY} in {where}")
    except MAPIError as exc:
        raise MAPIError(
            HResult.MAPI_E_CORRUPT_DATA, f"{exc.message} (set the identity with `postroom identity set`)"
        ) from None
    return Identity(name, checked, IdentitySource.PROFILE)


def login_name() -> str:
    """The user's login name without needing a passwd entry: $LOGNAME or $USER when it is usable as
    the local part of an address, else the passwd entry's name, else `uid<N>`."""
    for variable in ("LOGNAME", "USER"):
        value = os.environ.get(variable, "")
        if _DOT_ATOM.match(value):
            return value
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, OSError):
        name = ""
    return name if _DOT_ATOM.match(name) else f"uid{os.getuid()}"


def fallback_identity() -> Identity:
    """The identity of a profile that sets none: the login name at localhost."""
    user = login_name()
    return Identity(user, f"{user}@{FALLBACK_DOMAIN}", IdentitySource.FALLBACK)


def message_id_domain(address: str) -> str:
    """The domain for a Message-ID made for mail from `address`: an internationalized one (an
    RFC 6532 sender) in its IDNA form, for a Message-ID must be ASCII (RFC 5322 msg-id); localhost
    when it has none we can use (no `@`, an address literal, a domain IDNA cannot encode)."""
    local, at, domain = address.rpartition("@")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return FALLBACK_DOMAIN
    return domain if local and at and _HOST_NAME.match(domain) else FALLBACK_DOMAIN
