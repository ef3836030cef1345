"""Driving a transport through the SPI directly, without a session."""

from __future__ import annotations

from typing import Any


class FakeSupport:
    """IMAPISupport for a transport under test: records what it tells the spooler."""

    def __init__(self) -> None:
        self.notifications: list[Any] = []

    def spooler_notify(self, flags: Any, data: Any = None) -> None:
        self.notifications.append((flags, data))

    def register_preprocessor(
        self, preprocessor: Any, *, address_type: str | None = None, uid: bytes | None = None
    ) -> None:
        pass

    def spooler_yield(self) -> bool:
        return False
