"""The runtime of one logon: the profile, the open message store, the transport table, the spooler,
the clock and the mode, held together.

The runtime says what the mode allows (which transports may be called now, and with which logon
flags) but never changes the mode: the protocol manager (protocol.py) is its only writer. The
face (session.py) and the protocol manager share this one object, so neither reaches into the
other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn, cast

from ..mapi.codes import HResult, MAPIError
from ..mapi.flags import LogonFlags, ResourceMethods, ResourceType, StatusCode
from ..profile import Mode, Profile
from ..spooler import LoadedTransport, Spooler, TransportTable
from ..spooler.outbound import SpoolerSettings
from ..spooler.reroute import place_waiting
from ..spooler.spooler import DEFAULT_CONCURRENCY
from ..store import MessageStore, WaitKind, open_store
from ..transports.spi import StatusRow, status_row_dict
from .eventloop import running_loop_kind

#: How long the connection must have stayed up before going online flushes the Outbox.
DEFAULT_STABILITY_SECONDS = 5.0


def setting_number(profile: Profile, key: str, default: int | float) -> int:
    """A numeric [profile] setting as int; MAPI_E_CORRUPT_DATA when it is not a number."""
    value = profile.settings.get(key, default)
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"{type(value).__name__} is not a number")
        return int(float(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise MAPIError(
            HResult.MAPI_E_CORRUPT_DATA, f"{profile.path}: {key} = {value!r} is not a number ({exc})"
        ) from exc


def online_stability_seconds(profile: Profile) -> float:
    """The stability window: going online flushes the Outbox once the connection has stayed up this
    long (`online_stability_seconds`), so a short blip sends and fails nothing."""
    return float(profile.settings.get("online_stability_seconds", DEFAULT_STABILITY_SECONDS))


class _ClosedStore:
    """What a closed logon has in place of its store: every use is MAPI_E_END_OF_SESSION."""

    def __getattr__(self, name: str) -> NoReturn:
        raise MAPIError(HResult.MAPI_E_END_OF_SESSION, "the session is closed; log on again")


class Runtime:
    """One logon's profile, store, transports, spooler and clock."""

    def __init__(self, profile: Profile, clock: Callable[[], datetime] | None = None) -> None:
        self.profile = profile
        self.clock = clock or (lambda: datetime.now(UTC))
        for key, default in (("spooler_concurrency", DEFAULT_CONCURRENCY), ("online_stability_seconds", 0.0)):
            setting_number(profile, key, default)  # refuse a bad value before opening anything
        try:
            self.store: MessageStore = open_store(
                profile.store_url or profile.store_path, password_env=profile.store_password_env
            )
        except (OSError, sqlite3.DatabaseError) as exc:  # `store` names a directory, or not a database
            code = HResult.MAPI_E_NO_ACCESS if isinstance(exc, OSError) else HResult.MAPI_E_CORRUPT_DATA
            raise MAPIError(code, f"cannot open the message store {str(profile.store_path)!r}: {exc}") from exc
        #: Transports a Send/Receive (or a flush) connects and may call now, whatever the mode.
        self.flushing: set[str] = set()
        self.transports = TransportTable(profile, self.store.connection_slots)
        self.spooler = self._new_spooler()
        #: The next use logs on again (the profile changed, or ValidateState asked for it).
        self.needs_relogon = False
        #: The signature of the routing this process last placed waiting recipients by (reroute.py).
        self.routing_seen: str | None = None
        self.closed = False

    # --- the mode: what it allows --------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return self.profile.mode

    @property
    def offline(self) -> bool:
        return self.mode is Mode.OFFLINE

    def may_call(self, t: LoadedTransport) -> bool:
        """Whether the spooler may pass messages to this transport now."""
        return not self.offline or t.service.call_when_offline or t.name in self.flushing

    def may_call_now(self, table: TransportTable) -> Callable[[str], bool]:
        """may_call by transport name, for the transports of `table`."""
        return lambda name: self.may_call(table.by_name(name))

    def place_waiting(self, table: TransportTable | None = None) -> None:
        """Move the recipients that wait to the transports the routing of `table` (default: this
        runtime's, logged on) gives them, if that routing changed (spooler/reroute.py)."""
        table = table or self.transports
        self.routing_seen = place_waiting(
            self.store, table, self.may_call_now(table), self.clock(), seen=self.routing_seen
        )

    def logon_flags(self, t: LoadedTransport) -> LogonFlags:
        """Offline transports make no connections, except those marked call_when_offline."""
        flags = LogonFlags.NO_DIALOG
        if self.offline and not t.service.call_when_offline and t.name not in self.flushing:
            flags |= LogonFlags.NO_CONNECT
        return flags

    # --- transports and spooler ----------------------------------------------------------------
    def _new_spooler(self, previous: Spooler | None = None) -> Spooler:
        concurrency = (
            previous.concurrency
            if previous
            else setting_number(self.profile, "spooler_concurrency", DEFAULT_CONCURRENCY)
        )
        return Spooler(
            self.store,
            self.transports,
            clock=self.clock,
            owner=previous.owner if previous else None,
            may_call=self.may_call,
            settings=SpoolerSettings.from_profile(self.profile.settings),
            concurrency=concurrency,
        )

    def renew(self) -> None:
        """A new transport table and spooler for the profile as it is now (the spooler keeps its name
        and concurrency); the caller logs the old transports off first."""
        self.transports = TransportTable(self.profile, self.store.connection_slots)
        self.spooler = self._new_spooler(self.spooler)

    # --- the status table ----------------------------------------------------------------------
    def status_table(self) -> list[StatusRow]:
        """The status table: the subsystem, the spooler, then one row per transport (§9.1)."""
        waiting = self.store.count_waiting(WaitKind.SEND_RECEIVE)
        subsystem = StatusRow(
            "MAPI subsystem",
            "postroom",
            int(ResourceType.SUBSYSTEM),
            StatusCode.AVAILABLE,
            f"profile {self.profile.name}",
        )
        offline = self.offline
        loop = running_loop_kind()
        spooler = StatusRow(
            "MAPI spooler",
            "postroom spooler",
            int(ResourceType.SPOOLER),
            StatusCode.OFFLINE if offline else StatusCode.AVAILABLE,
            ("offline" + (f", {waiting} message(s) waiting for Send/Receive" if waiting else ""))
            if offline
            else "online",
            resource_methods=ResourceMethods.FLUSH_QUEUES | ResourceMethods.VALIDATE_STATE,
        )
        if loop is not None:  # the daemon's row says whether it runs on uvloop (engine/eventloop.py)
            spooler.status_string += f"; event loop {loop}"
        return [subsystem, spooler, *(t.status for t in self.transports.transports)]

    def publish_status(self) -> None:
        """Write the status table into the store so other processes (`postroom status`) see it."""
        rows = [(r.display_name, status_row_dict(r)) for r in self.status_table()]
        self.store.save_status_rows(self.spooler.owner, rows, self.clock())

    # --- the end -------------------------------------------------------------------------------
    def check_open(self) -> None:
        if self.closed:
            raise MAPIError(HResult.MAPI_E_END_OF_SESSION, "the session is closed; log on again")

    async def close(self) -> None:
        """Log off and close the store, once; afterwards every use is MAPI_E_END_OF_SESSION."""
        if self.closed:
            return
        try:
            if self.transports.logged_on:
                await self.transports.logoff_all()
        finally:
            self.closed = True
            store, self.store = self.store, cast(MessageStore, _ClosedStore())
            store.close()
