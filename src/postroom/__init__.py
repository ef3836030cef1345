"""postroom: the MAPI messaging subsystem in Python.

`postroom.logon(profile)` opens a profile's message store and returns a `Session`;
`postroom.alogon(profile)` returns the asyncio flavour. This package is the face: the
functions and classes below, and every value type they return, are the public API; the
command line and every other front end use nothing else (beside `postroom.mapi`,
`postroom.mime` and reading `postroom.profile`).

The names are imported on first use (module `__getattr__`), not with the package: every
`postroom` command imports this package, and `postroom --version` must not pay for the
store, the spooler and asyncio (benchmarks/fig9_startup.py measures it).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .addressing import ParsedAddress
    from .engine.groups import DEFAULT_GROUP, GroupChange, GroupSettings, SendReceiveGroup
    from .engine.listener_settings import ListenerSettings
    from .engine.pidfile import DaemonPidFile
    from .engine.report import RecipientReport
    from .engine.results import Received, RouteAnswer, SendReceiveSummary, TransportFlush
    from .engine.status import StatusPublication, StatusReport, StatusSource
    from .envelope import SubmissionSource
    from .formats.mailboxes import ImportResult, ImportStatus
    from .identity import Identity, IdentitySource
    from .mapi.codes import (
        ArgumentTypeError,
        HResult,
        MAPIError,
        NotFound,
        ProviderFailed,
        StoreDiskTrouble,
        StoreUnavailable,
        StoreUnreachable,
    )
    from .mapi.dsn import RecipientDsnRequest
    from .mapi.message import Attachment, MessageData, Recipient
    from .profile import Mode, Profile, Service
    from .session import AsyncSession, Draft, Session, alogon, logon, logon_when_usable
    from .spooler import LoadedTransport, MessageResult, PassSummary
    from .spooler.policy import POLICY_HELP, check_policy
    from .spooler.routing import Offer, RoutingPass, Skip
    from .store import (
        Event,
        EventKind,
        Folder,
        FolderRole,
        MessageSummary,
        QueueEntry,
        QueueState,
        RecipientOutcome,
        RecipientState,
        RecipientStatus,
        RetryAll,
        WaitKind,
    )
    from .store.base import ActivityBucket, DeliveryStats, QueueCounts, QueuePage, SpoolerStats
    from .submission import UnknownRecipient
    from .transports.registry import register_transport_kind, transport_kinds
    from .transports.spi import StatusRow


__version__ = "0.1.0"

#: Where each public name lives.
_HOMES = {
    # logging on
    "AsyncSession": ".session",
    "Draft": ".session",
    "Session": ".session",
    "alogon": ".session",
    "logon": ".session",
    "logon_when_usable": ".session",
    # errors
    "ArgumentTypeError": ".mapi.codes",
    "HResult": ".mapi.codes",
    "MAPIError": ".mapi.codes",
    "NotFound": ".mapi.codes",
    "ProviderFailed": ".mapi.codes",
    "StoreDiskTrouble": ".mapi.codes",
    "StoreUnavailable": ".mapi.codes",
    "StoreUnreachable": ".mapi.codes",
    "UnknownRecipient": ".submission",
    # the profile and its transports
    "Mode": ".profile",
    "Profile": ".profile",
    "Service": ".profile",
    "Identity": ".identity",
    "IdentitySource": ".identity",
    "POLICY_HELP": ".spooler.policy",
    "check_policy": ".spooler.policy",
    "register_transport_kind": ".transports.registry",
    "transport_kinds": ".transports.registry",
    # messages, folders, the queue, history
    "Attachment": ".mapi.message",
    "MessageData": ".mapi.message",
    "Recipient": ".mapi.message",
    "Event": ".store",
    "EventKind": ".store",
    "Folder": ".store",
    "FolderRole": ".store",
    "MessageSummary": ".store",
    "QueueEntry": ".store",
    "RetryAll": ".store",
    "QueueState": ".store",
    "RecipientOutcome": ".store",
    "RecipientState": ".store",
    "RecipientStatus": ".store",
    "WaitKind": ".store",
    "ActivityBucket": ".store.base",
    "DeliveryStats": ".store.base",
    "QueueCounts": ".store.base",
    "QueuePage": ".store.base",
    "SpoolerStats": ".store.base",
    "RecipientReport": ".engine.report",
    # files: import and export
    "ImportResult": ".formats.mailboxes",
    "ImportStatus": ".formats.mailboxes",
    # delivery, routing, status
    "LoadedTransport": ".spooler",
    "MessageResult": ".spooler",
    "PassSummary": ".spooler",
    "Offer": ".spooler.routing",
    "RoutingPass": ".spooler.routing",
    "Skip": ".spooler.routing",
    "ParsedAddress": ".addressing",
    "RouteAnswer": ".engine.results",
    "StatusRow": ".transports.spi",
    "StatusPublication": ".engine.status",
    "StatusReport": ".engine.status",
    "StatusSource": ".engine.status",
    "DaemonPidFile": ".engine.pidfile",
    # the SMTP submission listener, and messages handed over with an envelope
    "ListenerSettings": ".engine.listener_settings",
    "SubmissionSource": ".envelope",
    "RecipientDsnRequest": ".mapi.dsn",
    # Send/Receive and its groups, inbound
    "DEFAULT_GROUP": ".engine.groups",
    "GroupChange": ".engine.groups",
    "GroupSettings": ".engine.groups",
    "SendReceiveGroup": ".engine.groups",
    "Received": ".engine.results",
    "SendReceiveSummary": ".engine.results",
    "TransportFlush": ".engine.results",
}
__all__ = [
    "DEFAULT_GROUP",
    "POLICY_HELP",
    "ActivityBucket",
    "ArgumentTypeError",
    "AsyncSession",
    "Attachment",
    "DaemonPidFile",
    "DeliveryStats",
    "Draft",
    "Event",
    "EventKind",
    "Folder",
    "FolderRole",
    "GroupChange",
    "GroupSettings",
    "HResult",
    "Identity",
    "IdentitySource",
    "ImportResult",
    "ImportStatus",
    "ListenerSettings",
    "LoadedTransport",
    "MAPIError",
    "MessageData",
    "MessageResult",
    "MessageSummary",
    "Mode",
    "NotFound",
    "Offer",
    "ParsedAddress",
    "PassSummary",
    "Profile",
    "ProviderFailed",
    "QueueCounts",
    "QueueEntry",
    "QueuePage",
    "QueueState",
    "Received",
    "Recipient",
    "RecipientDsnRequest",
    "RecipientOutcome",
    "RecipientReport",
    "RecipientState",
    "RecipientStatus",
    "RetryAll",
    "RouteAnswer",
    "RoutingPass",
    "SendReceiveGroup",
    "SendReceiveSummary",
    "Service",
    "Session",
    "Skip",
    "SpoolerStats",
    "StatusPublication",
    "StatusReport",
    "StatusRow",
    "StatusSource",
    "StoreDiskTrouble",
    "StoreUnavailable",
    "StoreUnreachable",
    "SubmissionSource",
    "TransportFlush",
    "UnknownRecipient",
    "WaitKind",
    "__version__",
    "alogon",
    "check_policy",
    "logon",
    "logon_when_usable",
    "register_transport_kind",
    "transport_kinds",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value  # the next lookup finds it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
