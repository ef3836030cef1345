"""postroom: the MAPI messaging subsystem in Python.

`postroom.logon(profile)` opens a profile's message store and returns a `Session`;
`postroom.alogon(profile)` returns the asyncio flavour.

The names are imported on first use (module `__getattr__`), not with the package: every
`postroom` command imports this package, and `postroom --version` must not pay for the
store, the spooler and asyncio (benchmarks/fig9_startup.py measures it).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    from .profile import Mode
    from .session import AsyncSession, Draft, RouteAnswer, Session, alogon, logon
    from .transports.registry import register_transport_kind, transport_kinds

__version__ = "0.1.0"

__all__ = [
    "ArgumentTypeError",
    "AsyncSession",
    "Draft",
    "HResult",
    "MAPIError",
    "Mode",
    "NotFound",
    "ProviderFailed",
    "RouteAnswer",
    "Session",
    "StoreDiskTrouble",
    "StoreUnavailable",
    "StoreUnreachable",
    "__version__",
    "alogon",
    "logon",
    "register_transport_kind",
    "transport_kinds",
]

#: Where each public name lives.
_HOMES = {
    "ArgumentTypeError": ".mapi.codes",
    "AsyncSession": ".session",
    "Draft": ".session",
    "HResult": ".mapi.codes",
    "MAPIError": ".mapi.codes",
    "Mode": ".profile",
    "NotFound": ".mapi.codes",
    "ProviderFailed": ".mapi.codes",
    "RouteAnswer": ".session",
    "Session": ".session",
    "StoreDiskTrouble": ".mapi.codes",
    "StoreUnavailable": ".mapi.codes",
    "StoreUnreachable": ".mapi.codes",
    "alogon": ".session",
    "logon": ".session",
    "register_transport_kind": ".transports.registry",
    "transport_kinds": ".transports.registry",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value  # the next lookup finds it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
