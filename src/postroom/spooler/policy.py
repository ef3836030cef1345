"""Per-transport delivery policy: retry backoff, circuit breaker, throttles.

A transport's own "wait n seconds" is honoured exactly. Otherwise, retries back off
exponentially with jitter, between a minimum and a maximum. A transport with several
network errors in a row is paused as a whole (the circuit breaker) instead of being
hammered by every message; after a while one message probes it. Throttles make excess
messages wait for a free slot; that is not an error.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..mapi.codes import HResult, MAPIError

POLICY_HELP: dict[str, str] = {
    "retry_min_seconds": "first retry delay when the transport gives none (default 60)",
    "retry_max_seconds": "longest retry delay (default 3600)",
    "retry_factor": "backoff growth per attempt (default 2)",
    "retry_jitter": "random spread of each delay, 0..1 (default 0.2)",
    "breaker_threshold": "consecutive network errors that pause the transport (default 5; 0 = never)",
    "breaker_seconds": "how long a paused transport rests before one message probes it (default 300)",
    "max_per_minute": "messages handed to the transport per minute (default unlimited)",
    "max_per_hour": "messages per hour (default unlimited)",
    "max_per_day": "messages per day (default unlimited)",
}


@dataclass(frozen=True)
class DeliveryPolicy:
    retry_min_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    retry_factor: float = 2.0
    retry_jitter: float = 0.2
    breaker_threshold: int = 5
    breaker_seconds: float = 300.0
    max_per_minute: int = 0
    max_per_hour: int = 0
    max_per_day: int = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> DeliveryPolicy:
        unknown = sorted(set(options) - set(POLICY_HELP))
        if unknown:
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER,
                f"unknown policy setting {unknown[0]!r} (known: {', '.join(sorted(POLICY_HELP))})",
            )
        values: dict[str, Any] = {}
        for key, value in options.items():
            kind = type(getattr(cls(), key))
            try:
                values[key] = kind(value)
            except (TypeError, ValueError) as exc:
                raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"policy {key}: {value!r} is not a number") from exc
            if values[key] < 0:
                raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"policy {key} cannot be negative")
        policy = cls(**values)
        if policy.retry_min_seconds > policy.retry_max_seconds:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "retry_min_seconds is larger than retry_max_seconds")
        if policy.retry_jitter > 1:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "retry_jitter is between 0 and 1")
        return policy

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number `attempt` (1-based): exponential, capped, with jitter."""
        base = self.retry_min_seconds * (self.retry_factor ** max(0, attempt - 1))
        base = min(base, self.retry_max_seconds)
        spread = (rng or random).uniform(-self.retry_jitter, self.retry_jitter)
        return max(self.retry_min_seconds * (1 - self.retry_jitter), min(self.retry_max_seconds, base * (1 + spread)))


@dataclass
class TransportHealth:
    """A transport's circuit breaker and throttle windows, in this spooler process."""

    policy: DeliveryPolicy
    consecutive_network_errors: int = 0
    open_until: datetime | None = None
    last_error: str = ""
    probing: bool = False
    sent: deque[datetime] = field(default_factory=deque)

    # Circuit breaker ------------------------------------------------------------------------
    def blocked_until(self, now: datetime) -> datetime | None:
        """When the breaker is open: the time of the next probe. One caller gets the probe slot."""
        if self.open_until is None:
            return None
        if now >= self.open_until and not self.probing:
            self.probing = True  # this message is the probe
            return None
        return max(self.open_until, now + timedelta(seconds=1))

    def network_error(self, now: datetime, text: str) -> bool:
        """Count a network error; True when this one opened (or re-opened) the breaker."""
        self.consecutive_network_errors += 1
        self.last_error = text
        threshold = self.policy.breaker_threshold
        if threshold and (self.probing or self.consecutive_network_errors >= threshold):
            self.open_until = now + timedelta(seconds=self.policy.breaker_seconds)
            self.probing = False
            return True
        return False

    def success(self) -> None:
        self.consecutive_network_errors = 0
        self.open_until = None
        self.probing = False
        self.last_error = ""

    @property
    def paused(self) -> bool:
        return self.open_until is not None

    # Throttles ------------------------------------------------------------------------------
    def throttle_wait(self, now: datetime) -> float:
        """Seconds until the transport may take another message (0: now)."""
        windows = [
            (self.policy.max_per_minute, timedelta(minutes=1)),
            (self.policy.max_per_hour, timedelta(hours=1)),
            (self.policy.max_per_day, timedelta(days=1)),
        ]
        longest = max((w for limit, w in windows if limit), default=None)
        if longest is None:
            return 0.0
        while self.sent and self.sent[0] <= now - longest:
            self.sent.popleft()
        wait = 0.0
        for limit, window in windows:
            if not limit:
                continue
            recent = [t for t in self.sent if t > now - window]
            if len(recent) >= limit:
                wait = max(wait, (recent[-limit] + window - now).total_seconds())
        return wait

    def record_send(self, now: datetime) -> None:
        if self.policy.max_per_minute or self.policy.max_per_hour or self.policy.max_per_day:
            self.sent.append(now)
