"""The public surface of postroom is pinned: `postroom.__all__`, the signatures of the face's
functions and of the public methods of its classes, and the rule that every value type the face
returns is exported (support/surface.py reads them).

A change of the API is deliberate, so it changes this file too.
"""

from __future__ import annotations

import postroom

from support.surface import returned_types, surface

SURFACE = {
    "__all__": "ArgumentTypeError, AsyncSession, Draft, HResult, MAPIError, Mode, NotFound, ProviderFailed, RouteAnswer, Session, StoreDiskTrouble, StoreUnavailable, StoreUnreachable, __version__, alogon, logon, register_transport_kind, transport_kinds",
    "alogon": "(profile: str | os.PathLike[str] | Profile | None = None, *, clock: Callable[[], datetime] | None = None) -> AsyncSession",
    "logon": "(profile: str | os.PathLike[str] | Profile | None = None, *, clock: Callable[[], datetime] | None = None) -> Session",
    "register_transport_kind": "(kind: str, provider: type[TransportProvider]) -> None",
    "transport_kinds": "() -> dict[str, type[TransportProvider]]",
    "AsyncSession.__aenter__": "() -> AsyncSession",
    "AsyncSession.__aexit__": "(*exc: object) -> None",
    "AsyncSession.abort_submit": "(ref: str | int | bytes) -> None",
    "AsyncSession.add_service": "(kind: str, name: str, options: Mapping[str, Any] | None = None, *, prefer_last: bool | None = None, call_when_offline: bool = False, poll_seconds: float | None = None, policy: Mapping[str, Any] | None = None) -> Service",
    "AsyncSession.cancel": "(ref: str | int | bytes) -> None",
    "AsyncSession.close": "() -> None",
    "AsyncSession.configure_service": "(name: str, *, options: Mapping[str, Any] | None = None, policy: Mapping[str, Any] | None = None, call_when_offline: bool | None = None, poll_seconds: float | None = None) -> Service",
    "AsyncSession.confirm_delivered": "(ref: str | int | bytes, detail: str = 'confirmed delivered by an operator') -> str",
    "AsyncSession.create_folder": "(name: str) -> Folder",
    "AsyncSession.create_message": "(subject: str = '', body: str = '', *, folder: Folder | None = None) -> Draft",
    "AsyncSession.deleted_items": "property -> Folder",
    "AsyncSession.deliver": "(limit: int | None = None, *, stop: asyncio.Event | None = None) -> PassSummary",
    "AsyncSession.entry_id": "(ref: str | int | bytes) -> bytes",
    "AsyncSession.enum_adr_types": "() -> list[str]",
    "AsyncSession.events": "(ref: str | int | bytes) -> list[Event]",
    "AsyncSession.flush": "(transport: str, *, stop: asyncio.Event | None = None) -> SendReceiveSummary",
    "AsyncSession.folder": "(name: str | int) -> Folder",
    "AsyncSession.folders": "() -> list[Folder]",
    "AsyncSession.has_explicit_order": "() -> bool",
    "AsyncSession.hold": "(ref: str | int | bytes, reason: str = 'held by an operator') -> None",
    "AsyncSession.inbox": "property -> Folder",
    "AsyncSession.list_messages": "(folder: str | int | Folder, limit: int | None = None) -> list[MessageSummary]",
    "AsyncSession.message_folder": "(ref: str | int | bytes) -> Folder | None",
    "AsyncSession.message_id": "(ref: str | int | bytes) -> int",
    "AsyncSession.mode": "property -> Mode",
    "AsyncSession.new_mail": "() -> AsyncIterator[MessageSummary]",
    "AsyncSession.next_due": "() -> datetime | None",
    "AsyncSession.open_message": "(ref: str | int | bytes) -> MessageData",
    "AsyncSession.outbox": "property -> Folder",
    "AsyncSession.publish_status": "() -> None",
    "AsyncSession.queue": "() -> list[QueueEntry]",
    "AsyncSession.receive": "() -> Received",
    "AsyncSession.receive_folders": "() -> list[tuple[str, Folder]]",
    "AsyncSession.recipient_report": "(ref: str | int | bytes) -> list[RecipientReport]",
    "AsyncSession.recipient_states": "(ref: str | int | bytes) -> list[RecipientStatus]",
    "AsyncSession.release": "(ref: str | int | bytes) -> None",
    "AsyncSession.reload_configuration": "() -> None",
    "AsyncSession.remove_service": "(name: str) -> Service",
    "AsyncSession.reset_transport_order": "() -> None",
    "AsyncSession.retry": "(ref: str | int | bytes | None = None) -> int",
    "AsyncSession.route": "(addresses: Iterable[str]) -> list[RouteAnswer]",
    "AsyncSession.run_spooler": "(stop: asyncio.Event) -> None",
    "AsyncSession.save_profile": "() -> None",
    "AsyncSession.send_receive": "(group: str | None = None, **kw: Any) -> SendReceiveSummary",
    "AsyncSession.sender_identity": "() -> tuple[str, str]",
    "AsyncSession.sent_items": "property -> Folder",
    "AsyncSession.services": "() -> list[Service]",
    "AsyncSession.set_mode": "(mode: Mode | str) -> None",
    "AsyncSession.set_receive_folder": "(message_class: str, folder: str | int | None) -> None",
    "AsyncSession.set_transport_order": "(transports: Sequence[str | bytes]) -> None",
    "AsyncSession.status": "() -> list[StatusRow]",
    "AsyncSession.status_table": "() -> list[StatusRow]",
    "AsyncSession.submit": "(ref: str | int | bytes) -> None",
    "AsyncSession.submit_many": "(drafts: Iterable[Draft]) -> list[int]",
    "AsyncSession.transport_kinds": "() -> dict[str, type[Any]]",
    "AsyncSession.transport_order": "() -> list[Service]",
    "AsyncSession.validate_state": "() -> None",
    "Draft.add_recipient": "(address: str | None = None, *, kind: RecipientType = <RecipientType.TO: 1>, name: str | None = None, address_type: str | None = None, entry_id: bytes | None = None) -> Recipient",
    "Draft.attach_bytes": "(name: str, data: bytes, *, mime_type: str | None = None) -> Attachment",
    "Draft.attach_file": "(path: str | os.PathLike[str], *, mime_type: str | None = None, name: str | None = None) -> Attachment",
    "Draft.bcc": "(*addresses: str) -> Draft",
    "Draft.body": "property -> str",
    "Draft.cc": "(*addresses: str) -> Draft",
    "Draft.save": "() -> int",
    "Draft.set": "(tag: int, value: Any) -> Draft",
    "Draft.subject": "property -> str",
    "Draft.submit": "() -> int",
    "Draft.to": "(*addresses: str) -> Draft",
    "Session.__enter__": "() -> Session",
    "Session.__exit__": "(*exc: object) -> None",
    "Session.abort_submit": "(ref: str | int | bytes) -> None",
    "Session.add_service": "(kind: str, name: str, options: Mapping[str, Any] | None = None, *, prefer_last: bool | None = None, call_when_offline: bool = False, poll_seconds: float | None = None, policy: Mapping[str, Any] | None = None) -> Service",
    "Session.cancel": "(ref: str | int | bytes) -> None",
    "Session.close": "() -> None",
    "Session.configure_service": "(name: str, *, options: Mapping[str, Any] | None = None, policy: Mapping[str, Any] | None = None, call_when_offline: bool | None = None, poll_seconds: float | None = None) -> Service",
    "Session.confirm_delivered": "(ref: str | int | bytes, detail: str = 'confirmed delivered by an operator') -> str",
    "Session.create_folder": "(name: str) -> Folder",
    "Session.create_message": "(subject: str = '', body: str = '', *, folder: Folder | None = None) -> Draft",
    "Session.deleted_items": "property -> Folder",
    "Session.deliver": "(limit: int | None = None, *, stop: asyncio.Event | None = None) -> PassSummary",
    "Session.entry_id": "(ref: str | int | bytes) -> bytes",
    "Session.enum_adr_types": "() -> list[str]",
    "Session.events": "(ref: str | int | bytes) -> list[Event]",
    "Session.flush": "(transport: str, *, stop: asyncio.Event | None = None) -> SendReceiveSummary",
    "Session.folder": "(name: str | int) -> Folder",
    "Session.folders": "() -> list[Folder]",
    "Session.has_explicit_order": "() -> bool",
    "Session.hold": "(ref: str | int | bytes, reason: str = 'held by an operator') -> None",
    "Session.inbox": "property -> Folder",
    "Session.list_messages": "(folder: str | int | Folder, limit: int | None = None) -> list[MessageSummary]",
    "Session.message_folder": "(ref: str | int | bytes) -> Folder | None",
    "Session.message_id": "(ref: str | int | bytes) -> int",
    "Session.mode": "property -> Mode",
    "Session.next_due": "() -> datetime | None",
    "Session.on_new_mail": "(callback: Callable[[MessageSummary], None], *, stop: asyncio.Event | None = None) -> None",
    "Session.open_message": "(ref: str | int | bytes) -> MessageData",
    "Session.outbox": "property -> Folder",
    "Session.publish_status": "() -> None",
    "Session.queue": "() -> list[QueueEntry]",
    "Session.receive": "() -> Received",
    "Session.receive_folders": "() -> list[tuple[str, Folder]]",
    "Session.recipient_report": "(ref: str | int | bytes) -> list[RecipientReport]",
    "Session.recipient_states": "(ref: str | int | bytes) -> list[RecipientStatus]",
    "Session.release": "(ref: str | int | bytes) -> None",
    "Session.reload_configuration": "() -> None",
    "Session.remove_service": "(name: str) -> Service",
    "Session.reset_transport_order": "() -> None",
    "Session.retry": "(ref: str | int | bytes | None = None) -> int",
    "Session.route": "(addresses: Iterable[str]) -> list[RouteAnswer]",
    "Session.run_spooler": "(stop: asyncio.Event | None = None, on_pass: Callable[[PassSummary], None] | None = None) -> None",
    "Session.save_profile": "() -> None",
    "Session.send_receive": "(group: str | None = None, **kw: Any) -> SendReceiveSummary",
    "Session.sender_identity": "() -> tuple[str, str]",
    "Session.sent_items": "property -> Folder",
    "Session.services": "() -> list[Service]",
    "Session.set_mode": "(mode: Mode | str) -> None",
    "Session.set_receive_folder": "(message_class: str, folder: str | int | None) -> None",
    "Session.set_transport_order": "(transports: Sequence[str | bytes]) -> None",
    "Session.status": "() -> list[StatusRow]",
    "Session.status_table": "() -> list[StatusRow]",
    "Session.submit": "(ref: str | int | bytes) -> None",
    "Session.submit_many": "(drafts: Iterable[Draft]) -> list[int]",
    "Session.transport_kinds": "() -> dict[str, type[Any]]",
    "Session.transport_order": "() -> list[Service]",
    "Session.validate_state": "() -> None",
}

#: Value types the face returns without exporting them yet (issue 15 empties this list).
KNOWN_UNEXPORTED = {
    "Attachment",
    "Event",
    "Folder",
    "MessageData",
    "MessageSummary",
    "PassSummary",
    "QueueEntry",
    "Received",
    "Recipient",
    "RecipientReport",
    "RecipientStatus",
    "SendReceiveSummary",
    "Service",
    "StatusRow",
}


def test_the_public_surface_is_the_pinned_one() -> None:
    assert surface() == SURFACE


def test_every_value_type_the_face_returns_is_exported() -> None:
    unexported = {t.__name__ for t in returned_types() if getattr(postroom, t.__name__, None) is not t}
    assert unexported - KNOWN_UNEXPORTED == set()
    assert KNOWN_UNEXPORTED - unexported == set(), "exported now: take these off the list"


def test_every_name_in_all_is_there_and_listed_by_dir() -> None:
    for name in postroom.__all__:
        assert getattr(postroom, name) is not None, name
    assert set(postroom.__all__) <= set(dir(postroom))
