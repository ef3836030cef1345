"""Per-transport delivery policy: retry backoff, circuit breaker, throttles.

A transport's own "wait n seconds" is honoured exactly. Otherwise, retries back off
exponentially with jitter, between a minimum and a maximum: Postfix's shape by default
(300 s, doubling, at most 4000 s), so a server answering 4xx for five days costs about a
hundred tries per message, not seven thousand. A transport with several
network errors in a row is paused as a whole (the circuit breaker) instead of being
hammered by every message; after a while one message probes it. Throttles make excess
messages wait for a free slot; that is not an error.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..mapi.codes import HResult, MAPIError

POLICY_HELP: dict[str, str] = {
    "retry_min_seconds": "first retry delay when the transport gives none (default 300)",
    "retry_max_seconds": "longest retry delay (default 4000)",
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
    retry_min_seconds: float = 300.0
    retry_max_seconds: float = 4000.0
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

    def throttle_limits(self) -> list[tuple[int, float]]:
        """(at most N messages, per W seconds) pairs that are set."""
        pairs = [(self.max_per_minute, 60.0), (self.max_per_hour, 3600.0), (self.max_per_day, 86400.0)]
        return [(n, w) for n, w in pairs if n > 0]


# --- the circuit breaker, as pure functions of the state kept in the store ------------------------
#
# The state is shared by every spooler process on the store (store.update_breaker_state runs these
# inside one transaction): {"failures": n, "last_error": text, "open_until": epoch,
# "probe_owner": spooler, "probe_until": epoch}. {} means closed.

BreakerState = dict[str, Any]


def breaker_after_error(state: BreakerState, now: float, policy: DeliveryPolicy, text: str, owner: str) -> BreakerState:
    """Count a network error; open (or re-open, after a failed probe) the breaker at the threshold."""
    failures = int(state.get("failures", 0)) + 1
    new: BreakerState = {k: v for k, v in state.items() if k not in ("probe_owner", "probe_until")}
    new.update({"failures": failures, "last_error": text})
    failed_probe = state.get("probe_owner") == owner
    if policy.breaker_threshold and (failures >= policy.breaker_threshold or failed_probe):
        new["open_until"] = now + policy.breaker_seconds
    return new


def breaker_blocked_until(state: BreakerState, now: float) -> float | None:
    """While open: when it may be probed; None when closed (or the probe time has come)."""
    until = state.get("open_until")
    if until is None or now >= float(until):
        return None
    return float(until)


def breaker_probe(state: BreakerState, now: float, owner: str, probe_seconds: float) -> BreakerState | None:
    """Claim the single probe of an open breaker whose rest is over (None: someone else probes, or
    the breaker closed or opened again meanwhile: the state in the store decides, not a stale copy)."""
    if state.get("open_until") is None or now < float(state["open_until"]):
        return None
    if state.get("probe_owner") and float(state.get("probe_until", 0)) > now and state["probe_owner"] != owner:
        return None
    return {**state, "probe_owner": owner, "probe_until": now + probe_seconds}


def breaker_closed(state: BreakerState) -> BreakerState | None:
    """After a success: closed ({}), or None when it was closed already (nothing to write)."""
    return {} if state else None


def check_policy(options: Mapping[str, Any]) -> dict[str, Any]:
    """The policy settings given, checked as DeliveryPolicy.from_options checks them, as numbers of
    the right type (MAPI_E_INVALID_PARAMETER for an unknown key or a bad value)."""
    policy = DeliveryPolicy.from_options(options)
    return {key: getattr(policy, key) for key in options}
