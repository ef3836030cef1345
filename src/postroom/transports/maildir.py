"""The `maildir` transport: delivers mail for local domains into Maildir folders.

Each recipient `local@domain` whose address type is registered and whose domain is one of
the configured `domains` gets the RFC 5322 form of the message in `ROOT/<domain>/<local>/`
(lower-cased), delivered the standard Maildir way: written to `tmp/` under a unique name,
fsync'ed, renamed into `new/`, and the directory fsync'ed. Recipients of other domains or
address types are left pending ("not mine") for the next transport.

One recipient's trouble is its own. A local part that cannot name a directory (too long once
lower-cased, a slash, a control character), or a name the file system refuses
(ENAMETOOLONG, EILSEQ, EINVAL), fails that recipient alone with an NDR
(MAPI_DIAG_MAIL_ADDRESS_INCORRECT). A mailbox that cannot be written for now (a file where its
directory should be, no permission, over quota) delays that recipient alone: the others are
delivered, and `end_message` asks the spooler to offer the rest again later (END_RESEND_LATER).
Trouble of the whole file system (full, read-only, I/O errors) makes the whole message wait.

Options:

* `root`: the directory holding the domains; relative to the profile directory. Default `maildir`.
* `domains`: the domains delivered here (a list, or a comma-separated string); required.
* `address_types`: the address types registered; default `["SMTP"]`.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import mime
from ..mapi.codes import MAPIError
from ..mapi.flags import EndMessageFlags, LogonFlags, NDRDiag, NDRReason, StatusCode
from .options import invalid as _invalid
from .options import string_list as _string_list
from .spi import (
    OutboundMessage,
    OutboundRecipient,
    RecipientScope,
    Registration,
    SubmitResult,
    TransportLogon,
    TransportProvider,
    nonblocking,
)

DEFAULT_ROOT = "maildir"
DEFAULT_ADDRESS_TYPES = ("SMTP",)
#: The longest local part accepted, in UTF-8 bytes of its lower-cased form (the mailbox directory's
#: name): a file name's limit on common file systems.
MAX_LOCAL_PART_BYTES = 255
#: OSErrors that say the file system will never take this mailbox name: that recipient fails.
_NAME_REFUSED = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL})
#: OSErrors of the whole file system, not of one mailbox: the whole message waits.
_WHOLE_FILE_SYSTEM = frozenset({errno.ENOSPC, errno.EROFS, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE})

_DIR_MODE = 0o700
_FILE_MODE = 0o600


def _check_domain(domain: str) -> str:
    domain = domain.lower()
    bad = (
        domain.startswith(".")
        or ".." in domain
        or any(c in domain for c in "/\\@\0")
        or any(c.isspace() or not c.isprintable() for c in domain)
    )
    if bad:
        raise _invalid(f"option 'domains': {domain!r} is not a domain name")
    return domain


def _check_address_type(adrtype: str) -> str:
    adrtype = adrtype.upper()
    if adrtype == "*":
        raise _invalid("option 'address_types': maildir needs named address types, not the wildcard '*'")
    if any(c == ":" or c.isspace() or not c.isprintable() for c in adrtype):
        raise _invalid(f"option 'address_types': {adrtype!r} is not an address type")
    return adrtype


@dataclass(frozen=True)
class MaildirConfig:
    """The validated options of one maildir service."""

    root: Path
    domains: frozenset[str]
    address_types: tuple[str, ...]

    @classmethod
    def from_options(cls, options: Mapping[str, Any], profile_dir: Path) -> MaildirConfig:
        opts = MaildirProvider.validate_options(options)
        root = Path(opts["root"]).expanduser()
        if not root.is_absolute():
            root = profile_dir / root
        return cls(root, frozenset(opts["domains"]), tuple(opts["address_types"]))


def unquote_local_part(local: str) -> str:
    """`"john.doe"` → `john.doe`: a quoted local part (RFC 5321 quoted-string) names the same mailbox."""
    if len(local) >= 2 and local[0] == local[-1] == '"':
        return re.sub(r"\\(.)", r"\1", local[1:-1], flags=re.DOTALL)
    return local


def local_part_problem(local: str) -> str | None:
    """Why `local` cannot name a mailbox directory, or None when it can."""
    if not local:
        return "the address has an empty local part"
    if local.startswith("."):
        return f"the local part {local!r} starts with a dot"
    if ".." in local:
        return f"the local part {local!r} contains '..'"
    if "/" in local or "\\" in local:
        return f"the local part {local!r} contains a slash"
    if "\0" in local:
        return "the local part contains a NUL character"
    if any(not c.isprintable() for c in local):
        return f"the local part {local!r} contains a control character"
    # The directory is named by the lower-cased form, which can be longer: "İ" (2 bytes in UTF-8)
    # lower-cases to "i" + U+0307 (3 bytes).
    if len(local.lower().encode("utf-8", "surrogatepass")) > MAX_LOCAL_PART_BYTES:
        return f"the local part is longer than {MAX_LOCAL_PART_BYTES} bytes as a lower-case mailbox name"
    return None


# --- Maildir delivery ----------------------------------------------------------------------

_seq = itertools.count(1)
_seq_lock = threading.Lock()


def _hostname() -> str:
    # Maildir: "/" and ":" in the host name are written as \057 and \072.
    return (socket.gethostname() or "localhost").replace("/", r"\057").replace(":", r"\072")


def unique_name() -> str:
    """A Maildir file name, `time.pid_seq.hostname`, unique within this host."""
    with _seq_lock:
        seq = next(_seq)
    return f"{int(time.time())}.{os.getpid()}_{seq}.{_hostname()}"


def ensure_maildir(path: Path) -> None:
    """Create `path` with its tmp, new and cur subdirectories, as needed."""
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)


def _fsync_dir(path: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a directory to fsync it
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tmp(maildir: Path, data: bytes) -> Path:
    """Write `data` to a new, fsync'ed file in `maildir/tmp` and return its path."""
    while True:
        path = maildir / "tmp" / unique_name()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), _FILE_MODE)
        except FileExistsError:  # a leftover from a crashed delivery with the same name: pick another
            continue
        break
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quietly(path)
        raise
    return path


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


# --- the provider and its logon ----------------------------------------------------------------


class MaildirLogon(TransportLogon):
    def __init__(self, provider: MaildirProvider, flags: LogonFlags, config: MaildirConfig) -> None:
        super().__init__(provider, flags)
        self.config = config
        self.registration = Registration.of(*config.address_types, scope=RecipientScope.for_domains(config.domains))
        self.status.identity = str(config.root)
        #: Refs of messages whose delayed recipients end_message sends back for later.
        self._resend_later: set[int] = set()
        try:
            # Creating a local directory is no external connection, so NO_CONNECT does not matter.
            config.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            # Not fatal: the mount may appear later; every delivery tries again.
            self.status.failed(f"cannot create {config.root}: {exc.strerror or exc}")

    def address_types(self) -> Registration:
        return self.registration

    def _is_mine(self, rcpt: OutboundRecipient) -> bool:
        if rcpt.address_type.upper() not in self.config.address_types:
            return False
        return self.registration.takes(rcpt.address_type, rcpt.email_address)

    def submit_message(self, message: OutboundMessage, flags: int) -> SubmitResult:
        taken = [r for r in message.pending() if self._is_mine(r)]
        if not taken:
            return SubmitResult.not_me()

        # Sort out the addresses that can never be delivered. A mailbox named twice (To and
        # Bcc, or two spellings differing in case) gets one file per recipient row.
        deliveries: list[tuple[OutboundRecipient, Path]] = []
        for rcpt in taken:
            quoted, _, domain = rcpt.email_address.rpartition("@")
            local = unquote_local_part(quoted)
            problem = local_part_problem(local)
            if problem is not None:
                rcpt.mark_failed(
                    f"Cannot deliver to {rcpt.email_address!r}: {problem}.",
                    reason=NDRReason.TRANSFER_IMPOSSIBLE,
                    diag=NDRDiag.MAIL_ADDRESS_INCORRECT,
                )
                continue
            deliveries.append((rcpt, self.config.root / domain.lower() / local.lower()))
        if not deliveries:
            return SubmitResult.ok()

        try:
            # Every recipient gets the same bytes: Bcc recipients are never written into the
            # header, so the copy for a Bcc recipient reveals no other Bcc recipient.
            data = mime.to_bytes(message.data, include_bcc=False, linesep="\n")
        except MAPIError as exc:  # the message itself is malformed: no retry can help
            for rcpt, _ in deliveries:
                rcpt.mark_failed(
                    f"The message cannot be converted to Internet format: {exc.message}",
                    reason=NDRReason.CONVERSION_NOT_PERFORMED,
                    diag=NDRDiag.CONTENT_SYNTAX_IN_ERROR,
                )
            return SubmitResult.ok()
        except OSError as exc:  # an attachment could not be read
            return self._write_failed(exc)

        # Two phases, so a retry does not deliver a file twice. On a non-OK result the spooler
        # discards every mark of this call and retries all these recipients later; so first
        # every file is written (and fsync'ed) to tmp/, which readers ignore. An error of the
        # whole file system there (disk full, read-only, I/O) removes the tmp files and asks for
        # a retry with nothing delivered; an error of one mailbox fails or delays that recipient
        # alone (module docstring). Only when the tmp writes are done are the files renamed into
        # new/. A rename within one file system does not fail for lack of space; should one
        # (or the directory fsync) fail anyway, the files renamed before it stay delivered and
        # the retry delivers them again: a duplicate, never a loss.
        written: list[tuple[OutboundRecipient, Path, Path]] = []
        delayed: list[str] = []
        for rcpt, maildir in deliveries:
            try:
                ensure_maildir(maildir)
                written.append((rcpt, maildir, write_tmp(maildir, data)))
            except OSError as exc:
                if exc.errno in _WHOLE_FILE_SYSTEM:
                    for _, _, tmp in written:
                        _unlink_quietly(tmp)
                    return self._write_failed(exc)
                if exc.errno in _NAME_REFUSED:
                    rcpt.mark_failed(
                        f"Cannot deliver to {rcpt.email_address!r}: the file system refuses the mailbox name "
                        f"({exc.strerror or exc}).",
                        reason=NDRReason.TRANSFER_IMPOSSIBLE,
                        diag=NDRDiag.MAIL_ADDRESS_INCORRECT,
                    )
                else:
                    delayed.append(f"Maildir write failed for {rcpt.email_address!r}: {exc}")
                    rcpt.defer(delayed[-1])  # shown while it waits (`postroom queue`, `show`)

        try:
            for _, maildir, tmp in written:
                os.rename(tmp, maildir / "new" / tmp.name)
            for new_dir in dict.fromkeys(maildir / "new" for _, maildir, _ in written):
                _fsync_dir(new_dir)
        except OSError as exc:
            for _, _, tmp in written:
                _unlink_quietly(tmp)  # those not renamed yet; the renamed ones are gone from tmp/
            return self._write_failed(exc)
        for rcpt, _, _ in written:
            rcpt.mark_delivered()

        if delayed:
            self.status.failed(delayed[-1])
            if not any(r.mark is not None for r in message.recipients):
                return SubmitResult.wait(0, delayed[-1])  # no wait of our own: the spooler backs off
            # Keeping the marks of this call needs S_OK: the delayed recipients stay unmarked and
            # end_message asks the spooler to offer them to this transport again later.
            self._resend_later.add(message.ref)
            return SubmitResult.ok()
        if self.status.status_code & StatusCode.FAILURE:
            self.status.set(remove=StatusCode.FAILURE, text="")
        return SubmitResult.ok()

    @nonblocking
    def end_message(self, ref: int) -> EndMessageFlags:
        if ref in self._resend_later:
            self._resend_later.discard(ref)
            return EndMessageFlags.RESEND_LATER
        return EndMessageFlags.NONE

    def _write_failed(self, exc: OSError) -> SubmitResult:
        text = f"Maildir write failed: {exc}"
        self.status.failed(text)
        return SubmitResult.wait(0, text)  # no wait of our own: the spooler backs off


class MaildirProvider(TransportProvider):
    """Delivers mail for local domains into Maildir folders under one root directory."""

    display_name = "Maildir delivery"
    option_help: Mapping[str, str] = {
        "root": f"directory holding <domain>/<localpart>/ Maildirs; relative to the profile (default {DEFAULT_ROOT!r})",
        "domains": "domains delivered here: a list or a comma-separated string (required)",
        "address_types": "address types taken by this transport (default ['SMTP'])",
    }

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        root = opts.get("root", DEFAULT_ROOT)
        if isinstance(root, os.PathLike):
            root = os.fspath(root)
        if not isinstance(root, str) or not root.strip():
            raise _invalid(f"option 'root' must be a directory name, not {root!r}")
        if "\0" in root:
            raise _invalid("option 'root' contains a NUL character")
        if "domains" not in opts:
            raise _invalid("option 'domains' is required: the domains delivered into the Maildirs")
        domains = list(dict.fromkeys(_check_domain(d) for d in _string_list("domains", opts["domains"])))
        adrtypes = opts.get("address_types", list(DEFAULT_ADDRESS_TYPES))
        address_types = list(dict.fromkeys(_check_address_type(a) for a in _string_list("address_types", adrtypes)))
        return {"root": root, "domains": domains, "address_types": address_types}

    def logon(self, flags: LogonFlags) -> MaildirLogon:
        config = MaildirConfig.from_options(self.context.options, self.context.profile_dir)
        return MaildirLogon(self, flags, config)
