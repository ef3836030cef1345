"""The transport service-provider interface, modelled on IXPProvider / IXPLogon (spec §2).

A provider logs on and returns a logon. Right after logon the spooler asks the logon
for its registration (address types and provider UIDs). `submit_message` gets a view
of the message in which exactly the recipients assigned to this transport are pending
(PR_RESPONSIBILITY FALSE); it marks each one it handled, delivered or failed. Recipients
it leaves pending are "not mine" and go to the next matching transport.

Methods may be `async def` or plain `def`; the spooler runs plain ones in a worker
thread, so a blocking transport never stalls the event loop. A plain method marked
`@nonblocking` (it only looks at memory, like most `end_message`s) is called on the loop
instead: the thread hop costs more CPU than such a method (issue 17). Transports never see
the store: they get message views and report through the support object.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..mapi import tags as T
from ..mapi.codes import HResult, MAPIError
from ..mapi.entryid import MAPIUID
from ..mapi.flags import (
    EndMessageFlags,
    FlushFlags,
    LogoffFlags,
    LogonFlags,
    LogonResultFlags,
    NDRDiag,
    NDRReason,
    NotifyFlags,
    ResourceMethods,
    SpoolerNotifyFlags,
    StatusCode,
    ValidateFlags,
)
from ..mapi.message import MessageData, Recipient

#: The attribute `nonblocking` sets on a function.
NONBLOCKING = "_postroom_nonblocking"

F = TypeVar("F", bound=Callable[..., Any])


def nonblocking(fn: F) -> F:
    """Mark a plain transport method as safe to call on the spooler's event loop: it neither
    blocks nor waits (no I/O, no lock), so no worker thread is needed for it."""
    setattr(fn, NONBLOCKING, True)
    return fn


def is_nonblocking(fn: Callable[..., Any]) -> bool:
    """Whether `fn` (a function or a bound method) was marked with `nonblocking`."""
    return getattr(fn, NONBLOCKING, False) is True


# --- registration -------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipientScope:
    """Which recipients of its registration a transport takes, said up front (a postroom extension).

    MAPI learns that a transport declines a recipient only by calling it ("not mine"). A
    transport that knows in advance (it serves only some domains, or addresses matching a
    pattern) says so here, and the spooler never offers it a recipient outside its scope, in
    either mode. So offline, a recipient never waits for a transport that would only decline
    it; routing is the same online and offline, and `postroom route` shows the skip.

    A transport with a scope must leave every recipient outside it pending in submit_message.
    """

    description: str  # why a recipient is skipped, e.g. "serves only localhost"
    domains: frozenset[str] | None = None  # lower-case domains of `local@domain` addresses
    pattern: re.Pattern[str] | None = None  # matched (fullmatch) against the whole address
    predicate: Callable[[str, str], bool] | None = None  # (address type, address) -> takes it

    @classmethod
    def for_domains(cls, domains: Iterable[str]) -> RecipientScope:
        names = frozenset(d.lower() for d in domains)
        return cls(f"serves only {', '.join(sorted(names))}", domains=names)

    @classmethod
    def matching(cls, pattern: str, flags: int = re.IGNORECASE) -> RecipientScope:
        return cls(f"serves only addresses matching {pattern!r}", pattern=re.compile(pattern, flags))

    @classmethod
    def custom(cls, predicate: Callable[[str, str], bool], description: str) -> RecipientScope:
        return cls(description, predicate=predicate)

    def takes(self, address_type: str, address: str) -> bool:
        """False when the transport would certainly leave this recipient "not mine"."""
        if self.domains is not None:
            _, at, domain = address.rpartition("@")
            if not at or domain.lower() not in self.domains:
                return False
        if self.pattern is not None and self.pattern.fullmatch(address) is None:
            return False
        return self.predicate is None or bool(self.predicate(address_type, address))


@dataclass(frozen=True)
class Registration:
    """What a logon can deliver to (IXPLogon::AddressTypes).

    `address_types=None` is the NULL wildcard ("any address type"); `("",)`, a single
    empty string, means "no address-type-dispatched mail". Address types compare
    case-insensitively (the spec leaves case unconfirmed; types are upper-case by convention).
    `scope`, when set, narrows the recipients of those types the transport takes (see
    RecipientScope); without it every matching recipient is offered to the transport.
    """

    address_types: tuple[str, ...] | None
    uids: tuple[MAPIUID, ...] = ()
    scope: RecipientScope | None = None

    @classmethod
    def of(cls, *address_types: str, uids: Sequence[bytes] = (), scope: RecipientScope | None = None) -> Registration:
        return cls(tuple(a.upper() for a in address_types), tuple(MAPIUID(u) for u in uids), scope)

    @classmethod
    def any(cls, uids: Sequence[bytes] = (), scope: RecipientScope | None = None) -> Registration:
        return cls(None, tuple(MAPIUID(u) for u in uids), scope)

    @classmethod
    def none(cls, uids: Sequence[bytes] = ()) -> Registration:
        return cls(("",), tuple(MAPIUID(u) for u in uids))

    def takes(self, address_type: str, address: str) -> bool:
        """Whether the transport's scope includes this recipient (always, without a scope)."""
        return self.scope is None or self.scope.takes(address_type, address)

    @property
    def is_wildcard(self) -> bool:
        return self.address_types is None

    def named_types(self) -> tuple[str, ...]:
        """The real address types (without the empty "none" marker); empty for the wildcard."""
        return tuple(a for a in (self.address_types or ()) if a)


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitResult:
    """The whole-message answer of submit_message (its HRESULT and lpulReturnParm)."""

    code: HResult = HResult.S_OK
    wait_seconds: float = 0.0
    reason: str = ""

    @classmethod
    def ok(cls) -> SubmitResult:
        return cls()

    @classmethod
    def busy(cls, reason: str = "transport busy") -> SubmitResult:
        return cls(HResult.MAPI_E_BUSY, 0.0, reason)

    @classmethod
    def wait(cls, seconds: float, reason: str = "temporary problem") -> SubmitResult:
        return cls(HResult.MAPI_E_WAIT, float(seconds), reason)

    @classmethod
    def network_error(cls, seconds: float, reason: str = "network error") -> SubmitResult:
        return cls(HResult.MAPI_E_NETWORK_ERROR, float(seconds), reason)

    @classmethod
    def not_me(cls, reason: str = "") -> SubmitResult:
        return cls(HResult.MAPI_E_NOT_ME, 0.0, reason)

    @classmethod
    def cancel(cls, reason: str = "") -> SubmitResult:
        return cls(HResult.MAPI_E_CANCEL, 0.0, reason)

    @classmethod
    def unconfigured(cls, reason: str) -> SubmitResult:
        """The transport cannot work as configured (a password that cannot be read, a missing
        program, a server that offers no AUTH for the username): its status row goes into
        failure with `reason`, and its recipients wait until the configuration changes. Retrying
        every few minutes cannot help, and failing them would lose mail over a typo."""
        return cls(HResult.MAPI_E_UNCONFIGURED, 0.0, reason)


# --- message views --------------------------------------------------------------------------


@dataclass
class RecipientMark:
    """What a transport said about one recipient."""

    delivered: bool
    time: datetime
    report: bool = True  # False: accepted for relay, no delivery report from us
    #: The next hop took this recipient's RFC 3461 DSN request (NOTIFY): it reports, not we.
    dsn_passed_on: bool = False
    reason: NDRReason = NDRReason.TRANSFER_FAILED
    diag: NDRDiag = NDRDiag.NO_DIAGNOSTIC
    text: str = ""
    status_code: int | None = None


class OutboundRecipient:
    """A recipient as a transport sees it inside submit_message."""

    def __init__(self, recipient: Recipient, responsibility: bool) -> None:
        self.row = recipient
        self._responsibility = responsibility
        self.mark: RecipientMark | None = None
        self.temporary: str | None = None  # why it stays pending for now, in the server's words

    # Read-only access to the row.
    @property
    def row_id(self) -> int:
        return self.row.row_id

    @property
    def display_name(self) -> str:
        return self.row.display_name

    @property
    def address_type(self) -> str:
        return self.row.address_type

    @property
    def email_address(self) -> str:
        return self.row.email_address

    @property
    def entry_id(self) -> bytes:
        return self.row.entry_id

    @property
    def recipient_type(self) -> int:
        return self.row.recipient_type

    @property
    def responsibility(self) -> bool:
        """PR_RESPONSIBILITY: FALSE means "yours to handle"."""
        return self._responsibility

    def _take(self) -> None:
        if self._responsibility:
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER,
                f"recipient {self.row_id} ({self.row.address}) was not assigned to this transport",
            )
        self._responsibility = True

    def mark_delivered(self, when: datetime | None = None, *, report: bool = True, dsn_passed_on: bool = False) -> None:
        """Sent (PR_RESPONSIBILITY TRUE). `report=False` for a relay that cannot confirm final delivery;
        `dsn_passed_on=True` when the next hop accepted the sender's DSN request (RFC 3461 NOTIFY)
        and so reports itself: then no `relayed` report comes from us."""
        self._take()
        self.mark = RecipientMark(
            delivered=True, time=when or datetime.now(UTC), report=report, dsn_passed_on=dsn_passed_on
        )

    def defer(self, text: str) -> None:
        """A temporary problem with this recipient (e.g. the server's ``450 4.2.1 …``): it stays
        pending (PR_RESPONSIBILITY FALSE) and `text` is shown in `postroom queue` and `show` while it
        waits. Use it with END_RESEND_LATER from end_message, or before a non-OK result."""
        if self._responsibility:
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER,
                f"recipient {self.row_id} ({self.row.address}) was not assigned to this transport",
            )
        self.temporary = text

    def mark_failed(
        self,
        text: str,
        *,
        reason: NDRReason = NDRReason.TRANSFER_FAILED,
        diag: NDRDiag = NDRDiag.NO_DIAGNOSTIC,
        status_code: int | None = None,
    ) -> None:
        """Conclusively failed (PR_RESPONSIBILITY TRUE); the spooler sends an NDR with `text`."""
        self._take()
        self.mark = RecipientMark(
            delivered=False, time=datetime.now(UTC), reason=reason, diag=diag, text=text, status_code=status_code
        )


def usable_recipients(
    recipients: Sequence[OutboundRecipient], problem: Callable[[str], str | None], action: str
) -> list[OutboundRecipient]:
    """The recipients whose address passes `problem`; the others are failed at once with an NDR
    that says why: `action` with `{address}` in it, then the problem (MAPI_DIAG_MAIL_ADDRESS_INCORRECT)."""
    usable: list[OutboundRecipient] = []
    for rcpt in recipients:
        why = problem(rcpt.email_address)
        if why is None:
            usable.append(rcpt)
        else:
            rcpt.mark_failed(
                f"{action.format(address=repr(rcpt.email_address))}: {why}.",
                reason=NDRReason.TRANSFER_IMPOSSIBLE,
                diag=NDRDiag.MAIL_ADDRESS_INCORRECT,
            )
    return usable


class OutboundMessage:
    """The message object handed to submit_message (read/write, valid until end_message)."""

    def __init__(self, message: MessageData, recipients: Sequence[OutboundRecipient], ref: int, deferred: bool) -> None:
        self.data = message
        self.recipients = list(recipients)
        self.ref = ref
        self.deferred = deferred

    @property
    def props(self) -> dict[int, Any]:
        return self.data.props

    @property
    def entry_id(self) -> bytes:
        return bytes(self.data.props.get(T.PR_ENTRYID, b""))

    def pending(self) -> list[OutboundRecipient]:
        """The recipients assigned to this transport that it has not handled yet."""
        return [r for r in self.recipients if not r.responsibility]


class InboundMessage:
    """The new, empty message handed to start_message; save() commits the delivery.

    `ref` counts 1, 2, 3, … within one receive run of the spooler (the StartMessage loop). When
    start_message is called with ref n > 1, the message saved under ref n - 1 has been stored:
    transports use that to delete or mark the source copy only after it is safe (at least once).
    A run that starts again at ref 1 instead means the last message saved was not stored. (The
    mail-access transports also hand over nothing they could not fetch whole, and keep the exact
    bytes of whatever `mime.from_mime` cannot convert exactly: see transports/inbound.py.)
    """

    def __init__(self, ref: int) -> None:
        self.data = MessageData()
        self.ref = ref
        self.saved = False

    @property
    def props(self) -> dict[int, Any]:
        return self.data.props

    def save(self) -> None:
        """SaveChanges: without it nothing is delivered (spec §13, StartMessage)."""
        self.saved = True


# --- status rows -----------------------------------------------------------------------------


@dataclass
class StatusRow:
    """One row of the status table (PR_STATUS_CODE, PR_STATUS_STRING, …)."""

    display_name: str
    provider_display: str
    resource_type: int
    status_code: StatusCode = StatusCode.NONE
    status_string: str = ""
    resource_methods: ResourceMethods = ResourceMethods.NONE
    identity: str = ""
    last_error: str = ""
    last_error_time: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def set(
        self,
        code: StatusCode | None = None,
        add: StatusCode = StatusCode.NONE,
        remove: StatusCode = StatusCode.NONE,
        text: str | None = None,
    ) -> None:
        if code is not None:
            self.status_code = code
        self.status_code = (self.status_code | add) & ~remove
        if text is not None:
            self.status_string = text

    def connected(self, text: str) -> None:
        """A connection works (again): available, no failure, not offline; the failure's last error stays."""
        self.set(add=StatusCode.AVAILABLE, remove=StatusCode.FAILURE | StatusCode.OFFLINE, text=text)

    def failed(self, error: str) -> None:
        self.status_code |= StatusCode.FAILURE
        self.last_error = error
        self.last_error_time = datetime.now(UTC)
        self.status_string = error


def status_row_dict(row: StatusRow) -> dict[str, Any]:
    """A status row as plain data (for the store and `--json`), with the bits named."""
    return {
        "display_name": row.display_name,
        "provider_display": row.provider_display,
        "resource_type": row.resource_type,
        "status_code": int(row.status_code),
        "status": [f.name for f in StatusCode if f.value and f in row.status_code and f.name],
        "status_string": row.status_string,
        "resource_methods": [f.name for f in ResourceMethods if f.value and f in row.resource_methods and f.name],
        "identity": row.identity,
        "last_error": row.last_error,
        "last_error_time": row.last_error_time.isoformat() if row.last_error_time else None,
    }


def status_row_from_dict(name: str, row: Mapping[str, Any]) -> StatusRow:
    """A status row read back from plain data (a table another process published under `name`)."""
    when = row.get("last_error_time")
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when)
        except ValueError:
            when = None
    return StatusRow(
        display_name=str(row.get("display_name", name)),
        provider_display=str(row.get("provider_display", "")),
        resource_type=int(row.get("resource_type", 0)),
        status_code=StatusCode(int(row.get("status_code", 0))),
        status_string=str(row.get("status_string", "")),
        identity=str(row.get("identity", "")),
        last_error=str(row.get("last_error", "")),
        last_error_time=when if isinstance(when, datetime) else None,
    )


# --- the support object ------------------------------------------------------------------------

Preprocessor = Callable[[OutboundMessage], Awaitable[None] | None]


class TransportSupport(Protocol):
    """What the spooler offers a logon (the transport's IMAPISupport)."""

    def spooler_notify(self, flags: SpoolerNotifyFlags, data: Any = None) -> None: ...

    def register_preprocessor(
        self, preprocessor: Preprocessor, *, address_type: str | None = None, uid: bytes | None = None
    ) -> None: ...

    def spooler_yield(self) -> bool:
        """True when the message being processed was cancelled (MAPI_W_CANCEL_MESSAGE)."""
        ...

    def acquire_connection_slot(self, limit: int) -> int | None:
        """Take one of the transport's `limit` connection slots before opening a connection.

        Slots are shared by every spooler process on the message store, so all of them
        together never hold more than `limit` connections. None: all are in use elsewhere."""
        ...

    def release_connection_slot(self, slot: int) -> None:
        """Give a slot back when its connection has closed."""
        ...

    def wait_for_connection_slot(self, waiting: bool) -> None:
        """Say that one more (True) or one fewer (False) task waits for a slot, so that the other
        processes give back what they hold beyond their fair share."""
        ...

    def should_give_back_connection_slot(self, limit: int) -> bool:
        """True when another process waits for a slot and this one holds more than its fair share:
        close the connection that has just become free."""
        ...


@dataclass
class ProviderContext:
    """Everything a provider gets from its profile section."""

    service_name: str
    kind: str
    provider_uid: MAPIUID
    options: Mapping[str, Any]
    profile_dir: Path
    support: TransportSupport


# --- the provider and its logons --------------------------------------------------------------


class TransportLogon(abc.ABC):
    """IXPLogon: one logged-on session of a transport."""

    #: LOGON_SP_* flags returned from logon: SP_POLL asks the spooler to call poll().
    result_flags: LogonResultFlags = LogonResultFlags.NONE

    def __init__(self, provider: TransportProvider, flags: LogonFlags) -> None:
        self.provider = provider
        self.flags = flags
        offline = bool(flags & LogonFlags.NO_CONNECT)
        self.status = StatusRow(
            display_name=provider.context.service_name,
            provider_display=type(provider).display_name,
            resource_type=36,
            status_code=StatusCode.OFFLINE if offline else StatusCode.AVAILABLE,
            resource_methods=ResourceMethods.VALIDATE_STATE | ResourceMethods.FLUSH_QUEUES,
        )

    @property
    def name(self) -> str:
        return self.provider.context.service_name

    @property
    def options(self) -> Mapping[str, Any]:
        return self.provider.context.options

    @abc.abstractmethod
    def address_types(self) -> Registration:
        """Called right after logon, and again on a configuration change."""

    def submit_message(self, message: OutboundMessage, flags: int) -> SubmitResult | Awaitable[SubmitResult]:
        """Send `message` to its pending recipients and mark each one handled."""
        return SubmitResult.not_me("this transport sends nothing")

    @nonblocking
    def end_message(self, ref: int) -> EndMessageFlags | Awaitable[EndMessageFlags]:
        return EndMessageFlags.NONE

    @nonblocking
    def poll(self) -> bool | Awaitable[bool]:
        """True when inbound mail waits (only called with LOGON_SP_POLL)."""
        return False

    def start_message(self, message: InboundMessage) -> Awaitable[None] | None:
        """Fill `message` with the next inbound message and save() it; leave it unsaved when none."""
        return None

    def flush_queues(self, flags: FlushFlags) -> Awaitable[None] | None:
        if flags & FlushFlags.UPLOAD:
            self.status.set(add=StatusCode.OUTBOUND_FLUSH)
        if flags & FlushFlags.DOWNLOAD:
            self.status.set(add=StatusCode.INBOUND_FLUSH)
        return None

    def transport_notify(self, flags: NotifyFlags, data: Any = None) -> None:
        """State changes; update the status row before returning."""
        add = StatusCode.NONE
        remove = StatusCode.NONE
        if flags & NotifyFlags.BEGIN_INBOUND:
            add |= StatusCode.INBOUND_ENABLED
        if flags & NotifyFlags.BEGIN_OUTBOUND:
            add |= StatusCode.OUTBOUND_ENABLED
        if flags & NotifyFlags.END_INBOUND:
            remove |= StatusCode.INBOUND_ENABLED
        if flags & NotifyFlags.END_OUTBOUND:
            remove |= StatusCode.OUTBOUND_ENABLED
        if flags & NotifyFlags.END_INBOUND_FLUSH:
            remove |= StatusCode.INBOUND_FLUSH
        if flags & NotifyFlags.END_OUTBOUND_FLUSH:
            remove |= StatusCode.OUTBOUND_FLUSH
        self.status.set(add=add, remove=remove)

    def validate_state(self, flags: ValidateFlags) -> Awaitable[None] | None:
        return None

    def logoff(self, flags: LogoffFlags = LogoffFlags.NORMAL) -> Awaitable[None] | None:
        return None


class TransportProvider(abc.ABC):
    """IXPProvider: loaded once per session; logs on and returns logons.

    Third-party transports subclass this and register it in the `postroom.transports`
    entry-point group; the entry-point name is the service kind used in the profile.
    """

    #: Shown in the status table (PR_PROVIDER_DISPLAY).
    display_name: str = "transport"
    #: STATUS_XP_PREFER_LAST: put this transport at the end of the default transport order.
    prefer_last: bool = False
    #: The options a service of this kind accepts, with a one-line description each.
    option_help: Mapping[str, str] = {}
    #: True for a transport that fetches inbound mail: `postroom receive` then reports its failed
    #: logons (a wrong password, say) as failures of the receive.
    receives: bool = False

    def __init__(self, context: ProviderContext) -> None:
        self.context = context

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check and normalise a service's options when it is added; raise MAPIError on nonsense."""
        unknown = sorted(set(options) - set(cls.option_help))
        if cls.option_help and unknown:
            known = ", ".join(sorted(cls.option_help))
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"unknown option {unknown[0]!r} (known: {known})")
        return dict(options)

    @classmethod
    def setup_problems(cls, options: Mapping[str, Any], profile_dir: Path) -> list[str]:
        """What would stop a service with these (checked) options from working here and now: a
        program that does not exist, a password variable that is not set, an unreadable file.
        `postroom service add` and `service set` refuse the change while there are any."""
        return []

    @abc.abstractmethod
    def logon(self, flags: LogonFlags) -> TransportLogon | Awaitable[TransportLogon]:
        """TransportLogon. Raise MAPIError(MAPI_E_FAILONEPROVIDER) to skip this provider alone;
        any other error disables the whole message service for the session."""

    def shutdown(self) -> Awaitable[None] | None:
        return None
