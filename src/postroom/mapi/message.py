"""A MAPI message as plain data: a property bag, a recipient table and attachments.

The store loads and saves these; transports see them through a view; the MIME
converter turns them into RFC 5322 and back. Attachment content is opened as a
stream so a large attachment is never held in memory twice.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from . import tags as T
from .entryid import provider_uid_of
from .flags import AttachMethod, RecipientType, recipient_kind

PropValue = Any
"""str | int | bool | bytes | datetime | float | list of those, chosen by the tag's type."""

Props = dict[int, PropValue]


class PropertyBag:
    """Typed accessors shared by messages, recipients and attachments."""

    props: Props

    def get(self, tag: int, default: PropValue = None) -> PropValue:
        return self.props.get(tag, default)

    def __getitem__(self, tag: int) -> PropValue:
        return self.props[tag]

    def __setitem__(self, tag: int, value: PropValue) -> None:
        self.props[tag] = value

    def __contains__(self, tag: object) -> bool:
        return tag in self.props


@dataclass
class Recipient(PropertyBag):
    """One row of a recipient table."""

    props: Props = field(default_factory=dict)
    row_id: int = 0

    @property
    def display_name(self) -> str:
        return str(self.props.get(T.PR_DISPLAY_NAME) or self.email_address)

    @property
    def address_type(self) -> str:
        return str(self.props.get(T.PR_ADDRTYPE) or "")

    @property
    def email_address(self) -> str:
        return str(self.props.get(T.PR_EMAIL_ADDRESS) or "")

    @property
    def entry_id(self) -> bytes:
        return bytes(self.props.get(T.PR_ENTRYID) or b"")

    @property
    def provider_uid(self) -> bytes | None:
        """The routing UID (bytes 4..19 of PR_ENTRYID), if the recipient has an entry ID."""
        entry_id = self.props.get(T.PR_ENTRYID)
        return provider_uid_of(entry_id) if entry_id else None

    @property
    def recipient_type(self) -> int:
        return int(self.props.get(T.PR_RECIPIENT_TYPE, RecipientType.TO))

    @property
    def kind(self) -> RecipientType:
        return recipient_kind(self.recipient_type)

    @property
    def responsibility(self) -> bool:
        return bool(self.props.get(T.PR_RESPONSIBILITY, False))

    @property
    def address(self) -> str:
        """`SMTP:alice@example.test`: the recipient as routing sees it."""
        return f"{self.address_type}:{self.email_address}"


@dataclass
class Attachment(PropertyBag):
    """An attachment: by value (a byte stream) or an embedded message."""

    props: Props = field(default_factory=dict)
    num: int = 0
    data: bytes | None = None
    opener: Callable[[], IO[bytes]] | None = None
    embedded: MessageData | None = None
    size: int | None = None

    @property
    def method(self) -> AttachMethod:
        default = AttachMethod.EMBEDDED_MSG if self.embedded is not None else AttachMethod.BY_VALUE
        return AttachMethod(int(self.props.get(T.PR_ATTACH_METHOD, default)))

    @property
    def filename(self) -> str:
        return str(self.props.get(T.PR_ATTACH_LONG_FILENAME) or self.props.get(T.PR_ATTACH_FILENAME) or "")

    @property
    def mime_type(self) -> str:
        return str(self.props.get(T.PR_ATTACH_MIME_TAG) or "application/octet-stream")

    def open(self) -> IO[bytes]:
        """A binary stream of the content; the caller closes it."""
        if self.opener is not None:
            return self.opener()
        return io.BytesIO(self.data or b"")

    def read_all(self) -> bytes:
        """The whole content in memory: only for small attachments and tests."""
        with self.open() as stream:
            return stream.read()

    def iter_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open() as stream:
            while chunk := stream.read(chunk_size):
                yield chunk


@dataclass
class OriginalMime:
    """The exact bytes of a message that arrived as RFC 5322, kept beside its properties (as
    Exchange keeps the MIME stream), and the fingerprint of the properties its MIME rendering
    depends on as they were then: a different fingerprint now means the message was edited.

    The bytes are opened on demand (`opener`), so loading a message to route it or list it
    never reads them."""

    fingerprint: str
    size: int
    data: bytes | None = None
    opener: Callable[[], IO[bytes]] | None = None

    def read_all(self) -> bytes:
        if self.data is None and self.opener is not None:
            with self.opener() as stream:
                self.data = stream.read()  # read once: sending looks at them more than once
        return self.data or b""


@dataclass
class MessageData(PropertyBag):
    """A message: properties, recipients, attachments, and the original MIME stream if it has one."""

    props: Props = field(default_factory=dict)
    recipients: list[Recipient] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    original: OriginalMime | None = None

    @property
    def message_class(self) -> str:
        return str(self.props.get(T.PR_MESSAGE_CLASS) or "IPM.Note")

    @property
    def subject(self) -> str:
        return str(self.props.get(T.PR_SUBJECT) or "")

    @property
    def body(self) -> str:
        return str(self.props.get(T.PR_BODY) or "")

    @property
    def submit_time(self) -> datetime | None:
        value = self.props.get(T.PR_CLIENT_SUBMIT_TIME)
        return value if isinstance(value, datetime) else None

    def recipients_of(self, kind: RecipientType) -> list[Recipient]:
        return [r for r in self.recipients if r.kind == kind]
