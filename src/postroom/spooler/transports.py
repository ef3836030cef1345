"""The session's transports: loading providers, logging on, registrations, status rows.

A provider whose logon fails disables its whole message service for the session, with
the reason in its status row; one that raises MAPI_E_FAILONEPROVIDER is skipped alone
(spec §2.1). With one provider per service the visible difference is the status text.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ..mapi.codes import HResult, MAPIError, ProviderFailed
from ..mapi.flags import LogoffFlags, LogonFlags, NotifyFlags, ResourceType, SpoolerNotifyFlags, StatusCode
from ..profile import Profile, Service
from ..store.slots import ConnectionSlots, LocalSlots
from ..transports.registry import provider_class
from ..transports.spi import (
    Preprocessor,
    ProviderContext,
    Registration,
    StatusRow,
    TransportLogon,
    TransportProvider,
    is_nonblocking,
)
from .declines import fingerprint
from .routing import Router

log = logging.getLogger("postroom.spooler")
R = TypeVar("R")


async def call_transport(fn: Callable[..., R | Awaitable[R]], *args: Any) -> R:
    """Call a transport method: await a coroutine, run a plain function in a worker thread (on
    the loop when it is marked `@nonblocking`)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)  # type: ignore[no-any-return]
    result = fn(*args) if is_nonblocking(fn) else await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        return await result
    return result


def error_summary(exc: BaseException) -> str:
    """A one-line account of a transport's exception, with where it happened."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def keep_last_error(before: StatusRow, after: StatusRow) -> None:
    """A new logon's row keeps the old row's last error (and failure) until a success clears it."""
    if after is before or after.last_error or not before.last_error:
        return
    after.last_error, after.last_error_time = before.last_error, before.last_error_time
    if before.status_code & StatusCode.FAILURE:
        after.set(add=StatusCode.FAILURE)


@dataclass
class RegisteredPreprocessor:
    transport: str
    function: Preprocessor
    address_type: str | None
    uid: bytes | None


class Support:
    """The IMAPISupport a logon gets: it talks back to the spooler through this."""

    def __init__(self, table: TransportTable, service: Service) -> None:
        self._table = table
        self._service = service

    def spooler_notify(self, flags: SpoolerNotifyFlags, data: Any = None) -> None:
        self._table.notify(self._service.name, flags, data)

    def register_preprocessor(
        self, preprocessor: Preprocessor, *, address_type: str | None = None, uid: bytes | None = None
    ) -> None:
        self._table.preprocessors.append(
            RegisteredPreprocessor(
                self._service.name, preprocessor, address_type.upper() if address_type else None, uid
            )
        )

    def spooler_yield(self) -> bool:
        return False

    def acquire_connection_slot(self, limit: int) -> int | None:
        return self._table.connection_slots.try_acquire(self._service.name, limit)

    def release_connection_slot(self, slot: int) -> None:
        self._table.connection_slots.release(self._service.name, slot)

    def wait_for_connection_slot(self, waiting: bool) -> None:
        self._table.connection_slots.set_waiting(self._service.name, waiting)

    def should_give_back_connection_slot(self, limit: int) -> bool:
        return self._table.connection_slots.should_give_back(self._service.name, limit)


@dataclass
class LoadedTransport:
    """A transport of the profile and what became of its logon."""

    service: Service
    position: int
    provider: TransportProvider | None = None
    logon: TransportLogon | None = None
    registration: Registration | None = None
    status: StatusRow = field(default_factory=lambda: StatusRow("", "", int(ResourceType.TRANSPORT_PROVIDER)))

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def available(self) -> bool:
        return self.logon is not None and self.registration is not None

    @property
    def receives(self) -> bool:
        """Whether its provider fetches inbound mail (known even when its logon failed)."""
        try:
            return bool(provider_class(self.service.kind).receives)
        except MAPIError:
            return False


class TransportTable:
    """Every transport of the session, in transport order."""

    def __init__(self, profile: Profile, connection_slots: ConnectionSlots | None = None) -> None:
        self.profile = profile
        #: The store's slots (shared across processes); without a store, this process's own.
        self.connection_slots = connection_slots or LocalSlots()
        self.transports = [LoadedTransport(s, n) for n, s in enumerate(profile.transport_order())]
        self.preprocessors: list[RegisteredPreprocessor] = []
        self.listeners: list[Callable[[str, SpoolerNotifyFlags, Any], None]] = []
        self._router: Router | None = None
        self._fingerprints = {t.name.lower(): fingerprint(t.service) for t in self.transports}
        self.logged_on = False

    def notify(self, transport: str, flags: SpoolerNotifyFlags, data: Any) -> None:
        if flags & SpoolerNotifyFlags.CONFIG_CHANGE:
            self.refresh_registrations()
        for listener in list(self.listeners):
            listener(transport, flags, data)

    def by_name(self, name: str) -> LoadedTransport:
        for t in self.transports:
            if t.name.lower() == name.lower():
                return t
        raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no transport named {name!r}")

    async def logon_all(
        self, flags: LogonFlags | Callable[[LoadedTransport], LogonFlags] = LogonFlags.NO_DIALOG
    ) -> None:
        """Log on to every transport, then ask each for its registration (AddressTypes)."""
        for t in self.transports:
            await self._logon(t, flags(t) if callable(flags) else flags)
        self.logged_on = True
        self._router = None

    async def relogon(self, t: LoadedTransport, flags: LogonFlags) -> None:
        """Log one transport off and on again with other flags (going online/offline, a flush)."""
        if t.logon is not None and t.logon.flags == flags:
            return
        await self._logoff(t)
        await self._logon(t, flags)
        self._router = None

    async def end_traffic(self) -> None:
        """NOTIFY_END_INBOUND | NOTIFY_END_OUTBOUND to every logon (the spooler is stopping)."""
        for t in self.transports:
            if t.logon is not None:
                with contextlib.suppress(Exception):
                    t.logon.transport_notify(
                        NotifyFlags.END_INBOUND
                        | NotifyFlags.END_OUTBOUND
                        | NotifyFlags.END_INBOUND_FLUSH
                        | NotifyFlags.END_OUTBOUND_FLUSH
                    )

    def remember_errors(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Carry the last errors of published status rows (an earlier process's) into this table's
        rows: a status row keeps its last error until a later success clears it."""
        by_name = {str(r.get("display_name", "")).lower(): r for r in rows}
        for t in self.transports:
            row = by_name.get(t.name.lower())
            if row is None or not row.get("last_error") or t.status.last_error:
                continue
            t.status.last_error = str(row["last_error"])
            when = row.get("last_error_time")
            t.status.last_error_time = datetime.fromisoformat(when) if isinstance(when, str) else None
            if int(row.get("status_code", 0)) & StatusCode.FAILURE:
                t.status.set(add=StatusCode.FAILURE)

    async def _logon(self, t: LoadedTransport, flags: LogonFlags) -> None:
        previous = t.status
        try:
            await self._logon_once(t, flags)
        finally:
            keep_last_error(previous, t.status)

    async def _logon_once(self, t: LoadedTransport, flags: LogonFlags) -> None:
        t.status = StatusRow(t.name, t.service.kind, int(ResourceType.TRANSPORT_PROVIDER))
        try:
            cls = provider_class(t.service.kind)
            t.status.provider_display = cls.display_name
            t.provider = cls(
                ProviderContext(
                    service_name=t.name,
                    kind=t.service.kind,
                    provider_uid=t.service.provider_uid,
                    options=t.service.options,
                    profile_dir=self.profile.directory,
                    support=Support(self, t.service),
                )
            )
            t.logon = await call_transport(t.provider.logon, flags)
            t.status = t.logon.status
            t.registration = t.logon.address_types()
            t.logon.transport_notify(NotifyFlags.BEGIN_OUTBOUND | NotifyFlags.BEGIN_INBOUND)
        except MAPIError as exc:
            t.logon = None
            if isinstance(exc, ProviderFailed):
                t.status.failed(f"provider skipped for this session: {exc}")
            else:
                t.status.failed(f"message service disabled for this session: {exc}")
            log.warning("transport %s: logon failed: %s", t.name, exc)
        except Exception as exc:  # a transport's own bug must not stop the session
            t.logon = None
            t.status.failed(f"message service disabled for this session: {error_summary(exc)}")
            log.warning("transport %s: logon raised %s", t.name, error_summary(exc))

    def refresh_registrations(self) -> None:
        for t in self.transports:
            if t.logon is not None:
                t.registration = t.logon.address_types()
        self._router = None

    def router(self) -> Router:
        """Routing over the logged-on transports, in transport order."""
        if self._router is None:
            self._router = Router([(t.name, t.registration) for t in self.transports if t.available and t.registration])
        return self._router

    def fingerprints(self) -> dict[str, str]:
        """Each transport's configuration fingerprint (declines.py), by lower-case name."""
        return self._fingerprints

    def enum_adr_types(self) -> list[str]:
        """The union of the address types of the transports logged on now (EnumAdrTypes)."""
        out: list[str] = []
        for t in self.transports:
            if t.available and t.registration is not None:
                for a in t.registration.named_types():
                    if a not in out:
                        out.append(a)
        return out

    async def _logoff(self, t: LoadedTransport) -> None:
        if t.logon is not None:
            try:
                t.logon.transport_notify(NotifyFlags.END_INBOUND | NotifyFlags.END_OUTBOUND)
                await call_transport(t.logon.logoff, LogoffFlags.NORMAL)
            except Exception as exc:
                log.warning("transport %s: logoff raised %s", t.name, error_summary(exc))
            t.logon = None
            t.status.set(code=StatusCode.OFFLINE | (t.status.status_code & StatusCode.FAILURE), text="logged off")
        if t.provider is not None:
            try:
                await call_transport(t.provider.shutdown)
            except Exception as exc:
                log.warning("transport %s: shutdown raised %s", t.name, error_summary(exc))
            t.provider = None

    async def logoff_all(self) -> None:
        for t in self.transports:
            await self._logoff(t)
        self.logged_on = False
        self._router = None
