"""MAPIUIDs, entry IDs, one-off entry IDs and search keys, byte-exact (spec §12)."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from .codes import HResult, MAPIError


class MAPIUID(bytes):
    """A 16-byte MAPIUID: a GUID in Intel (little-endian) layout, compared bytewise."""

    __slots__ = ()  # immutable, so one object can stand for a UID everywhere (provider_uid_of)

    def __new__(cls, value: bytes | bytearray | memoryview) -> MAPIUID:
        raw = bytes(value)
        if len(raw) != 16:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"a MAPIUID has 16 bytes, not {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def from_guid(cls, guid: str | uuid.UUID) -> MAPIUID:
        """From a GUID string `{A41F2B81-A3BE-1910-9D6E-00DD010F5402}` or a UUID."""
        try:
            u = guid if isinstance(guid, uuid.UUID) else uuid.UUID(guid.strip("{}"))
        except ValueError as exc:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"not a GUID: {guid!r}") from exc
        return cls(u.bytes_le)

    @classmethod
    def from_hex(cls, text: str) -> MAPIUID:
        """From 32 hex digits, as the profile stores them."""
        try:
            return cls(bytes.fromhex(text))
        except ValueError as exc:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"not a MAPIUID: {text!r}") from exc

    @classmethod
    def new(cls) -> MAPIUID:
        """A fresh random UID (IMAPISupport::NewUID)."""
        return cls(uuid.uuid4().bytes_le)

    @property
    def guid(self) -> uuid.UUID:
        return uuid.UUID(bytes_le=bytes(self))

    def __str__(self) -> str:
        return "{" + str(self.guid).upper() + "}"

    def __repr__(self) -> str:
        return f"MAPIUID({self})"


MAPI_ONE_OFF_UID = MAPIUID(bytes.fromhex("812B1FA4BEA310199D6E00DD010F5402"))

# abFlags[0] of short-term entry IDs.
MAPI_SHORTTERM = 0x80
MAPI_NOTRECIP = 0x40
MAPI_THISSESSION = 0x20
MAPI_NOW = 0x10
MAPI_NOTRESERVED = 0x08

# One-off flags (the 16-bit word after the version).
MAPI_ONE_OFF_UNICODE = 0x8000
MAPI_ONE_OFF_NO_RICH_INFO = 0x0001
OOP_DONT_LOOKUP = 0x1000


# The spooler parses the UID out of every recipient it routes, and the UIDs are few (the one-off
# UID, one per address book or provider): each is made once and shared, so a recipient costs a
# slice and a lookup, and the router hashes a UID once. Bounded: unknown UIDs flood nothing.
_known_uids: dict[bytes, MAPIUID] = {}
KNOWN_UIDS_KEPT = 4096


def provider_uid_of(entry_id: bytes) -> MAPIUID | None:
    """The provider UID in bytes 4..19 of an entry ID (the routing UID), or None if too short."""
    if len(entry_id) < 20:
        return None
    raw = entry_id[4:20]
    try:
        return _known_uids[raw]
    except KeyError:
        if len(_known_uids) >= KNOWN_UIDS_KEPT:
            _known_uids.clear()
        uid = MAPIUID(raw)
        _known_uids[uid] = uid  # its own key: a hit touches one object
        return uid
    except TypeError:  # a bytearray's slice cannot be a key
        return MAPIUID(raw)


def make_entry_id(provider: MAPIUID, private: bytes, flags: bytes = b"\0\0\0\0") -> bytes:
    """A long-term entry ID: four flag bytes, the provider UID, then provider-private bytes."""
    if len(flags) != 4:
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "entry ID flags are 4 bytes")
    return bytes(flags) + bytes(provider) + bytes(private)


@dataclass(frozen=True)
class OneOff:
    """The decoded content of a one-off entry ID."""

    display_name: str
    address_type: str
    email_address: str
    unicode: bool = True
    no_rich_info: bool = False
    flags: int = 0  # the raw 16-bit flag word, so decode→encode is byte-exact


def _encode_ansi(text: str) -> bytes:
    # The session code page on Windows; here cp1252 (a superset of Latin-1 as Windows uses it).
    return text.encode("cp1252", "replace")


def encode_one_off(
    display_name: str,
    address_type: str,
    email_address: str,
    *,
    unicode: bool = True,
    no_rich_info: bool = False,
    extra_flags: int = 0,
) -> bytes:
    """Build a one-off entry ID exactly as IAddrBook::CreateOneOff does (spec §12.3)."""
    for field, value in (("address type", address_type), ("e-mail address", email_address)):
        if "\0" in value:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"NUL inside the {field}")
    if "\0" in display_name:
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "NUL inside the display name")
    flags = (MAPI_ONE_OFF_UNICODE if unicode else 0) | (MAPI_ONE_OFF_NO_RICH_INFO if no_rich_info else 0)
    flags |= extra_flags & 0xFFFF
    enc = _encode_unicode if unicode else _encode_ansi_field
    return _ONE_OFF_HEAD + struct.pack("<HH", 0, flags) + enc(display_name) + enc(address_type) + enc(email_address)


#: What every one-off entry ID begins with: four zero flag bytes and MAPI_ONE_OFF_UID.
_ONE_OFF_HEAD = b"\0\0\0\0" + bytes(MAPI_ONE_OFF_UID)


def _encode_unicode(s: str) -> bytes:
    try:
        return s.encode("utf-16-le") + b"\0\0"
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-16 form
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"not encodable as UTF-16: {s!r}") from exc


def _encode_ansi_field(s: str) -> bytes:
    return _encode_ansi(s) + b"\0"


def one_off_entry_id(display_name: str, address_type: str, email_address: str) -> bytes:
    """A one-off entry ID as Outlook writes one: Unicode, with MAPI_ONE_OFF_NO_RICH_INFO for an
    Internet (SMTP) address (flag word 0x8001, bytes ``01 80``), which never gets TNEF; other
    address types keep rich info (0x8000), as CreateOneOff without MAPI_SEND_NO_RICH_INFO makes."""
    smtp = address_type.upper() == "SMTP"
    return encode_one_off(display_name, address_type, email_address, no_rich_info=smtp)


def is_one_off(entry_id: bytes) -> bool:
    return len(entry_id) >= 24 and entry_id[4:20] == MAPI_ONE_OFF_UID


def decode_one_off(entry_id: bytes) -> OneOff:
    """Parse a one-off entry ID; raises MAPI_E_CORRUPT_DATA on anything malformed."""
    if not is_one_off(entry_id):
        raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "not a one-off entry ID")
    version, flags = struct.unpack_from("<HH", entry_id, 20)
    if version != 0:
        raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"one-off entry ID version {version} is unknown")
    unicode = bool(flags & MAPI_ONE_OFF_UNICODE)
    body = entry_id[24:]
    fields: list[str] = []
    pos = 0
    for _ in range(3):
        if unicode:
            end = pos
            while True:
                end = body.find(b"\0\0", end)
                if end < 0:
                    raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "unterminated string in one-off entry ID")
                if (end - pos) % 2 == 0:
                    break
                end += 1
            try:
                fields.append(body[pos:end].decode("utf-16-le"))
            except UnicodeDecodeError as exc:
                raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "bad UTF-16 in one-off entry ID") from exc
            pos = end + 2
        else:
            end = body.find(b"\0", pos)
            if end < 0:
                raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "unterminated string in one-off entry ID")
            fields.append(body[pos:end].decode("cp1252", "replace"))
            pos = end + 1
    if pos != len(body):
        raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "trailing bytes after the e-mail address")
    return OneOff(
        display_name=fields[0],
        address_type=fields[1],
        email_address=fields[2],
        unicode=unicode,
        no_rich_info=bool(flags & MAPI_ONE_OFF_NO_RICH_INFO),
        flags=flags,
    )


#: Address types whose addresses compare case-sensitively (kept as-is in search keys).
CASE_SENSITIVE_ADDRESS_TYPES: frozenset[str] = frozenset({"X400"})


def search_key(address_type: str, email_address: str) -> bytes:
    """PR_SEARCH_KEY: `UPPER(addrtype) + ":" + canonical(address) + NUL` (spec §12.4)."""
    kind = address_type.upper()
    canonical = email_address if kind in CASE_SENSITIVE_ADDRESS_TYPES else email_address.upper()
    return (kind + ":" + canonical).encode("utf-8") + b"\0"
