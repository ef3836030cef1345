"""Driving a transport through the SPI directly, without a session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from postroom.mapi.entryid import MAPIUID
from postroom.store.slots import LocalSlots
from postroom.transports.spi import ProviderContext


class FakeSupport:
    """IMAPISupport for a transport under test: records what it tells the spooler."""

    def __init__(self) -> None:
        self.notifications: list[Any] = []
        self.slots = LocalSlots()

    def spooler_notify(self, flags: Any, data: Any = None) -> None:
        self.notifications.append((flags, data))

    def register_preprocessor(
        self, preprocessor: Any, *, address_type: str | None = None, uid: bytes | None = None
    ) -> None:
        pass

    def spooler_yield(self) -> bool:
        return False

    def acquire_connection_slot(self, limit: int) -> int | None:
        return self.slots.try_acquire("transport", limit)

    def release_connection_slot(self, slot: int) -> None:
        self.slots.release("transport", slot)

    def wait_for_connection_slot(self, waiting: bool) -> None:
        self.slots.set_waiting("transport", waiting)

    def should_give_back_connection_slot(self, limit: int) -> bool:
        return self.slots.should_give_back("transport", limit)


def provider_context(kind: str, service_name: str, options: dict[str, Any], profile_dir: Path) -> ProviderContext:
    """The context a transport provider of `kind` is made with, as the spooler gives it, with a FakeSupport."""
    return ProviderContext(
        service_name=service_name,
        kind=kind,
        provider_uid=MAPIUID(bytes(range(16))),
        options=options,
        profile_dir=profile_dir,
        support=FakeSupport(),
    )
