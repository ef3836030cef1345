"""The engine of one logon: the runtime, the protocol manager and the daemon, and every operation
the face offers that needs more than one message store call.

The face (session.py) checks its callers' arguments and runs coroutines for the synchronous
session; everything else happens here: logging the transports on, delivering, the mode,
Send/Receive and its groups, inbound mail, the spooler daemon, changes of the profile, and the
reports built from the store (what became of each recipient, which status table to trust).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..addressing import ParsedAddress
from ..mapi.codes import HResult, MAPIError, StoreUnavailable
from ..mapi.flags import LogonFlags
from ..mapi.message import Recipient
from ..profile import Mode, Profile, Service
from ..spooler import PassSummary, Spooler, TransportTable
from ..store import MessageStore
from ..transports.registry import provider_class
from ..transports.spi import StatusRow
from .daemon import Daemon
from .groups import DEFAULT_GROUP, GroupChange, SendReceiveGroup, edit_group, find_group, load_groups, remove_group
from .pidfile import DaemonPidFile, running_daemon
from .protocol import ProtocolManager
from .report import RecipientReport, delivery_report, recipient_report
from .results import Received, RouteAnswer, SendReceiveSummary
from .runtime import Runtime, online_stability_seconds
from .serving import Serving
from .status import StatusReport, status_report

log = logging.getLogger("postroom.protocol")


class Engine:
    """One logon's machine room. `runtime`, `protocol` and `daemon` are its parts."""

    def __init__(self, profile: Profile, *, clock: Callable[[], datetime] | None = None) -> None:
        self.runtime = Runtime(profile, clock)
        self.protocol = ProtocolManager(self.runtime)
        self.daemon = Daemon(self.protocol)

    # --- the parts, by name ----------------------------------------------------------------------
    @property
    def profile(self) -> Profile:
        return self.runtime.profile

    @property
    def store(self) -> MessageStore:
        return self.runtime.store

    @property
    def transports(self) -> TransportTable:
        return self.runtime.transports

    @property
    def spooler(self) -> Spooler:
        return self.runtime.spooler

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.runtime.clock

    @property
    def mode(self) -> Mode:
        return self.runtime.mode

    @property
    def online_stability_seconds(self) -> float:
        return online_stability_seconds(self.runtime.profile)

    # --- transports --------------------------------------------------------------------------------
    async def enum_adr_types(self) -> list[str]:
        await self.protocol.ensure_logged_on()
        return self.runtime.transports.enum_adr_types()

    async def route(self, addresses: Iterable[ParsedAddress]) -> list[RouteAnswer]:
        await self.protocol.ensure_logged_on()
        router = self.runtime.transports.router()
        answers = []
        for p in addresses:
            plan = router.route(p.address_type, None, p.email_address)
            answers.append(RouteAnswer(p, plan.offers, plan.skipped))
        return answers

    async def deliver(self, limit: int | None = None, stop: asyncio.Event | None = None) -> PassSummary:
        await self.protocol.ensure_logged_on()
        return await self.runtime.spooler.process_due(limit, stop=stop)

    async def status(self) -> list[StatusRow]:
        await self.protocol.ensure_logged_on()
        return self.runtime.status_table()

    async def status_report(self, *, here: bool = False, daemon_here: bool = False) -> StatusReport:
        return await status_report(
            self.runtime.store,
            self.runtime.profile.directory,
            lambda: self.runtime.mode,
            self.status,
            here=here,
            daemon_here=daemon_here,
        )

    # --- the mode, Send/Receive, inbound -------------------------------------------------------------
    async def set_mode(self, mode: Mode) -> None:
        self.runtime.check_open()
        await self.protocol.set_mode(mode)

    async def send_receive(self, group: str | None = None, **kw: Any) -> SendReceiveSummary:
        await self.protocol.ensure_logged_on()
        return await self.protocol.send_receive(group, **kw)

    async def flush(self, transport: str, stop: asyncio.Event | None = None) -> SendReceiveSummary:
        """Deliver everything waiting for one transport now (postqueue -f for one transport)."""
        await self.protocol.ensure_logged_on()
        return await self.protocol.flush_transport(self.runtime.transports.by_name(transport), stop=stop)

    async def receive(self) -> Received:
        await self.protocol.ensure_logged_on()
        return await self.protocol.receive_all()

    async def validate_state(self) -> None:
        await self.protocol.validate_state()

    # --- the spooler daemon ------------------------------------------------------------------------------
    async def run_daemon(
        self,
        stop: asyncio.Event,
        on_pass: Callable[[PassSummary], None] | None = None,
        serving: Serving | None = None,
    ) -> None:
        await self.protocol.ensure_logged_on()
        if serving is None:
            await self.daemon.run(stop, on_pass=on_pass)
            return
        async with serving.running(self.protocol, stop):
            await self.daemon.run(stop, on_pass=on_pass)

    async def run_listener(self, stop: asyncio.Event, serving: Serving) -> None:
        """The SMTP submission listener alone (`postroom serve smtp`), until `stop` is set."""
        await self.protocol.ensure_logged_on()
        async with serving.running(self.protocol, stop):
            await stop.wait()

    def daemon_pid(self) -> int | None:
        """The pid of the spooler daemon running on this profile, if any (its pid file's lock says so)."""
        return running_daemon(self.runtime.profile.directory)

    def daemon_pid_file(self, force: bool = False) -> DaemonPidFile:
        return DaemonPidFile(self.runtime.profile.directory, force)

    # --- the profile: services, transport order, groups -------------------------------------------------
    def add_service(
        self,
        kind: str,
        name: str,
        options: Mapping[str, Any],
        *,
        prefer_last: bool | None,
        call_when_offline: bool,
        poll_seconds: float | None,
        policy: Mapping[str, Any],
    ) -> Service:
        self.runtime.check_open()
        profile = self.runtime.profile
        service = profile.add_service(
            kind,
            name,
            dict(options),
            prefer_last=prefer_last,
            call_when_offline=call_when_offline,
            **({} if poll_seconds is None else {"poll_seconds": poll_seconds}),
        )
        service.policy = dict(policy)
        try:
            self._check_setup(service)
        except MAPIError:
            profile.remove_service(service.name)
            raise
        self.save_profile()
        return service

    def configure_service(
        self,
        name: str,
        *,
        options: Mapping[str, Any] | None,
        policy: Mapping[str, Any] | None,
        call_when_offline: bool | None,
        poll_seconds: float | None,
    ) -> Service:
        self.runtime.check_open()
        service = self.runtime.profile.service(name)
        kind = provider_class(service.kind)
        checked = kind.validate_options(dict(options)) if options is not None else service.options
        if poll_seconds is not None and poll_seconds <= 0:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "poll_seconds must be positive")
        self._check_setup(replace(service, options=checked))
        service.options = checked
        if policy is not None:
            service.policy = dict(policy)
        if call_when_offline is not None:
            service.call_when_offline = call_when_offline
        if poll_seconds is not None:
            service.poll_seconds = poll_seconds
        self.save_profile()
        return service

    def _check_setup(self, service: Service) -> None:
        problems = provider_class(service.kind).setup_problems(service.options, self.runtime.profile.directory)
        if problems:
            raise MAPIError(
                HResult.MAPI_E_UNCONFIGURED, f"transport {service.name!r} would not work here: {'; '.join(problems)}"
            )

    def remove_service(self, name: str) -> Service:
        self.runtime.check_open()
        service = self.runtime.profile.remove_service(name)
        self.save_profile()
        return service

    def set_transport_order(self, transports: Sequence[str | bytes]) -> None:
        self.runtime.check_open()
        self.runtime.profile.set_transport_order(transports)
        self.save_profile()

    def reset_transport_order(self) -> None:
        self.runtime.check_open()
        self.runtime.profile.reset_transport_order()
        self.save_profile()

    def groups(self) -> list[SendReceiveGroup]:
        return load_groups(self.runtime.profile)

    def group(self, name: str | None = None) -> SendReceiveGroup:
        return find_group(self.runtime.profile, name or DEFAULT_GROUP)

    def edit_group(
        self, name: str, *, transports: Sequence[str] | None, online: GroupChange, offline: GroupChange
    ) -> tuple[SendReceiveGroup, bool]:
        self.runtime.check_open()
        edited = edit_group(self.runtime.profile, name, transports=transports, online=online, offline=offline)
        self.save_profile()
        return edited

    def remove_group(self, name: str) -> SendReceiveGroup:
        self.runtime.check_open()
        removed = remove_group(self.runtime.profile, name)
        self.save_profile()
        return removed

    async def place_waiting(self) -> None:
        """The routing may have changed here (the order, a service added, removed or reconfigured):
        move the recipients that wait now, so that `queue`, `show`, `flush` and Send/Receive see the
        transport routing gives them at once. The routing is known only from logons, so the
        transports are logged on in a table of their own, without connecting, and off again: this
        session's own logon (and what a new one starts, like waking what waits when online) is
        left for its next use, as for any change of the profile. The change is saved already: a
        store that cannot be reached now leaves the move to the next logon."""
        runtime = self.runtime
        runtime.check_open()
        table = TransportTable(runtime.profile, runtime.store.connection_slots)
        await table.logon_all(LogonFlags.NO_DIALOG | LogonFlags.NO_CONNECT)
        try:
            runtime.place_waiting(table)
        except StoreUnavailable as exc:
            log.warning("waiting recipients are moved at the next logon: %s", exc.message)
        finally:
            await table.logoff_all()

    def save_profile(self) -> None:
        """Save the profile and tell a running spooler daemon; the next use logs on again with it."""
        self.runtime.check_open()
        self.runtime.profile.save()
        self.protocol.configuration_changed()

    # --- reports ------------------------------------------------------------------------------------------
    def recipient_report(self, message_id: int) -> list[RecipientReport]:
        return recipient_report(self.runtime.store, message_id)

    def delivery_report(
        self, message_id: int, recipients: Sequence[Recipient], summary: PassSummary
    ) -> list[RecipientReport]:
        result = next((m for m in summary.messages if m.message_id == message_id), None)
        return delivery_report(self.runtime.store, message_id, recipients, result)

    def status_table(self) -> list[StatusRow]:
        return self.runtime.status_table()

    def publish_status(self) -> None:
        self.runtime.publish_status()

    # --- the end ------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.runtime.closed

    async def close(self) -> None:
        await self.runtime.close()
