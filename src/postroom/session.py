"""The public facade: `postroom.logon(profile)` → `Session` (or `alogon` → `AsyncSession`).

A session opens a profile's message store; its transports are logged on when the
session first needs them (routing, `enum_adr_types`, delivery). The session is the face
only: it checks its callers' arguments and runs the engine underneath (`postroom.engine`),
which does the work. The CLI, and every other front end, calls only this face.

Every method checks the types of its arguments: a wrong one is ArgumentTypeError, which is
MAPIError(MAPI_E_INVALID_PARAMETER) and TypeError at once. A closed session answers every
call with MAPI_E_END_OF_SESSION; closing it again does nothing. A `Session` may be shared by
threads: its calls run one at a time (a long one, such as `run_spooler`, holds the others).
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from email.utils import make_msgid
from pathlib import Path
from typing import Any, TypeVar

from . import mime
from .addressing import has_break, has_lone_surrogate, parse_address
from .engine import Engine
from .engine.daemon import open_when_usable
from .engine.eventloop import EventLoopKind, daemon_loop_kind, loop_factory
from .engine.groups import GroupChange, SendReceiveGroup
from .engine.listener_settings import ListenerSettings
from .engine.listener_users import listener_users, remove_listener_user, set_listener_user
from .engine.pidfile import DaemonPidFile
from .engine.report import RecipientReport
from .engine.results import Received, RouteAnswer, SendReceiveSummary
from .engine.serving import Serving
from .engine.status import StatusReport
from .envelope import SubmissionSource, envelope_message
from .formats import mailboxes, msg, tnef
from .formats.mailboxes import ImportResult, ImportStatus, SourceKind
from .identity import ADDRESS_KEY as IDENTITY_ADDRESS_KEY
from .identity import NAME_KEY as IDENTITY_NAME_KEY
from .identity import (
    Identity,
    IdentitySource,
    check_address,
    check_name,
    fallback_identity,
    message_id_domain,
    profile_identity,
)
from .mapi import tags as T
from .mapi.codes import ArgumentTypeError, HResult, MAPIError
from .mapi.dsn import (
    DsnParameterError,
    MessageDsn,
    RecipientDsn,
    RecipientDsnRequest,
    parse_envid,
    parse_notify,
    parse_ret,
    read_recipient_request,
)
from .mapi.entryid import decode_one_off, is_one_off, one_off_entry_id, search_key
from .mapi.flags import MAPI_SUBMITTED, MessageFlags, RecipientType
from .mapi.message import Attachment, MessageData, Recipient
from .profile import Mode, Profile, Service
from .relayed import mark_relayed, relayed_mail
from .spooler import PassSummary
from .store import Event, Folder, FolderRole, MessageStore, MessageSummary, QueueEntry, RecipientStatus, RetryAll
from .store.base import ActivityBucket, DeliveryStats, QueueCounts, QueuePage, QueueState, SpoolerStats
from .store.notify import NoteKind
from .submission import UnknownRecipient, sendmail_message, with_from
from .transports.registry import transport_kinds
from .transports.spi import StatusRow

R = TypeVar("R")

#: An import commits every this many messages (or bytes of them), whichever comes first: few
#: fsyncs, and what waits for the commit stays small (memory stays flat on a long mbox).
_IMPORT_BATCH = 200
_IMPORT_BATCH_BYTES = 16 << 20


# --- argument checks -----------------------------------------------------------------------------
def _type_names(types: tuple[type, ...]) -> str:
    names = ["None" if t is type(None) else t.__name__ for t in types]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _import_item_message(kind: SourceKind, data: bytes) -> MessageData:
    """The message an imported file (or mbox or Maildir item) holds: MAPI_E_CORRUPT_DATA when it
    holds none. `mime.from_mime` never fails (a transport must keep whatever arrived): bytes with
    no header line it can read become its "(unparseable message)", which has no original stream.
    An import of such a file (a picture, a text that is no mail) fails instead of saving that."""
    if kind == SourceKind.MSG:
        return msg.add_unicode_twins(msg.read_msg(data))
    message = mime.from_mime(data)
    if message.original is None:
        raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "not an Internet message: no header lines can be read in it")
    return message


def _check(value: object, types: type | tuple[type, ...], what: str) -> None:
    """ArgumentTypeError unless `value` is one of `types` (a bool is never taken for an int)."""
    wanted = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
        shown = "None" if value is None else type(value).__name__
        raise ArgumentTypeError(f"{what} must be {_type_names(wanted)}, not {shown}")


def _recipient_dsn(given: object) -> dict[str, RecipientDsn]:
    """`submit_mime(recipient_dsn=…)` checked, by e-mail address in lower case (as the envelope
    matches addresses); ArgumentTypeError for a wrong type, MAPI_E_INVALID_PARAMETER for an address
    that is none, DsnParameterError for a bad value."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise ArgumentTypeError(f"submit_mime(): recipient_dsn must be a mapping, not {type(given).__name__}")
    out: dict[str, RecipientDsn] = {}
    for address, request in given.items():
        _check(address, str, "submit_mime(): each address of recipient_dsn")
        if not isinstance(request, Mapping):
            raise ArgumentTypeError(f"submit_mime(): recipient_dsn[{address!r}] must be a mapping")
        key = parse_address(address).email_address.lower()  # named as in `recipients`: "Bob <bob@x>" too
        if key in out:
            raise DsnParameterError(f"recipient_dsn names {address} twice")
        try:
            out[key] = read_recipient_request(request)
        except DsnParameterError as exc:
            raise DsnParameterError(f"recipient_dsn[{address!r}]: {exc}") from None
    return out


def _check_ref(ref: object, method: str) -> None:
    """A message reference: its ID (int), entry ID (bytes) or either as text (str)."""
    _check(ref, (int, str, bytes), f"{method}(): the message (an ID or entry ID)")


def _check_strings(values: object, method: str, what: str) -> None:
    """A list of strings; one string on its own is refused, not taken letter by letter."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        shown = "None" if values is None else type(values).__name__
        raise ArgumentTypeError(f"{method}(): {what} must be a list of str, not {shown}")


#: The originator properties `Draft.set_sender` sets: name, address type, address, entry ID, search key.
_SENDER_TAGS = (
    (T.PR_SENDER_NAME, T.PR_SENDER_ADDRTYPE, T.PR_SENDER_EMAIL_ADDRESS, T.PR_SENDER_ENTRYID, T.PR_SENDER_SEARCH_KEY),
    (
        T.PR_SENT_REPRESENTING_NAME,
        T.PR_SENT_REPRESENTING_ADDRTYPE,
        T.PR_SENT_REPRESENTING_EMAIL_ADDRESS,
        T.PR_SENT_REPRESENTING_ENTRYID,
        T.PR_SENT_REPRESENTING_SEARCH_KEY,
    ),
)


#: How many From addresses a session keeps the Message-ID domain of.
_DOMAINS_KEPT = 64

# Worked out once: enum arithmetic and iteration cost microseconds per draft in a batch.
_NEW_DRAFT_FLAGS = int(MessageFlags.UNSENT | MessageFlags.FROMME)
_RECIPIENT_KINDS = frozenset(RecipientType)


class Draft:
    """A message being composed in a folder (normally the Outbox); `submit()` sends it."""

    def __init__(self, session: _SessionCore, folder: Folder) -> None:
        self._session = session
        self.folder = folder
        self.data = MessageData(
            props={
                T.PR_MESSAGE_CLASS: "IPM.Note",
                T.PR_MESSAGE_FLAGS: _NEW_DRAFT_FLAGS,
                T.PR_SENTMAIL_ENTRYID: session.engine.store.folder(FolderRole.SENT_ITEMS).entry_id,
                T.PR_CREATION_TIME: session.clock(),
            }
        )
        self.message_id: int | None = None

    # Content.
    @property
    def subject(self) -> str:
        return self.data.subject

    @subject.setter
    def subject(self, value: str) -> None:
        _check(value, str, "subject")
        self.data.props[T.PR_SUBJECT] = value

    @property
    def body(self) -> str:
        return self.data.body

    @body.setter
    def body(self, value: str) -> None:
        _check(value, str, "body")
        self.data.props[T.PR_BODY] = value

    def set(self, tag: int, value: Any) -> Draft:
        """Set any property (PR_ORIGINATOR_DELIVERY_REPORT_REQUESTED, PR_DELETE_AFTER_SUBMIT, …)."""
        _check(tag, int, "set(): the property tag")
        self.data.props[tag] = value
        return self

    def set_sender(self, address: str, name: str | None = None) -> Draft:
        """Send as this sender (`send --from`): `a@b` or `Name <a@b>`, an SMTP address.

        It becomes PR_SENDER_* and PR_SENT_REPRESENTING_*, and so the From, ahead of the account's
        from_address and the profile's identity; a bad address or name is MAPI_E_INVALID_PARAMETER."""
        _check(address, str, "set_sender(): the address")
        _check(name, (str, type(None)), "set_sender(): name")
        parsed = parse_address(address)
        if parsed.address_type != "SMTP":
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER,
                f"the sender {address!r} is a {parsed.address_type} address; a sender must be an SMTP address",
            )
        email = check_address(parsed.email_address, "the sender's address")
        display = check_name(name if name is not None else parsed.display_name, "the sender's name")
        display = "" if display == email else display
        entry_id, key = one_off_entry_id(display or email, "SMTP", email), search_key("SMTP", email)
        for tags in _SENDER_TAGS:
            self.data.props.update(zip(tags, (display, "SMTP", email, entry_id, key), strict=True))
        return self

    # Recipients.
    def add_recipient(
        self,
        address: str | None = None,
        *,
        kind: RecipientType = RecipientType.TO,
        name: str | None = None,
        address_type: str | None = None,
        entry_id: bytes | None = None,
    ) -> Recipient:
        """Add a recipient by address (`SMTP:a@b`, `Name <FAX:+1…>`, `a@b`) and/or by entry ID.

        With only an entry ID, a one-off entry ID gives name, type and address; any other
        entry ID is routed by the provider UID in its bytes 4..19.
        """
        _check(address, (str, type(None)), "add_recipient(): the address")
        _check(name, (str, type(None)), "add_recipient(): name")
        _check(address_type, (str, type(None)), "add_recipient(): address_type")
        _check(entry_id, (bytes, type(None)), "add_recipient(): entry_id")
        _check(kind, int, "add_recipient(): kind")
        if kind not in _RECIPIENT_KINDS:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"add_recipient(): kind {kind!r} is not a RecipientType")
        kind = RecipientType(kind)
        if address is None and entry_id is None:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "a recipient needs an address or an entry ID")
        if address is not None:
            text = f"{address_type}:{address}" if address_type else address
            parsed = parse_address(text)
            display = name if name is not None else parsed.display_name
            adrtype, email = parsed.address_type, parsed.email_address
        elif entry_id is not None and is_one_off(entry_id):
            one_off = decode_one_off(entry_id)
            display = name or one_off.display_name
            adrtype, email = one_off.address_type, one_off.email_address
        else:
            display = name or ""
            adrtype, email = (address_type or "").upper(), ""
        if has_break(display):
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"display name {display!r} contains a line break or NUL")
        # A one-off entry ID or the address_type argument bypass parse_address: same rule for them.
        for what, text in (("address type", adrtype), ("address", email)):
            if has_break(text) or has_lone_surrogate(text):
                raise MAPIError(
                    HResult.MAPI_E_INVALID_PARAMETER, f"{what} {text!r} contains a line break, NUL or lone surrogate"
                )
        props: dict[int, Any] = {
            T.PR_DISPLAY_NAME: display or email,
            T.PR_ADDRTYPE: adrtype,
            T.PR_EMAIL_ADDRESS: email,
            T.PR_RECIPIENT_TYPE: int(kind),
            T.PR_ENTRYID: entry_id if entry_id is not None else one_off_entry_id(display or email, adrtype, email),
        }
        if adrtype:
            props[T.PR_SEARCH_KEY] = search_key(adrtype, email)
        recipient = Recipient(props=props, row_id=len(self.data.recipients))
        self.data.recipients.append(recipient)
        return recipient

    def to(self, *addresses: str) -> Draft:
        return self._add_all(addresses, RecipientType.TO, "to")

    def cc(self, *addresses: str) -> Draft:
        return self._add_all(addresses, RecipientType.CC, "cc")

    def bcc(self, *addresses: str) -> Draft:
        return self._add_all(addresses, RecipientType.BCC, "bcc")

    def _add_all(self, addresses: tuple[str, ...], kind: RecipientType, method: str) -> Draft:
        for a in addresses:  # all checked first: a bad one adds none of them
            _check(a, str, f"{method}(): an address")
        for a in addresses:
            self.add_recipient(a, kind=kind)
        return self

    # Attachments.
    def attach_file(
        self, path: str | os.PathLike[str], *, mime_type: str | None = None, name: str | None = None
    ) -> Attachment:
        """Attach a file by value; it is streamed into the store when the draft is saved."""
        _check(path, (str, os.PathLike), "attach_file(): the path")
        _check(mime_type, (str, type(None)), "attach_file(): mime_type")
        _check(name, (str, type(None)), "attach_file(): name")
        p = Path(path)
        try:
            st = p.stat()
            # Before opening: opening a FIFO would block until someone writes to it.
            if not stat.S_ISREG(st.st_mode):
                raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"attachment {str(p)!r} is not a regular file")
            size = st.st_size
            with p.open("rb"):
                pass
        except OSError as exc:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"cannot read attachment {str(p)!r}: {exc.strerror}") from exc
        filename = name or p.name
        att = Attachment(
            props=_attachment_props(filename, mime_type),
            num=len(self.data.attachments),
            opener=lambda: p.open("rb"),
            size=size,
        )
        self.data.attachments.append(att)
        return att

    def attach_bytes(self, name: str, data: bytes, *, mime_type: str | None = None) -> Attachment:
        _check(name, str, "attach_bytes(): the name")
        _check(data, (bytes, bytearray, memoryview), "attach_bytes(): the data")
        _check(mime_type, (str, type(None)), "attach_bytes(): mime_type")
        data = bytes(data)
        att = Attachment(
            props=_attachment_props(name, mime_type), num=len(self.data.attachments), data=data, size=len(data)
        )
        self.data.attachments.append(att)
        return att

    # Saving and submitting.
    def save(self) -> int:
        """Save the draft in its folder (once); returns the message ID."""
        if self.message_id is None:
            self.message_id = self._session.engine.store.create_message(self.folder.id, self.data)
        return self.message_id

    def submit(self) -> int:
        """Save and submit (one commit); the message is read-only afterwards. Returns the message ID."""
        if self.message_id is not None:
            self._session.submit(self.message_id)
            return self.message_id
        self.data.props.update(self._session._stamp(self.data))
        self.message_id = self._session.engine.store.create_and_submit(self.folder.id, self.data, self._session.clock())
        return self.message_id


def _attachment_props(filename: str, mime_type: str | None) -> dict[int, Any]:
    if any(c in filename for c in "\r\n\0/\\"):
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"invalid attachment name {filename!r}")
    guessed = mime_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return {
        T.PR_ATTACH_LONG_FILENAME: filename,
        T.PR_ATTACH_FILENAME: filename,
        T.PR_ATTACH_EXTENSION: Path(filename).suffix,
        T.PR_ATTACH_MIME_TAG: guessed,
        T.PR_RENDERING_POSITION: -1,
    }


class _SessionCore:
    """What the sync and async sessions share: the engine underneath, and every call that needs no
    event loop (folders, messages, the queue, the profile)."""

    def __init__(self, profile: Profile, *, clock: Callable[[], datetime] | None = None) -> None:
        _check(profile, Profile, "the profile")
        #: Serialises what must not run twice at once: the event loop, profile changes, close.
        self._lock = threading.RLock()
        self.closed = False
        #: The machine room (postroom.engine): the runtime, the protocol manager, the daemon. For tests
        #: and tools that look inside; its interface is not the public one.
        self.engine = Engine(profile, clock=clock)
        #: The profile's identity as last checked, with the settings it was read from: submitting one
        #: message at a time must not check the same address again for every message.
        self._checked_identity: tuple[tuple[Any, Any], Identity] | None = None
        #: PR_SENDER_* of mail from the identity last used (`_sender_props`; read, never changed).
        self._sender_stamp: tuple[Identity, dict[int, Any]] | None = None
        #: Message-ID domains of the From addresses submission has seen (a few: bounded).
        self._domains: dict[str, str] = {}

    @property
    def profile(self) -> Profile:
        """The profile as this session knows it (re-read when another process changed it)."""
        return self.engine.profile

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.engine.clock

    @property
    def _store(self) -> MessageStore:
        return self.engine.store

    # --- folders --------------------------------------------------------------------------
    @property
    def outbox(self) -> Folder:
        return self._store.folder(FolderRole.OUTBOX)

    @property
    def inbox(self) -> Folder:
        return self._store.folder(FolderRole.INBOX)

    @property
    def sent_items(self) -> Folder:
        return self._store.folder(FolderRole.SENT_ITEMS)

    @property
    def deleted_items(self) -> Folder:
        return self._store.folder(FolderRole.DELETED_ITEMS)

    def folders(self) -> list[Folder]:
        return self._store.folders()

    def folder(self, name: str | int) -> Folder:
        _check(name, (str, int), "folder(): the folder (a name or ID)")
        return self._store.find_folder(name)

    def create_folder(self, name: str) -> Folder:
        _check(name, str, "create_folder(): the name")
        return self._store.create_folder(name)

    def list_messages(self, folder: str | int | Folder, limit: int | None = None) -> list[MessageSummary]:
        _check(folder, (str, int, Folder), "list_messages(): the folder")
        _check(limit, (int, type(None)), "list_messages(): limit")
        f = folder if isinstance(folder, Folder) else self.folder(folder)
        return self._store.list_messages(f.id, limit)

    # --- messages -------------------------------------------------------------------------
    def create_message(self, subject: str = "", body: str = "", *, folder: Folder | None = None) -> Draft:
        _check(subject, str, "create_message(): the subject")
        _check(body, str, "create_message(): the body")
        _check(folder, (Folder, type(None)), "create_message(): folder")
        draft = Draft(self, folder or self.outbox)
        if subject:
            draft.subject = subject
        if body:
            draft.body = body
        return draft

    def open_message(self, ref: str | int | bytes) -> MessageData:
        _check_ref(ref, "open_message")
        return self._store.open_message(self._store.resolve_message(ref))

    def message_id(self, ref: str | int | bytes) -> int:
        _check_ref(ref, "message_id")
        return self._store.resolve_message(ref)

    def message_folder(self, ref: str | int | bytes) -> Folder | None:
        """The folder a message is in (None for an embedded message)."""
        _check_ref(ref, "message_folder")
        fid = self._store.message_folder(self._store.resolve_message(ref))
        return None if fid is None else self._store.find_folder(fid)

    def entry_id(self, ref: str | int | bytes) -> bytes:
        """PR_ENTRYID of a message: save it before submitting, as MAPI clients do."""
        _check_ref(ref, "entry_id")
        return self._store.entry_id_of(self._store.resolve_message(ref))

    # --- files: import and export (postroom.formats) ----------------------------------------
    def import_files(
        self, paths: Iterable[str | os.PathLike[str]], *, folder: str | int | Folder | None = None
    ) -> Iterator[ImportResult]:
        """Import every message in `paths` (.eml and .msg files, mbox files, Maildir
        directories) into `folder` (the Inbox by default), one at a time, yielding what became
        of each: imported, skipped (already imported: the same bytes were saved before and are
        still in the store) or failed (unreadable, with the reason; the import goes on)."""
        _check(folder, (str, int, Folder, type(None)), "import_files(): the folder")
        names = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        for name in names:
            _check(name, (str, os.PathLike), "import_files(): a path")
        target = self.inbox if folder is None else folder if isinstance(folder, Folder) else self.folder(folder)
        pending: list[tuple[str, str, MessageData]] = []
        size = 0
        for item in mailboxes.scan(names):
            if item.data is None:
                yield from self._import_batch(target, pending)
                pending, size = [], 0
                yield ImportResult(item.source, ImportStatus.FAILED, detail=item.error or "unreadable")
                continue
            try:
                data = _import_item_message(item.kind, item.data)
            except MAPIError as exc:
                yield from self._import_batch(target, pending)
                pending, size = [], 0
                yield ImportResult(item.source, ImportStatus.FAILED, detail=str(exc))
                continue
            pending.append((item.source, item.key, data))
            size += len(item.data)
            if len(pending) >= _IMPORT_BATCH or size >= _IMPORT_BATCH_BYTES:
                yield from self._import_batch(target, pending)
                pending, size = [], 0
        yield from self._import_batch(target, pending)

    def _import_batch(self, target: Folder, pending: list[tuple[str, str, MessageData]]) -> Iterator[ImportResult]:
        """Save parsed messages in one durable commit (group commit: one fsync for up to
        `_IMPORT_BATCH` messages, so a long import is not one fsync per message); each message
        is still its own savepoint, so one that cannot be saved fails alone."""
        results: list[ImportResult] = []
        if pending:
            with self._store.batch():
                for source, key, data in pending:
                    try:
                        mid = self._store.import_message(target.id, data, key)
                    except MAPIError as exc:
                        results.append(ImportResult(source, ImportStatus.FAILED, detail=str(exc)))
                        continue
                    if mid is None:
                        results.append(ImportResult(source, ImportStatus.SKIPPED, detail="already imported"))
                    else:
                        results.append(ImportResult(source, ImportStatus.IMPORTED, message_id=mid))
        yield from results

    def export_folder(
        self,
        folder: str | int | Folder,
        *,
        mbox: str | os.PathLike[str] | None = None,
        maildir: str | os.PathLike[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Write every message of `folder` to an mbox file or a Maildir directory (exactly one of
        the two), each as the bytes it arrived as when it has them and was not edited since,
        else as its RFC 5322 rendering. Messages are loaded one at a time. Returns the count.

        `progress(written, total)` is called after each message is written (for a progress bar:
        `postroom export` draws one on a terminal)."""
        _check(folder, (str, int, Folder), "export_folder(): the folder")
        if (mbox is None) == (maildir is None):
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "export_folder(): give exactly one of mbox and maildir")
        if progress is not None and not callable(progress):
            raise ArgumentTypeError(f"export_folder(): progress must be callable, not {type(progress).__name__}")
        f = folder if isinstance(folder, Folder) else self.folder(folder)
        rows = self._store.list_messages(f.id)

        def messages() -> Iterator[bytes]:
            for written, row in enumerate(rows, 1):
                yield self.export_rfc822(row.id)
                if progress is not None:  # resumed: the writer has written it and asks for the next
                    progress(written, len(rows))

        if mbox is not None:
            return mailboxes.write_mbox(mbox, messages())
        assert maildir is not None
        return mailboxes.write_maildir(maildir, messages())

    def export_rfc822(self, ref: str | int | bytes) -> bytes:
        """A message as RFC 5322: its original bytes when unedited, else its rendering."""
        _check_ref(ref, "export_rfc822")
        data = self.open_message(ref)
        return mime.original_bytes(data) or mime.to_bytes(data)

    def export_tnef(self, ref: str | int | bytes) -> bytes:
        """A message as a TNEF stream (`winmail.dat`, MS-OXTNEF), its recipient table included."""
        _check_ref(ref, "export_tnef")
        return tnef.write_tnef(self.open_message(ref), recipients=True)

    def export_msg(self, ref: str | int | bytes) -> bytes:
        """A message as an Outlook `.msg` file (MS-OXMSG): its properties, recipients and
        attachments (embedded messages included), in a compound file postroom writes itself."""
        _check_ref(ref, "export_msg")
        return msg.write_msg(self.open_message(ref))

    def next_due(self) -> datetime | None:
        """When the earliest waiting message in the outgoing queue becomes due."""
        return self._store.next_due()

    @staticmethod
    def transport_kinds() -> dict[str, type[Any]]:
        """Every installed transport kind (entry points in `postroom.transports`)."""
        return dict(transport_kinds())

    def has_explicit_order(self) -> bool:
        """True when `order set` replaced the default transport order."""
        return self.profile.explicit_order is not None

    def events(self, ref: str | int | bytes) -> list[Event]:
        _check_ref(ref, "events")
        return self._store.events(self._store.resolve_message(ref))

    def _summary(self, message_id: int) -> MessageSummary | None:
        try:
            folder = self._store.message_folder(message_id)
        except MAPIError:
            return None
        if folder is None:
            return None
        return next((m for m in self._store.list_messages(folder) if m.id == message_id), None)

    def recipient_states(self, ref: str | int | bytes) -> list[RecipientStatus]:
        _check_ref(ref, "recipient_states")
        return self._store.recipient_states(self._store.resolve_message(ref))

    def recipient_report(self, ref: str | int | bytes) -> list[RecipientReport]:
        """Each recipient's outcome, or what it waits for and why (one row per recipient)."""
        return self.engine.recipient_report(self._store.resolve_message(ref))

    def delivery_report(
        self, message_id: int, recipients: Sequence[Recipient], summary: PassSummary
    ) -> list[RecipientReport]:
        """`recipient_report` of a message that `summary`'s pass handled; when that pass deleted it
        (PR_DELETE_AFTER_SUBMIT), what the pass's outcomes say of its `recipients` (as submitted)."""
        return self.engine.delivery_report(message_id, recipients, summary)

    def sender_identity(self) -> tuple[str, str]:
        """(display name, SMTP address) of the profile's user: its identity, else the fallback one."""
        who = self.identity()
        return who.name, who.address

    def identity(self) -> Identity:
        """The profile's identity (`set_identity`), else the fallback identity (postroom.identity says which)."""
        settings = self.profile.settings
        read = (settings.get(IDENTITY_ADDRESS_KEY), settings.get(IDENTITY_NAME_KEY))
        checked = self._checked_identity
        if checked is not None and checked[0] == read:
            return checked[1]
        found = profile_identity(settings, str(self.profile.path))
        if found is None:
            return fallback_identity()  # not kept: it follows $LOGNAME
        self._checked_identity = (read, found)
        return found

    def set_identity(self, name: str, address: str) -> Identity:
        """Set the profile's identity: the From of mail whose message and account name no sender.

        A bad address or a name with a line break is MAPI_E_INVALID_PARAMETER, and nothing changes."""
        _check(name, str, "set_identity(): the name")
        _check(address, str, "set_identity(): the address")
        checked = Identity(check_name(name), check_address(address), IdentitySource.PROFILE)
        with self._lock:
            self._check_open()
            self.profile.settings[IDENTITY_NAME_KEY] = checked.name
            self.profile.settings[IDENTITY_ADDRESS_KEY] = checked.address
            self.engine.save_profile()
        return checked

    def clear_identity(self) -> Identity:
        """Forget the profile's identity; returns the fallback identity that mail is from now."""
        with self._lock:
            self._check_open()
            self.profile.settings.pop(IDENTITY_NAME_KEY, None)
            self.profile.settings.pop(IDENTITY_ADDRESS_KEY, None)
            self.engine.save_profile()
        return fallback_identity()

    def submit(self, ref: str | int | bytes) -> None:
        """IMessage::SubmitMessage: stamps the sender and a Message-ID, then queues the message (one commit)."""
        _check_ref(ref, "submit")
        mid = self._store.resolve_message(ref)
        stamp = self._stamp(self._store.open_message(mid))
        self._store.submit(mid, self.clock(), stamp)

    def submit_many(self, drafts: Iterable[Draft]) -> list[int]:
        """Save and submit several new messages with one durable commit (batch submission).

        The drafts are all taken from `drafts` before the transaction begins: a generator that
        stalls (waiting on its own input) must not hold the store's write lock meanwhile."""
        ready = list(drafts)
        for draft in ready:
            _check(draft, Draft, "submit_many(): each draft")
        fresh = [d for d in ready if d.message_id is None]
        if (
            len(fresh) < len(ready)
            or len({id(d) for d in ready}) < len(ready)
            or any(d.folder.id != ready[0].folder.id for d in ready)
        ):
            ids: list[int] = []
            with self._store.batch():
                for draft in ready:
                    ids.append(draft.submit())
            return ids
        # New drafts in one folder: stamped with the identity looked up once, and inserted with
        # one statement per table (the store shares the encoding of what their bags have in common).
        memo: dict[str, Any] = {}
        for draft in ready:
            draft.data.props.update(self._stamp(draft.data, memo))
        new_ids = self._store.create_and_submit_many(ready[0].folder.id, [d.data for d in ready], self.clock())
        for draft, mid in zip(ready, new_ids, strict=True):
            draft.message_id = mid
        return new_ids

    def _stamp(self, data: MessageData, memo: dict[str, Any] | None = None) -> dict[int, Any]:
        """What submission adds: the sender (PR_SENDER_*) and a fixed Message-ID.

        PR_SENT_REPRESENTING_* is copied from a sender the client set itself, and otherwise left
        unset: its presence is what tells a transport that the message names its own sender, so
        an account's from_address may stand in for the profile's identity (postroom.identity)."""
        stamp: dict[int, Any] = {}
        explicit = data.get(T.PR_SENT_REPRESENTING_EMAIL_ADDRESS) or data.get(T.PR_SENDER_EMAIL_ADDRESS)
        memo = {} if memo is None else memo  # what a batch looks up once
        if not data.get(T.PR_SENDER_EMAIL_ADDRESS):
            sender = memo.get("sender")
            if sender is None:
                who = self.identity()
                memo["identity"] = who.address
                sender = memo["sender"] = self._sender_props(who)
            stamp.update(sender)
        elif not data.get(T.PR_SENT_REPRESENTING_EMAIL_ADDRESS):
            stamp.update(
                {
                    T.PR_SENT_REPRESENTING_NAME: data.get(T.PR_SENDER_NAME) or "",
                    T.PR_SENT_REPRESENTING_ADDRTYPE: data.get(T.PR_SENDER_ADDRTYPE) or "SMTP",
                    T.PR_SENT_REPRESENTING_EMAIL_ADDRESS: data.get(T.PR_SENDER_EMAIL_ADDRESS),
                }
            )
        if not data.get(T.PR_INTERNET_MESSAGE_ID):
            # Fixed once at submit so every retry, resend and transport carries the same Message-ID.
            author = str(
                explicit
                or memo.get("likely_from")
                or memo.setdefault("likely_from", self._likely_from(memo.get("identity")))
            )
            domain = self._domains.get(author)
            if domain is None:
                domain = message_id_domain(author)
                if len(self._domains) < _DOMAINS_KEPT:
                    self._domains[author] = domain
            stamp[T.PR_INTERNET_MESSAGE_ID] = make_msgid(domain=domain)
        return stamp

    def _sender_props(self, who: Identity) -> dict[int, Any]:
        """PR_SENDER_* of mail from `who`: made again only when the identity changed."""
        kept = self._sender_stamp
        if kept is not None and kept[0] == who:
            return kept[1]
        props: dict[int, Any] = {
            T.PR_SENDER_NAME: who.name,
            T.PR_SENDER_ADDRTYPE: "SMTP",
            T.PR_SENDER_EMAIL_ADDRESS: who.address,
            T.PR_SENDER_ENTRYID: one_off_entry_id(who.name, "SMTP", who.address),
            T.PR_SENDER_SEARCH_KEY: search_key("SMTP", who.address),
        }
        self._sender_stamp = (who, props)
        return props

    def _likely_from(self, identity: str | None = None) -> str:
        """The From address of a message that names no sender, as far as submission can know it: the
        from_address of the first account in transport order that has one, else the profile's identity
        (`identity` when the caller has just looked it up)."""
        for service in self.profile.transport_order():
            address = service.options.get("from_address")
            if isinstance(address, str) and address:
                return address
        return identity if identity is not None else self.sender_identity()[1]

    def abort_submit(self, ref: str | int | bytes) -> None:
        """IMsgStore::AbortSubmit: returns when removed from the queue; MAPI_E_NOT_IN_QUEUE when it
        was already sent; MAPI_E_UNABLE_TO_ABORT while a spooler holds it."""
        _check_ref(ref, "abort_submit")
        self._store.abort_submit(self._store.resolve_message(ref), self.clock())

    def queue(self) -> list[QueueEntry]:
        """The outgoing queue, oldest first: state, attempts, last error, next try."""
        return self._store.queue()

    def queue_page(
        self,
        after: int | None = None,
        limit: int = 50,
        *,
        state: QueueState | str | None = None,
        transport: str | None = None,
        text: str | None = None,
    ) -> QueuePage:
        """A page of the outgoing queue in queue order, after message `after` (its `next_after`
        starts the next page): as fast at the 1,000th page as at the first. `state` ("queued" or
        "held"), `transport` (the transport a pending recipient waits for) and `text` (in the subject,
        To or last reply) filter it."""
        _check(after, (int, type(None)), "queue_page(): after")
        _check(limit, int, "queue_page(): limit")
        _check(state, (str, type(None)), "queue_page(): state")
        _check(transport, (str, type(None)), "queue_page(): transport")
        _check(text, (str, type(None)), "queue_page(): text")
        if not 1 <= limit <= 1000:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"queue_page(): limit {limit} is not between 1 and 1000")
        wanted: QueueState | None = None
        if state:
            try:
                wanted = QueueState(state)
            except ValueError:
                names = ", ".join(s.value for s in QueueState)
                raise MAPIError(
                    HResult.MAPI_E_INVALID_PARAMETER, f"no queue state {state!r} (one of {names})"
                ) from None
        return self._store.queue_page(after, limit, wanted, transport or None, text or None)

    def queue_entry(self, ref: str | int | bytes) -> QueueEntry | None:
        """The queue row of one message (None when it is not queued)."""
        _check_ref(ref, "queue_entry")
        return self._store.queue_entry(self._store.resolve_message(ref))

    def queue_counts(self) -> QueueCounts:
        """How many messages are queued, by state and by the transport they wait for; the oldest."""
        return self._store.queue_counts()

    def activity(
        self, since: datetime, until: datetime | None = None, *, step_seconds: int = 60
    ) -> list[ActivityBucket]:
        """Deliveries, failures and the queue's depth step by step from `since`, as every spooler
        process on the store recorded them in the messages' history. With `since`, `until` and the
        step in whole minutes it reads the store's per-minute totals (as many rows as minutes from
        `since` on); other times read the history itself, which costs as much as it is long."""
        _check(since, datetime, "activity(): since")
        _check(until, (datetime, type(None)), "activity(): until")
        _check(step_seconds, int, "activity(): step_seconds")
        if step_seconds < 1:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "activity(): step_seconds must be at least 1")
        return self._store.activity(since, until or self.clock(), step_seconds)

    def delivery_stats(self, latency_bounds: Sequence[float] = ()) -> DeliveryStats:
        """Totals from the whole history: outcomes and retries by transport, inbound, and a histogram
        of the seconds from submission to each outcome over `latency_bounds` (each bound a number).
        Read from running totals kept as the history is written; bounds that are not among /metrics'
        ones are measured from the history itself, which costs as much as it is long."""
        if isinstance(latency_bounds, str | bytes) or not isinstance(latency_bounds, Iterable):
            raise ArgumentTypeError("delivery_stats(): latency_bounds must be a list of numbers")
        for bound in latency_bounds:
            _check(bound, (int, float), "delivery_stats(): each latency bound")
        return self._store.delivery_stats(sorted(float(b) for b in latency_bounds))

    def spooler_stats(self) -> SpoolerStats:
        """What every spooler process on the store reported about its passes (count, duration
        histogram, throttle waits by transport), and each transport's connection slots in use now."""
        return self._store.spooler_stats([t.name for t in self.transport_order()])

    def breaker_state(self, transport: str) -> dict[str, Any]:
        """The circuit breaker of a transport as every process shares it (empty: closed, never opened)."""
        _check(transport, str, "breaker_state(): the transport")
        return dict(self._store.breaker_state(transport))

    def hold(self, ref: str | int | bytes, reason: str = "held by an operator") -> None:
        """Keep a queued message from being sent until release(); MAPI_E_NOT_IN_QUEUE if it is not queued."""
        _check_ref(ref, "hold")
        _check(reason, str, "hold(): the reason")
        self._store.hold(self._store.resolve_message(ref), self.clock(), reason)

    def release(self, ref: str | int | bytes) -> None:
        """Release a held message: it is due at once."""
        _check_ref(ref, "release")
        self._store.release_hold(self._store.resolve_message(ref), self.clock())

    def confirm_delivered(self, ref: str | int | bytes, detail: str = "confirmed delivered by an operator") -> str:
        """Finish a held message as delivered instead of sending it again (its outcome was unknown)."""
        _check_ref(ref, "confirm_delivered")
        _check(detail, str, "confirm_delivered(): the detail")
        return self._store.confirm_delivered(self._store.resolve_message(ref), self.clock(), detail)

    def retry(self, ref: str | int | bytes | None = None) -> int:
        """Make a waiting message (or, with None, every one `retry_all` takes) due now, ignoring
        backoff; returns how many."""
        if ref is None:
            return len(self.retry_all().retried)
        _check_ref(ref, "retry")
        return self._store.retry_now(self._store.resolve_message(ref), self.clock())

    def retry_all(self) -> RetryAll:
        """Every queued message that waits (a retry, a Send/Receive, a paused transport) due now,
        ignoring backoff; deferred sends whose time has not come and held messages are left alone."""
        return self._store.retry_all(self.clock())

    def cancel(self, ref: str | int | bytes) -> None:
        """Cancel a queued message before it is sent (abort submit: it stays in the Outbox, unsent)."""
        _check_ref(ref, "cancel")
        self.abort_submit(ref)

    # --- message services ---------------------------------------------------------------------
    def services(self) -> list[Service]:
        self._check_open()
        return list(self.profile.services)

    def add_service(
        self,
        kind: str,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        prefer_last: bool | None = None,
        call_when_offline: bool = False,
        poll_seconds: float | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> Service:
        """Add a message service. Its options are checked by its kind (MAPI_E_INVALID_PARAMETER),
        and what they name must work here now (MAPI_E_UNCONFIGURED: a program that does not exist,
        a password variable that is not set, an unreadable file); nothing is saved otherwise."""
        _check(kind, str, "add_service(): the kind")
        _check(name, str, "add_service(): the name")
        _check(options, (Mapping, type(None)), "add_service(): options")
        _check(prefer_last, (bool, type(None)), "add_service(): prefer_last")
        _check(policy, (Mapping, type(None)), "add_service(): policy")
        with self._lock:
            self._check_open()
            service = self.engine.add_service(
                kind,
                name,
                options or {},
                prefer_last=prefer_last,
                call_when_offline=call_when_offline,
                poll_seconds=poll_seconds,
                policy=policy or {},
            )
            self._routing_changed()
            return service

    def configure_service(
        self,
        name: str,
        *,
        options: Mapping[str, Any] | None = None,
        policy: Mapping[str, Any] | None = None,
        call_when_offline: bool | None = None,
        poll_seconds: float | None = None,
    ) -> Service:
        """Change a message service: `options` and `policy` replace the old ones when given. The
        same checks as add_service; the profile is unchanged when one fails. A running spooler
        daemon logs the transport on again with the change."""
        _check(name, str, "configure_service(): the name")
        _check(options, (Mapping, type(None)), "configure_service(): options")
        _check(policy, (Mapping, type(None)), "configure_service(): policy")
        with self._lock:
            self._check_open()
            service = self.engine.configure_service(
                name, options=options, policy=policy, call_when_offline=call_when_offline, poll_seconds=poll_seconds
            )
            self._routing_changed()
            return service

    def remove_service(self, name: str) -> Service:
        _check(name, str, "remove_service(): the name")
        with self._lock:
            self._check_open()
            service = self.engine.remove_service(name)
            self._routing_changed()
            return service

    def transport_order(self) -> list[Service]:
        self._check_open()
        return self.profile.transport_order()

    def set_transport_order(self, transports: Sequence[str | bytes]) -> None:
        _check_strings(transports, "set_transport_order", "the transports")
        transports = list(transports)
        for t in transports:
            _check(t, (str, bytes), "set_transport_order(): each transport (a name or provider UID)")
        with self._lock:
            self._check_open()
            self.engine.set_transport_order(transports)
            self._routing_changed()

    def reset_transport_order(self) -> None:
        with self._lock:
            self._check_open()
            self.engine.reset_transport_order()
            self._routing_changed()

    def save_profile(self) -> None:
        """Save changes made to `session.profile` (groups, settings) and tell a running spooler."""
        with self._lock:
            self._check_open()
            self.engine.save_profile()

    # --- the SMTP submission listener -----------------------------------------------------------------
    def listener_users(self) -> list[str]:
        """The names of the users who may AUTH to the SMTP submission listener."""
        return sorted(listener_users(self.profile))

    def set_listener_user(self, name: str, password: str) -> None:
        """Add a listener user (or give one a new password); only its scrypt hash is kept, in the
        profile. A running daemon or listener takes it at its next reload (SIGHUP)."""
        _check(name, str, "set_listener_user(): the name")
        _check(password, str, "set_listener_user(): the password")
        with self._lock:
            self._check_open()
            set_listener_user(self.profile, name, password)
            self.engine.save_profile()

    def remove_listener_user(self, name: str) -> None:
        """Remove a listener user; MAPI_E_NOT_FOUND when there is none of that name."""
        _check(name, str, "remove_listener_user(): the name")
        with self._lock:
            self._check_open()
            remove_listener_user(self.profile, name)
            self.engine.save_profile()

    def submit_envelope(
        self, raw: bytes, mail_from: str, rcpt_to: Sequence[str], source: SubmissionSource | str
    ) -> int:
        """Submit the exact bytes `raw` to the envelope's recipients (`rcpt_to`), as the SMTP listener
        and a sendmail command hand messages over (envelope.py): sent unedited, it goes out as these
        bytes; reports about it also go to `mail_from` ("" is the null sender). Returns the message ID."""
        _check(raw, (bytes, bytearray), "submit_envelope(): the message")
        _check(mail_from, str, "submit_envelope(): mail_from")
        _check_strings(rcpt_to, "submit_envelope", "rcpt_to")
        if not rcpt_to:
            raise MAPIError(HResult.MAPI_E_NO_RECIPIENTS, "submit_envelope(): no recipients")
        message = envelope_message(bytes(raw), mail_from, list(rcpt_to), source)
        self._stamp_envelope(message)
        return self._store.create_and_submit(self._store.folder(FolderRole.OUTBOX).id, message, self.clock())

    def _serving(
        self, smtp: ListenerSettings | None, on_listening: Callable[[list[int]], None] | None, daemon: bool
    ) -> Serving:
        _check(smtp, (ListenerSettings, type(None)), "the listener settings")
        if smtp is not None:
            relayed_mail(self.profile.settings)  # a bad setting stops the listener before it listens
        return Serving(smtp, self._stamp_envelope, on_listening, daemon)

    def _stamp_envelope(self, message: MessageData) -> None:
        """What submission adds to a message handed over with an envelope; once handled it is
        deleted, or moved to Sent Items with `relayed_mail = "keep"` (postroom.relayed)."""
        self._mark_relayed(message.props)
        message.props.update(self._stamp(message))

    def _mark_relayed(self, props: dict[int, Any]) -> None:
        policy = relayed_mail(self.profile.settings)
        mark_relayed(props, policy, self._store.folder(FolderRole.SENT_ITEMS).entry_id)

    def _routing_changed(self) -> None:
        """The routing may have changed: recipients that wait are moved to the transports it gives
        them at the next logon (an async session's next call that logs on); a sync session moves
        them at once (Session._routing_changed)."""

    def _check_open(self) -> None:
        if self.closed:
            raise MAPIError(HResult.MAPI_E_END_OF_SESSION, "the session is closed; log on again")

    # --- Send/Receive groups ------------------------------------------------------------------------
    def groups(self) -> list[SendReceiveGroup]:
        """The profile's Send/Receive groups; "All Accounts" (every transport) is always one of them."""
        self._check_open()
        return self.engine.groups()

    def group(self, name: str | None = None) -> SendReceiveGroup:
        """The group of that name (default "All Accounts"); MAPI_E_NOT_FOUND naming the groups there are."""
        _check(name, (str, type(None)), "group(): the name")
        self._check_open()
        return self.engine.group(name)

    def edit_group(
        self,
        name: str,
        *,
        transports: Sequence[str] | None = None,
        online: GroupChange | None = None,
        offline: GroupChange | None = None,
    ) -> tuple[SendReceiveGroup, bool]:
        """Add a Send/Receive group, or change one: what is not given stays as it is. `transports`
        names its transports, or is ["all"] for every transport (a new group's default). Returns the
        group and whether it is new; a running spooler daemon uses it from its next start."""
        _check(name, str, "edit_group(): the name")
        if transports is not None:
            _check_strings(transports, "edit_group", "transports")
            for t in transports:
                _check(t, str, "edit_group(): each transport")
        _check(online, (GroupChange, type(None)), "edit_group(): online")
        _check(offline, (GroupChange, type(None)), "edit_group(): offline")
        with self._lock:
            self._check_open()
            return self.engine.edit_group(
                name, transports=transports, online=online or GroupChange(), offline=offline or GroupChange()
            )

    def remove_group(self, name: str) -> SendReceiveGroup:
        """Remove a Send/Receive group; "All Accounts" cannot be removed (MAPI_E_NO_ACCESS), only changed."""
        _check(name, str, "remove_group(): the name")
        with self._lock:
            self._check_open()
            return self.engine.remove_group(name)

    # --- the mode, the status table, the spooler daemon ---------------------------------------------
    @property
    def mode(self) -> Mode:
        return self.engine.mode

    @property
    def online_stability_seconds(self) -> float:
        """How long the connection must stay up after going online before the Outbox is flushed."""
        return self.engine.online_stability_seconds

    def status_table(self) -> list[StatusRow]:
        """The status table as it is now, without logging on: subsystem, spooler, one row per transport."""
        return self.engine.status_table()

    def publish_status(self) -> None:
        """Write the status table into the store so other processes (`postroom status`) see it."""
        self.engine.publish_status()

    def daemon_pid(self) -> int | None:
        """The pid of the spooler daemon running on this profile, if one runs (its pid file says so)."""
        return self.engine.daemon_pid()

    def daemon_pid_file(self, *, force: bool = False) -> DaemonPidFile:
        """The pid file of a spooler daemon about to run in this process (a context manager): it refuses
        (MAPI_E_BUSY) while another daemon runs on the profile, unless `force`."""
        _check(force, bool, "daemon_pid_file(): force")
        return self.engine.daemon_pid_file(force)

    # --- the async implementations both sessions run ------------------------------------------------
    async def _enum_adr_types(self) -> list[str]:
        self._check_open()
        return await self.engine.enum_adr_types()

    async def _route(self, addresses: Iterable[str]) -> list[RouteAnswer]:
        parsed = [parse_address(a) for a in addresses]  # checked by route()
        self._check_open()
        return await self.engine.route(parsed)

    async def _deliver(self, limit: int | None = None, stop: asyncio.Event | None = None) -> PassSummary:
        self._check_open()
        return await self.engine.deliver(limit, stop)

    async def _status(self) -> list[StatusRow]:
        self._check_open()
        return await self.engine.status()

    async def _status_report(self, here: bool, daemon_here: bool = False) -> StatusReport:
        self._check_open()
        return await self.engine.status_report(here=here, daemon_here=daemon_here)

    async def _set_mode(self, wanted: Mode | str) -> None:
        self._check_open()
        await self.engine.set_mode(Mode.parse(wanted))

    async def _send_receive(self, group: str | None = None, **kw: Any) -> SendReceiveSummary:
        self._check_open()
        return await self.engine.send_receive(group, **kw)

    async def _flush(self, transport: str, stop: asyncio.Event | None = None) -> SendReceiveSummary:
        self._check_open()
        return await self.engine.flush(transport, stop)

    async def _receive(self) -> Received:
        self._check_open()
        return await self.engine.receive()

    async def _validate_state(self) -> None:
        await self.engine.validate_state()

    async def _run_spooler(
        self, stop: asyncio.Event, on_pass: Callable[[PassSummary], None] | None = None, serving: Serving | None = None
    ) -> None:
        self._check_open()
        await self.engine.run_daemon(stop, on_pass, serving)

    async def _serve_smtp(self, stop: asyncio.Event, serving: Serving) -> None:
        self._check_open()
        await self.engine.run_listener(stop, serving)

    # --- receive folders -----------------------------------------------------------------------------
    def set_receive_folder(self, message_class: str, folder: str | int | None) -> None:
        """SetReceiveFolder: `IPM.Note.Fax` → "Faxes"; None removes the association."""
        _check(message_class, str, "set_receive_folder(): the message class")
        _check(folder, (str, int, type(None)), "set_receive_folder(): the folder")
        self._store.set_receive_folder(message_class, None if folder is None else self.folder(folder).id)

    def receive_folders(self) -> list[tuple[str, Folder]]:
        by_id = {f.id: f for f in self._store.folders()}
        rows = []
        for cls, fid in sorted(self._store.receive_folders().items()):
            folder = by_id.get(fid) or self._store.find_folder(fid)
            rows.append((cls, folder))
        return rows

    async def _close(self) -> None:
        """Log off and close the store, once; afterwards every call is MAPI_E_END_OF_SESSION."""
        if self.closed:
            return
        try:
            await self.engine.close()
        finally:
            self.closed = True

    # --- argument checks of the methods both sessions have ------------------------------------
    @staticmethod
    def _check_route(addresses: Iterable[str]) -> list[str]:
        _check_strings(addresses, "route", "the addresses")
        listed = list(addresses)
        for a in listed:
            _check(a, str, "route(): each address")
        return listed

    @staticmethod
    def _check_limit(limit: int | None) -> None:
        _check(limit, (int, type(None)), "deliver(): limit")


class AsyncSession(_SessionCore):
    """The session for applications that already run an asyncio event loop."""

    async def enum_adr_types(self) -> list[str]:
        return await self._enum_adr_types()

    async def route(self, addresses: Iterable[str]) -> list[RouteAnswer]:
        return await self._route(self._check_route(addresses))

    async def deliver(self, limit: int | None = None, *, stop: asyncio.Event | None = None) -> PassSummary:
        """Run the spooler over every due message (one pass); once `stop` is set, nothing new starts."""
        self._check_limit(limit)
        return await self._deliver(limit, stop)

    async def status(self) -> list[StatusRow]:
        return await self._status()

    async def status_report(self, *, here: bool = False, daemon_here: bool = False) -> StatusReport:
        """The status table to show and whose it is: the one a running spooler daemon published, or
        (without a daemon, or `here`) this session's own after logging the transports on.
        `daemon_here`: the spooler daemon runs in this process (a page served beside it)."""
        _check(here, bool, "status_report(): here")
        _check(daemon_here, bool, "status_report(): daemon_here")
        return await self._status_report(here, daemon_here)

    async def set_mode(self, mode: Mode | str) -> None:
        _check(mode, str, "set_mode(): the mode")
        await self._set_mode(mode)

    async def send_receive(self, group: str | None = None, **kw: Any) -> SendReceiveSummary:
        _check(group, (str, type(None)), "send_receive(): the group")
        return await self._send_receive(group, **kw)

    async def receive(self) -> Received:
        return await self._receive()

    async def flush(self, transport: str, *, stop: asyncio.Event | None = None) -> SendReceiveSummary:
        _check(transport, str, "flush(): the transport")
        return await self._flush(transport, stop)

    async def validate_state(self) -> None:
        await self._validate_state()

    async def run_spooler(
        self,
        stop: asyncio.Event,
        *,
        smtp: ListenerSettings | None = None,
        on_listening: Callable[[list[int]], None] | None = None,
    ) -> None:
        """The spooler daemon until `stop` is set; with `smtp`, the SMTP submission listener too."""
        await self._run_spooler(stop, None, self._serving(smtp, on_listening, True))

    async def serve_smtp(
        self,
        stop: asyncio.Event,
        settings: ListenerSettings,
        *,
        on_listening: Callable[[list[int]], None] | None = None,
    ) -> None:
        """The SMTP submission listener alone, until `stop` is set (a spooler daemon delivers)."""
        await self._serve_smtp(stop, self._serving(settings, on_listening, False))

    async def new_mail(self) -> AsyncIterator[MessageSummary]:
        """New messages as they are delivered, by any process on this profile (fnevNewMail)."""
        with self._store.bus.listen() as listener:
            async for note in listener:
                if note.kind == NoteKind.NEWMAIL:
                    summary = self._summary(int(note.data.get("message_id", 0)))
                    if summary is not None:
                        yield summary

    async def changes(self) -> AsyncGenerator[str, None]:
        """The kind of every store notification, from any process on this profile, as it comes
        ("submitted", "queue", "newmail", "mode", "config"): what a live page refreshes on."""
        with self._store.bus.listen() as listener:
            async for note in listener:
                yield str(note.kind)

    async def close(self) -> None:
        await self._close()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Session(_SessionCore):
    """The synchronous session; transports run on a private event loop.

    Threads may share it: the loop runs one call at a time (the session's lock), so a call from a
    second thread waits for the first instead of failing with "This event loop is already running".
    """

    def __init__(
        self,
        profile: Profile,
        *,
        clock: Callable[[], datetime] | None = None,
        event_loop: EventLoopKind | str = EventLoopKind.ASYNCIO,
    ) -> None:
        super().__init__(profile, clock=clock)
        #: The kind of event loop the transports run on: "asyncio", or "uvloop" (the spooler
        #: daemon's, when installed: engine/eventloop.py says why).
        self.event_loop = EventLoopKind(event_loop)
        self._runner = asyncio.Runner(loop_factory=loop_factory(self.event_loop))

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop running in this thread: the normal case
        else:
            coro.close()
            raise MAPIError(
                HResult.MAPI_E_CALL_FAILED,
                "a Session cannot be used inside a running event loop (in async code or a Session callback); "
                "use postroom.alogon() there",
            )
        with self._lock:
            if self.closed:
                coro.close()
                self._check_open()
            try:
                return self._runner.run(coro)
            except KeyboardInterrupt:
                self._cancel_leftovers()
                raise

    def _routing_changed(self) -> None:
        """Move the recipients that wait now, so that queue(), recipient_report(), flush() and
        Send/Receive see the transport the new routing gives them (inside a running event loop this
        cannot run: then the next call that logs on does it)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._run(self.engine.place_waiting())

    def _cancel_leftovers(self) -> None:
        """A hard interrupt stopped the loop in the middle of a call: cancel what it left running, so
        every claim it holds is given back now rather than when its lease runs out."""
        loop = self._runner.get_loop()
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def submit_mime(
        self,
        raw: bytes,
        *,
        recipients: Sequence[str] = (),
        extract_recipients: bool = False,
        envelope_sender: str | None = None,
        default_from: str | None = None,
        full_name: str | None = None,
        submitter_uid: int | None = None,
        dsn_notify: str | None = None,
        dsn_return: str | None = None,
        envelope_id: str | None = None,
        recipient_dsn: Mapping[str, RecipientDsnRequest] | None = None,
    ) -> int:
        """Submit RFC 5322 bytes with a sendmail envelope; returns the message ID once it is durable.

        `recipients` are the envelope recipients (sendmail's arguments); with `extract_recipients`
        (`-t`) the To/Cc/Bcc of the headers are too. `envelope_sender` (`-f`) goes into MAIL FROM;
        a message without a From gets `full_name <default_from>`. The bytes are sent as they are
        (postroom.submission says how). `submitter_uid` is recorded as PR_SUBMITTER_UID.
        `dsn_notify` (`-N`: "never", or some of "success,failure,delay" for every recipient),
        `dsn_return` (`-R`: "full" or "hdrs") and `envelope_id` (`-V`) are the RFC 3461 requests
        the reports to the envelope sender obey (MAPI_E_INVALID_PARAMETER when malformed).
        `recipient_dsn` gives some envelope recipients (by address, in any case) requests of their
        own, as RCPT's NOTIFY and ORCPT do (`postroom-sendmail -bs`): `{"notify": "success",
        "orcpt": "rfc822;bob@example.org"}`, its notify in place of `dsn_notify`; naming an address
        the message is not sent to is MAPI_E_INVALID_PARAMETER. UnknownRecipient for a recipient
        that is no e-mail address or that no transport takes; MAPI_E_NO_RECIPIENTS when there is none."""
        _check(raw, bytes, "submit_mime(): the message")
        _check_strings(recipients, "submit_mime", "recipients")
        for r in recipients:
            _check(r, str, "submit_mime(): each recipient")
        _check(extract_recipients, bool, "submit_mime(): extract_recipients")
        for value, what in (
            (envelope_sender, "envelope_sender"),
            (default_from, "default_from"),
            (full_name, "full_name"),
        ):
            _check(value, (str, type(None)), f"submit_mime(): {what}")
        _check(submitter_uid, (int, type(None)), "submit_mime(): submitter_uid")
        for value, what in ((dsn_notify, "dsn_notify"), (dsn_return, "dsn_return"), (envelope_id, "envelope_id")):
            _check(value, (str, type(None)), f"submit_mime(): {what}")
        try:
            message_dsn = MessageDsn(
                ret=parse_ret(dsn_return) if dsn_return is not None else None,
                envid=parse_envid(envelope_id) if envelope_id is not None else None,
            )
            rcpt_dsn = RecipientDsn(notify=parse_notify(dsn_notify) if dsn_notify is not None else None)
            own_dsn = _recipient_dsn(recipient_dsn)
        except DsnParameterError as exc:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"submit_mime(): {exc}") from None
        if default_from is not None:
            raw = with_from(raw, default_from, full_name)
        data = sendmail_message(
            raw,
            recipients=list(recipients),
            extract=extract_recipients,
            envelope_sender=envelope_sender,
            domain=self.identity().domain,
        )
        sent_to = [r for r in data.recipients if not int(r.get(T.PR_RECIPIENT_TYPE) or 0) & MAPI_SUBMITTED]
        for answer in self.route(list(dict.fromkeys(f"SMTP:{r.email_address}" for r in sent_to))):
            if not answer.offers and not answer.skipped:
                raise UnknownRecipient(f"no transport in this profile takes {answer.address.email_address}")
        draft = self.create_message()
        draft.data.props.update({k: v for k, v in data.props.items() if k not in T.STORE_SETS})
        draft.data.recipients = data.recipients
        draft.data.attachments = data.attachments
        draft.data.original = data.original
        if submitter_uid is not None:
            draft.data.props[T.PR_SUBMITTER_UID] = submitter_uid
        draft.data.props.update(message_dsn.props())
        unknown = set(own_dsn) - {r.email_address.lower() for r in sent_to}
        if unknown:
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER,
                f"submit_mime(): recipient_dsn names {', '.join(sorted(unknown))}, not a recipient of the message",
            )
        for row in sent_to:
            row.props.update(rcpt_dsn.props())
            row.props.update(own_dsn.get(row.email_address.lower(), RecipientDsn()).props())
        # Nobody reads this profile's Inbox for the caller: reports also go to the envelope sender
        # (spooler/sender_reports.py), as for a message the SMTP listener took.
        draft.data.props[T.PR_POSTROOM_SUBMISSION_SOURCE] = str(SubmissionSource.SENDMAIL)
        reverse_path = envelope_sender if envelope_sender is not None else data.props.get(T.PR_SENDER_EMAIL_ADDRESS)
        if isinstance(reverse_path, str) and (reverse_path or envelope_sender is not None):
            # `-f ''` is the null sender; a From without an address is none (the account's is used).
            draft.data.props[T.PR_POSTROOM_ENVELOPE_FROM] = reverse_path
        self._mark_relayed(draft.data.props)
        return draft.submit()

    def submitter_uid(self, ref: str | int | bytes) -> int | None:
        """The Unix uid that submitted a message through `submit_mime`, if it was recorded."""
        value = self.open_message(ref).props.get(T.PR_SUBMITTER_UID)
        return value if isinstance(value, int) else None

    def enum_adr_types(self) -> list[str]:
        """The address types of the transports logged on now (IMAPISession::EnumAdrTypes)."""
        return self._run(self._enum_adr_types())

    def route(self, addresses: Iterable[str]) -> list[RouteAnswer]:
        """Dry run: which transport would be offered each address, and which ones after it."""
        return self._run(self._route(self._check_route(addresses)))

    def deliver(self, limit: int | None = None, *, stop: asyncio.Event | None = None) -> PassSummary:
        """Run the spooler over every due message (one pass).

        Once `stop` is set (say, from a signal handler), no new message is started; the ones in
        flight finish. A hard interrupt (KeyboardInterrupt) gives every claimed message back."""
        self._check_limit(limit)
        return self._run(self._deliver(limit, stop))

    def status(self) -> list[StatusRow]:
        """The status table after logging on (subsystem, spooler, one row per transport)."""
        return self._run(self._status())

    def status_report(self, *, here: bool = False) -> StatusReport:
        """The status table to show and whose it is: the one a running spooler daemon published, or
        (without a daemon, or `here`) this session's own after logging the transports on."""
        _check(here, bool, "status_report(): here")
        return self._run(self._status_report(here))

    def set_mode(self, mode: Mode | str) -> None:
        """Go "online" or "offline" (persisted in the profile; a running spooler daemon follows)."""
        _check(mode, str, "set_mode(): the mode")
        self._run(self._set_mode(mode))

    def send_receive(self, group: str | None = None, **kw: Any) -> SendReceiveSummary:
        """Send/Receive for a group (default "All Accounts"); works offline too."""
        _check(group, (str, type(None)), "send_receive(): the group")
        return self._run(self._send_receive(group, **kw))

    def receive(self) -> Received:
        """Fetch inbound mail from every transport that may be called now (the count, and `errors`)."""
        return self._run(self._receive())

    def flush(self, transport: str, *, stop: asyncio.Event | None = None) -> SendReceiveSummary:
        """Send everything waiting for one transport now, ignoring backoff (and offline mode)."""
        _check(transport, str, "flush(): the transport")
        return self._run(self._flush(transport, stop))

    def validate_state(self) -> None:
        self._run(self._validate_state())

    def run_spooler(
        self,
        stop: asyncio.Event | None = None,
        on_pass: Callable[[PassSummary], None] | None = None,
        *,
        smtp: ListenerSettings | None = None,
        on_listening: Callable[[list[int]], None] | None = None,
    ) -> None:
        """Run the spooler daemon until `stop` is set (or SIGINT/SIGTERM, handled by the caller); with
        `smtp`, the SMTP submission listener too. Under systemd it sends READY=1 and WATCHDOG=1, and
        SIGHUP re-reads the profile."""
        serving = self._serving(smtp, on_listening, True)
        self._run(self._run_spooler(stop or asyncio.Event(), on_pass, serving))

    def serve_smtp(
        self,
        settings: ListenerSettings,
        stop: asyncio.Event | None = None,
        *,
        on_listening: Callable[[list[int]], None] | None = None,
    ) -> None:
        """Run the SMTP submission listener alone until `stop` is set: it accepts messages into the
        Outbox, and a spooler daemon on the profile delivers them."""
        self._run(self._serve_smtp(stop or asyncio.Event(), self._serving(settings, on_listening, False)))

    def on_new_mail(self, callback: Callable[[MessageSummary], None], *, stop: asyncio.Event | None = None) -> None:
        """Call `callback` for every new message until `stop` is set (blocking)."""

        async def loop() -> None:
            done = stop or asyncio.Event()
            with self._store.bus.listen() as listener:
                while not done.is_set():
                    note = await listener.get(timeout=0.5)
                    if note is not None and note.kind == NoteKind.NEWMAIL:
                        summary = self._summary(int(note.data.get("message_id", 0)))
                        if summary is not None:
                            callback(summary)

        self._run(loop())

    def close(self) -> None:
        """Log off and close the store; closing a closed session does nothing."""
        with self._lock:
            if self.closed:
                return
            try:
                self._run(self._close())
            finally:
                self.closed = True
                self._runner.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_profile(profile: str | os.PathLike[str] | Profile | None) -> Profile:
    _check(profile, (str, os.PathLike, Profile, type(None)), "logon(): the profile")
    if isinstance(profile, Profile):
        return profile
    return Profile.open_or_create(profile)


def logon(
    profile: str | os.PathLike[str] | Profile | None = None, *, clock: Callable[[], datetime] | None = None
) -> Session:
    """Open a profile (the default one, created on first use, when None) and return a Session."""
    return Session(_open_profile(profile), clock=clock)


def logon_when_usable(
    profile: str | os.PathLike[str] | Profile | None,
    stop: asyncio.Event,
    *,
    clock: Callable[[], datetime] | None = None,
) -> Session | None:
    """logon() for the spooler daemon, once the store can be opened: a full or failing disk
    (StoreDiskTrouble) is waited out with backoff, as a running spooler daemon waits it out; None
    when `stop` is set meanwhile. A store that cannot be reached is an error at once (most likely a
    wrong URL, which waiting would hide). The session runs on uvloop when it is installed
    (`pip install 'postroom[fast]'`; POSTROOM_EVENT_LOOP=asyncio says no)."""
    kind = daemon_loop_kind()
    return open_when_usable(lambda: Session(_open_profile(profile), clock=clock, event_loop=kind), stop)


def alogon(
    profile: str | os.PathLike[str] | Profile | None = None, *, clock: Callable[[], datetime] | None = None
) -> AsyncSession:
    """The asyncio flavour of logon()."""
    return AsyncSession(_open_profile(profile), clock=clock)
