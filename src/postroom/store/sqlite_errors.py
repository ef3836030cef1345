"""What an SQLite failure means, said with the MAPI code a user can act on.

A full disk, a read-only profile and a damaged file look alike from far away (a write fails),
but call for opposite actions: free some space and wait, fix the permissions, or restore a
backup. Calling the first two "corrupt data" invites deleting a healthy store. So every error
from the SQLite store leaves it as one of:

* MAPI_E_NOT_ENOUGH_DISK: no space left on the device (SQLITE_FULL, ENOSPC). Nothing is lost: the
  transaction was rolled back; the spooler daemon waits and tries again.
* MAPI_E_NO_ACCESS: the file or its directory cannot be written or opened (SQLITE_READONLY,
  SQLITE_CANTOPEN, SQLITE_PERM, EACCES, EROFS), with the path.
* MAPI_E_DISK_ERROR: the operating system reported an I/O error (SQLITE_IOERR, EIO).
* MAPI_E_CORRUPT_DATA: the file is damaged or not a database (SQLITE_CORRUPT, SQLITE_NOTADB).
* MAPI_E_BUSY: another process kept the store locked past the busy timeout.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from ..mapi.codes import HResult, MAPIError

_BY_SQLITE_CODE: dict[int, HResult] = {
    13: HResult.MAPI_E_NOT_ENOUGH_DISK,  # SQLITE_FULL
    8: HResult.MAPI_E_NO_ACCESS,  # SQLITE_READONLY
    14: HResult.MAPI_E_NO_ACCESS,  # SQLITE_CANTOPEN
    3: HResult.MAPI_E_NO_ACCESS,  # SQLITE_PERM
    23: HResult.MAPI_E_NO_ACCESS,  # SQLITE_AUTH
    10: HResult.MAPI_E_DISK_ERROR,  # SQLITE_IOERR
    11: HResult.MAPI_E_CORRUPT_DATA,  # SQLITE_CORRUPT
    26: HResult.MAPI_E_CORRUPT_DATA,  # SQLITE_NOTADB
    5: HResult.MAPI_E_BUSY,  # SQLITE_BUSY
    6: HResult.MAPI_E_BUSY,  # SQLITE_LOCKED
}

_BY_ERRNO: dict[int, HResult] = {
    errno.ENOSPC: HResult.MAPI_E_NOT_ENOUGH_DISK,
    errno.EDQUOT: HResult.MAPI_E_NOT_ENOUGH_DISK,
    errno.EACCES: HResult.MAPI_E_NO_ACCESS,
    errno.EPERM: HResult.MAPI_E_NO_ACCESS,
    errno.EROFS: HResult.MAPI_E_NO_ACCESS,
    errno.EIO: HResult.MAPI_E_DISK_ERROR,
}

_WHAT: dict[HResult, str] = {
    HResult.MAPI_E_NOT_ENOUGH_DISK: "no space left on the device holding the message store {path}",
    HResult.MAPI_E_NO_ACCESS: "the message store {path} (or its directory) cannot be written or opened",
    HResult.MAPI_E_DISK_ERROR: "the disk holding the message store {path} reported an I/O error",
    HResult.MAPI_E_CORRUPT_DATA: "the message store {path} is damaged or not a postroom store",
    HResult.MAPI_E_BUSY: "the message store {path} stayed locked by another process",
}


def store_error(exc: BaseException, path: Path) -> MAPIError | None:
    """The MAPIError an SQLite or OS error means for the store at `path`; None when it is neither."""
    code: HResult | None = None
    if isinstance(exc, sqlite3.Error):
        primary = getattr(exc, "sqlite_errorcode", None)
        if isinstance(primary, int):
            code = _BY_SQLITE_CODE.get(primary & 0xFF)
        if code is None and isinstance(exc, sqlite3.DatabaseError):
            text = str(exc).lower()
            code = (
                HResult.MAPI_E_NOT_ENOUGH_DISK
                if "disk is full" in text
                else HResult.MAPI_E_NO_ACCESS
                if "readonly" in text or "unable to open" in text
                else HResult.MAPI_E_CORRUPT_DATA
                if "malformed" in text or "not a database" in text
                else None
            )
    elif isinstance(exc, OSError) and exc.errno is not None:
        code = _BY_ERRNO.get(exc.errno)
    if code is HResult.MAPI_E_DISK_ERROR and _nearly_full(path):
        code = HResult.MAPI_E_NOT_ENOUGH_DISK  # SQLite says "disk I/O error" when a WAL write finds no space
    if code is None:
        return None
    return MAPIError(code, f"{_WHAT[code].format(path=path)} ({exc})")


#: Less free space than this on the store's file system counts as a full disk.
NEARLY_FULL_BYTES = 1 << 20


def _nearly_full(path: Path) -> bool:
    try:
        fs = os.statvfs(path.parent)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < NEARLY_FULL_BYTES
