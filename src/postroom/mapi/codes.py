"""MAPI result codes (HRESULTs) and the exceptions that carry them.

Errors keep their MAPI code so someone who knows MAPI recognises them, and the
message says in plain words what went wrong. Where callers branch on a code, the code has
its own subclass, so they catch a class instead of comparing codes; `MAPIError(code, …)`
makes the subclass of its code by itself, so no raise can forget it:

    MAPIError                  any MAPI code; `.code`, `.message`, `.hresult`
    ├── ArgumentTypeError      MAPI_E_INVALID_PARAMETER for an argument of the wrong type (a TypeError too)
    ├── NotFound               MAPI_E_NOT_FOUND: no such message, folder, service, profile, …
    ├── ProviderFailed         MAPI_E_FAILONEPROVIDER: skip this provider alone, the service goes on
    └── StoreUnavailable       the message store cannot be used for now; nothing is lost by waiting
        ├── StoreUnreachable   MAPI_E_NETWORK_ERROR: a shared store (PostgreSQL) does not answer
        └── StoreDiskTrouble   MAPI_E_NOT_ENOUGH_DISK, MAPI_E_DISK_ERROR: the disk under it is full or failing
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class HResult(IntEnum):
    """The MAPI result codes postroom uses, with the values of mapicode.h."""

    S_OK = 0x00000000
    MAPI_E_CALL_FAILED = 0x80004005
    MAPI_E_NO_SUPPORT = 0x80040102
    MAPI_E_BAD_CHARWIDTH = 0x80040103
    MAPI_E_UNKNOWN_FLAGS = 0x80040106
    MAPI_E_OBJECT_DELETED = 0x8004010A
    MAPI_E_BUSY = 0x8004010B
    MAPI_E_NOT_ENOUGH_DISK = 0x8004010D
    MAPI_E_NOT_FOUND = 0x8004010F
    MAPI_E_VERSION = 0x80040110
    MAPI_E_LOGON_FAILED = 0x80040111
    MAPI_E_USER_CANCEL = 0x80040113
    MAPI_E_UNABLE_TO_ABORT = 0x80040114
    MAPI_E_NETWORK_ERROR = 0x80040115
    MAPI_E_DISK_ERROR = 0x80040116
    MAPI_E_CORRUPT_DATA = 0x8004011B
    MAPI_E_UNCONFIGURED = 0x8004011C
    MAPI_E_FAILONEPROVIDER = 0x8004011D
    MAPI_E_UNKNOWN_CPID = 0x8004011E
    MAPI_E_UNKNOWN_LCID = 0x8004011F
    MAPI_E_END_OF_SESSION = 0x80040200
    MAPI_E_WAIT = 0x80040500
    MAPI_E_CANCEL = 0x80040501
    MAPI_E_NOT_ME = 0x80040502
    MAPI_W_CANCEL_MESSAGE = 0x00040580
    MAPI_W_ERRORS_RETURNED = 0x00040380
    MAPI_E_NOT_IN_QUEUE = 0x80040601
    MAPI_E_NO_RECIPIENTS = 0x80040607
    MAPI_E_SUBMITTED = 0x80040608
    MAPI_E_NO_ACCESS = 0x80070005
    MAPI_E_INVALID_PARAMETER = 0x80070057


class MAPIError(Exception):
    """An error with a MAPI code: `MAPI_E_NOT_FOUND: no transport named 'fax'`."""

    #: The subclass that stands for each code (see the module docstring).
    by_code: ClassVar[dict[HResult, type[MAPIError]]] = {}
    codes: ClassVar[tuple[HResult, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for code in cls.__dict__.get("codes", ()):
            MAPIError.by_code[code] = cls

    def __new__(cls, *args: Any, **kwargs: Any) -> MAPIError:
        if cls is MAPIError:
            code = args[0] if args else kwargs.get("code")
            cls = MAPIError.by_code.get(code, MAPIError) if isinstance(code, HResult) else MAPIError
        return super().__new__(cls)

    def __init__(self, code: HResult, message: str = "") -> None:
        self.code = code
        self.message = message or code.name
        super().__init__(f"{code.name}: {self.message}")

    @property
    def hresult(self) -> int:
        return int(self.code)


class ArgumentTypeError(MAPIError, TypeError):
    """An argument of the wrong type: MAPI_E_INVALID_PARAMETER, and a TypeError too, so that both
    MAPI-minded and Python-minded callers catch it the way they expect."""

    def __init__(self, message: str) -> None:
        super().__init__(HResult.MAPI_E_INVALID_PARAMETER, message)


class NotFound(MAPIError):
    """MAPI_E_NOT_FOUND: no such message, folder, service, transport, group or profile."""

    codes = (HResult.MAPI_E_NOT_FOUND,)


class ProviderFailed(MAPIError):
    """MAPI_E_FAILONEPROVIDER: this provider cannot work now and is skipped alone (spec §2.1)."""

    codes = (HResult.MAPI_E_FAILONEPROVIDER,)


class StoreUnavailable(MAPIError):
    """The message store cannot be used for now. Each failed transaction was rolled back whole,
    so a spooler daemon waits it out (spooler/outage.py) instead of stopping."""


class StoreUnreachable(StoreUnavailable):
    """MAPI_E_NETWORK_ERROR: a shared store (PostgreSQL) does not answer."""

    codes = (HResult.MAPI_E_NETWORK_ERROR,)


class StoreDiskTrouble(StoreUnavailable):
    """MAPI_E_NOT_ENOUGH_DISK or MAPI_E_DISK_ERROR: the disk under the store is full or failing."""

    codes = (HResult.MAPI_E_NOT_ENOUGH_DISK, HResult.MAPI_E_DISK_ERROR)
