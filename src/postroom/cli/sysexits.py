"""sendmail's exit codes (sysexits.h), and which postroom error means which.

Programs that call sendmail (cron, mailx, git send-email) read only the exit code: 75 means
"try again later" and keeps their copy, anything else non-zero means the message is refused.
So the mapping errs towards 75 only where waiting can help (the store is unreachable or its disk
full) and never answers 0 before the message is durable in the store.
"""

from __future__ import annotations

from ..mapi.codes import HResult, MAPIError, StoreUnavailable

EX_OK = 0
EX_USAGE = 64  # a command line sendmail refuses
EX_DATAERR = 65  # the message or its envelope is bad (no recipients, a bad -f)
EX_NOUSER = 67  # a recipient is no address, or no transport takes it
EX_SOFTWARE = 70  # a bug, or a submit socket that answers nonsense
EX_CANTCREAT = 73  # the store cannot be written (permissions)
EX_TEMPFAIL = 75  # the store or the submit socket is unavailable for now: try again later
EX_CONFIG = 78  # no usable profile (missing, unreadable profile.toml)

#: MAPI codes that say something about the request rather than the machine.
_BY_CODE = {
    HResult.MAPI_E_NO_RECIPIENTS: EX_DATAERR,
    HResult.MAPI_E_INVALID_PARAMETER: EX_DATAERR,
    HResult.MAPI_E_NOT_FOUND: EX_CONFIG,
    HResult.MAPI_E_CORRUPT_DATA: EX_CONFIG,
    HResult.MAPI_E_UNCONFIGURED: EX_CONFIG,
    HResult.MAPI_E_NO_ACCESS: EX_CANTCREAT,
    HResult.MAPI_E_BUSY: EX_TEMPFAIL,
}


def exit_code(exc: BaseException) -> int:
    """The sysexits code for an error that stopped a submission."""
    # Imported here: the face is loaded only by the commands that log on (start-up time).
    from .. import UnknownRecipient

    if isinstance(exc, UnknownRecipient):
        return EX_NOUSER
    if isinstance(exc, StoreUnavailable):
        return EX_TEMPFAIL
    if isinstance(exc, MAPIError):
        return _BY_CODE.get(exc.code, EX_SOFTWARE)
    if isinstance(exc, PermissionError):
        return EX_CANTCREAT
    if isinstance(exc, OSError):
        return EX_TEMPFAIL
    return EX_SOFTWARE
