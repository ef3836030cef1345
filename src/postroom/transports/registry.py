"""The transport plug-in registry: which transport kinds are installed, and their provider classes.

A kind is the name of an entry point in the group `postroom.transports` (how postroom's own
transports and third-party ones are installed), or one registered in this process with
`register_transport_kind` (embedding, tests). A plug-in that cannot be loaded is still listed, as
a provider whose logon says why, so one broken package never hides the others.
"""

from __future__ import annotations

from ..mapi.codes import HResult, MAPIError
from ..mapi.flags import LogonFlags
from .spi import TransportLogon, TransportProvider

ENTRY_POINT_GROUP = "postroom.transports"

_REGISTERED: dict[str, type[TransportProvider]] = {}


def register_transport_kind(kind: str, provider: type[TransportProvider]) -> None:
    """Make a provider class available in this process without an entry point (embedding, tests)."""
    _REGISTERED[kind] = provider


def transport_kinds() -> dict[str, type[TransportProvider]]:
    """Every installed transport provider, by kind (entry-point name), plus registered ones."""
    # Imported here: importlib.metadata is a measured part of every command's start-up
    # (benchmarks/fig9_startup.py), and only the commands that load transports need it.
    from importlib.metadata import entry_points

    kinds: dict[str, type[TransportProvider]] = dict(_REGISTERED)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in kinds:
            try:
                kinds[ep.name] = ep.load()
            except Exception as exc:  # a broken plug-in must not hide the others
                kinds[ep.name] = _broken_provider(ep.name, exc)
    return kinds


def _broken_provider(kind: str, exc: Exception) -> type[TransportProvider]:
    message = f"transport kind {kind!r} could not be loaded: {type(exc).__name__}: {exc}"

    class Broken(TransportProvider):
        display_name = f"{kind} (broken)"

        def logon(self, flags: LogonFlags) -> TransportLogon:
            raise MAPIError(HResult.MAPI_E_VERSION, message)

    return Broken


def provider_class(kind: str) -> type[TransportProvider]:
    kinds = transport_kinds()
    if kind not in kinds:
        known = ", ".join(sorted(kinds)) or "none"
        raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no transport kind {kind!r} is installed (installed: {known})")
    cls = kinds[kind]
    if not (isinstance(cls, type) and issubclass(cls, TransportProvider)):
        raise MAPIError(HResult.MAPI_E_VERSION, f"entry point {kind!r} is not a postroom TransportProvider")
    return cls
