"""Reading and writing the file formats mail is kept in: one `.eml` file, an mbox file, a
Maildir directory, and Outlook's `.msg` (read by `msg`).

`scan` walks what a user named and yields one `ImportItem` per message, streamed: an mbox is
indexed once (offsets only, by the stdlib `mailbox`) and each message is read when its turn
comes, so a 10,000-message mbox costs the memory of its largest message, not of the file. An
item that cannot be read is yielded with its reason and the walk goes on: one bad message
never stops an import.

The import key of an item is the SHA-256 of its bytes: the same message imported again (the
same file, or the same message in another mbox) has the same key, and the store saves it once.
"""

from __future__ import annotations

import hashlib
import mailbox
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

__all__ = [
    "ImportItem",
    "ImportResult",
    "ImportStatus",
    "SourceKind",
    "import_key",
    "kind_of",
    "scan",
    "write_maildir",
    "write_mbox",
]


class SourceKind(StrEnum):
    """What a path given to `postroom import` is."""

    EML = "eml"
    MBOX = "mbox"
    MAILDIR = "maildir"
    MSG = "msg"


#: The first bytes of an OLE compound file (MS-CFB §2.2): a `.msg`, whatever its name.
CFB_SIGNATURE = bytes.fromhex("D0CF11E0A1B11AE1")


@dataclass(frozen=True)
class ImportItem:
    """One message found in a source: its bytes, or why they could not be read."""

    source: str
    kind: SourceKind
    data: bytes | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        return import_key(self.data or b"")


class ImportStatus(StrEnum):
    """What became of one message of an import."""

    IMPORTED = "imported"
    SKIPPED = "skipped"  # imported before, and still in the store
    FAILED = "failed"  # unreadable: the reason is in `detail`


@dataclass(frozen=True)
class ImportResult:
    """One message of an import (`Session.import_files`): where it was, what became of it, the
    ID of the message it became, and why it failed or was skipped."""

    source: str
    status: ImportStatus
    message_id: int | None = None
    detail: str = ""


def import_key(data: bytes) -> str:
    """The stable key an imported message is recorded under (see the module docstring)."""
    return hashlib.sha256(data).hexdigest()


def kind_of(path: Path) -> SourceKind:
    """A directory with cur/ and new/ is a Maildir; a file is a `.msg` by its signature, an mbox
    when it starts with a `From ` line (or is empty), and otherwise one RFC 5322 message."""
    if path.is_dir():
        return SourceKind.MAILDIR
    with path.open("rb") as stream:
        head = stream.read(8)
    if head == CFB_SIGNATURE:
        return SourceKind.MSG
    if head.startswith(b"From ") or not head:
        return SourceKind.MBOX  # an empty file is an mbox with no messages in it
    return SourceKind.EML


def scan(paths: Iterable[str | os.PathLike[str]]) -> Iterator[ImportItem]:
    """Every message in `paths`, one at a time (see the module docstring)."""
    for name in paths:
        path = Path(name)
        try:
            kind = kind_of(path)
        except OSError as exc:
            yield ImportItem(str(path), SourceKind.EML, error=_why(exc))
            continue
        if kind == SourceKind.MAILDIR:
            yield from _maildir(path)
        elif kind == SourceKind.MBOX:
            yield from _mbox(path)
        else:
            try:
                yield ImportItem(str(path), kind, data=path.read_bytes())
            except OSError as exc:
                yield ImportItem(str(path), kind, error=_why(exc))


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _mbox(path: Path) -> Iterator[ImportItem]:
    box = mailbox.mbox(path, create=False)
    try:
        keys = box.keys()  # the index: offsets only
    except OSError as exc:
        yield ImportItem(str(path), SourceKind.MBOX, error=_why(exc))
        return
    try:
        for n, key in enumerate(keys, start=1):
            where = f"{path}#{n}"
            try:
                yield ImportItem(where, SourceKind.MBOX, data=box.get_bytes(key))
            except OSError as exc:
                yield ImportItem(where, SourceKind.MBOX, error=_why(exc))
    finally:
        box.close()


def _maildir(path: Path) -> Iterator[ImportItem]:
    if not (path / "cur").is_dir() and not (path / "new").is_dir():
        yield ImportItem(str(path), SourceKind.MAILDIR, error="a directory, but no Maildir (it has no cur/ or new/)")
        return
    for sub in ("new", "cur"):
        folder = path / sub
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            try:
                yield ImportItem(str(entry), SourceKind.MAILDIR, data=entry.read_bytes())
            except OSError as exc:
                yield ImportItem(str(entry), SourceKind.MAILDIR, error=_why(exc))


def write_mbox(path: str | os.PathLike[str], messages: Iterable[bytes]) -> int:
    """Append each message (RFC 5322 bytes) to the mbox at `path` (created if missing), with
    mboxrd quoting of body lines that start with `From `, as the stdlib `mailbox` writes them.
    Returns how many were written."""
    with open(path, "ab"):
        pass  # an empty folder still makes a file: an import of it then finds nothing, not an error
    box = mailbox.mbox(os.fspath(path), create=True)
    count = 0
    box.lock()
    try:
        for data in messages:
            box.add(data)
            count += 1
            if count % 500 == 0:
                box.flush()  # keep the pending list short: memory stays flat on a large folder
        box.flush()
    finally:
        box.unlock()
        box.close()
    return count


def write_maildir(path: str | os.PathLike[str], messages: Iterable[bytes]) -> int:
    """Deliver each message into the Maildir at `path` (created if missing; files go to new/)."""
    box = mailbox.Maildir(os.fspath(path), create=True)
    count = 0
    for data in messages:
        box.add(data)
        count += 1
    box.close()
    return count
