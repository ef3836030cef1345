"""A clock the test moves by hand: timing rules are tested without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    def __init__(self, start: datetime = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float | timedelta) -> None:
        self.now += seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
