"""Send/Receive groups and their rules: which transports a Send/Receive flushes, and how, online
and offline (Outlook's Send/Receive groups).

A group names transports (or all of them) and, for each mode, whether an explicit Send/Receive
includes it, whether it sends and receives, and how often the spooler daemon runs it by itself.
The group "All Accounts" (every transport) always exists: a profile may redefine it, never
remove it. Groups live in the profile (`[[sendreceive_group]]`); this module reads, edits and
schedules them, so the face and every front end share one set of rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..mapi.codes import HResult, MAPIError
from ..profile import Mode, Profile

DEFAULT_GROUP = "All Accounts"
MAX_EVERY_MINUTES = 525_600.0  # a year: beyond it a schedule means nothing (and `inf` breaks the timer)
#: What `transports` may say instead of names: every transport of the profile.
EVERY_TRANSPORT = ("all", "*")


@dataclass
class GroupSettings:
    """A group's behaviour in one mode (online or offline)."""

    include: bool = True  # part of an explicit Send/Receive (F9)
    send: bool = True
    receive: bool = True
    every_minutes: float = 0.0  # automatic Send/Receive every n minutes; 0 = never

    def __post_init__(self) -> None:
        every = self.every_minutes
        if not math.isfinite(every) or not 0 <= every <= MAX_EVERY_MINUTES:
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER,
                f"a Send/Receive schedule is 0 (never) to {MAX_EVERY_MINUTES:g} minutes (a year), not {every!r}",
            )

    def to_toml(self) -> dict[str, Any]:
        return {
            "include": self.include,
            "send": self.send,
            "receive": self.receive,
            "every_minutes": self.every_minutes,
        }

    @classmethod
    def from_toml(cls, data: Any, default: GroupSettings) -> GroupSettings:
        if data is None:
            return GroupSettings(**default.to_toml())
        if not isinstance(data, dict):
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "group settings must be a table")
        try:
            every = float(data.get("every_minutes", default.every_minutes))
        except (TypeError, ValueError) as exc:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"every_minutes: {exc}") from exc
        return cls(
            include=bool(data.get("include", default.include)),
            send=bool(data.get("send", default.send)),
            receive=bool(data.get("receive", default.receive)),
            every_minutes=every,
        )


@dataclass
class SendReceiveGroup:
    """A named set of transports with online and offline settings (Outlook's Send/Receive groups)."""

    name: str
    transports: list[str] | None = None  # None: every transport of the profile
    online: GroupSettings = field(default_factory=lambda: GroupSettings(every_minutes=5.0))
    offline: GroupSettings = field(default_factory=GroupSettings)

    def settings(self, mode: Mode) -> GroupSettings:
        return self.online if mode == Mode.ONLINE else self.offline

    def members(self, profile: Profile) -> list[str]:
        """The group's transports, in transport order."""
        order = [s.name for s in profile.transport_order()]
        if self.transports is None:
            return order
        wanted = {t.lower() for t in self.transports}
        return [n for n in order if n.lower() in wanted]

    def to_toml(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "online": self.online.to_toml(), "offline": self.offline.to_toml()}
        if self.transports is not None:
            data["transports"] = list(self.transports)
        return data

    @classmethod
    def from_toml(cls, data: dict[str, Any]) -> SendReceiveGroup:
        base = cls(str(data.get("name", "")))
        if not base.name:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, "a [[sendreceive_group]] has no name")
        transports = data.get("transports")
        if transports is not None and (
            not isinstance(transports, list) or not all(isinstance(t, str) for t in transports)
        ):
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"group {base.name!r}: transports must be a list of names")
        return cls(
            name=base.name,
            transports=transports,
            online=GroupSettings.from_toml(data.get("online"), base.online),
            offline=GroupSettings.from_toml(data.get("offline"), base.offline),
        )


def load_groups(profile: Profile) -> list[SendReceiveGroup]:
    """The profile's groups; "All Accounts" (every transport) exists unless the profile redefines it."""
    groups = [SendReceiveGroup.from_toml(g) for g in profile.groups]
    if not any(g.name.lower() == DEFAULT_GROUP.lower() for g in groups):
        groups.insert(0, SendReceiveGroup(DEFAULT_GROUP))
    return groups


def save_group(profile: Profile, group: SendReceiveGroup) -> None:
    """Add or replace a group in the profile (the caller saves the profile)."""
    known = {s.name.lower() for s in profile.services}
    for t in group.transports or []:
        if t.lower() not in known:
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"group {group.name!r}: no transport named {t!r}")
    profile.groups = [g for g in profile.groups if str(g.get("name", "")).lower() != group.name.lower()]
    profile.groups.append(group.to_toml())


def find_group(profile: Profile, name: str) -> SendReceiveGroup:
    """The group of that name (case-insensitive); MAPI_E_NOT_FOUND naming the groups there are."""
    for g in load_groups(profile):
        if g.name.lower() == name.lower():
            return g
    known = ", ".join(g.name for g in load_groups(profile))
    raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no Send/Receive group named {name!r} (groups: {known})")


@dataclass(frozen=True)
class GroupChange:
    """The settings of one mode to change in a group; None leaves a setting as it is."""

    include: bool | None = None
    send: bool | None = None
    receive: bool | None = None
    every_minutes: float | None = None

    def applied_to(self, settings: GroupSettings) -> GroupSettings:
        return GroupSettings(
            include=settings.include if self.include is None else self.include,
            send=settings.send if self.send is None else self.send,
            receive=settings.receive if self.receive is None else self.receive,
            every_minutes=settings.every_minutes if self.every_minutes is None else self.every_minutes,
        )


def edit_group(
    profile: Profile,
    name: str,
    *,
    transports: Sequence[str] | None = None,
    online: GroupChange = GroupChange(),
    offline: GroupChange = GroupChange(),
) -> tuple[SendReceiveGroup, bool]:
    """Add a group, or change one (what is not given stays as it is); returns it, and whether it is
    new. `transports` names the group's transports, or is ["all"] (or ["*"]) for every transport of
    the profile, the default for a new group. An unknown transport is MAPI_E_NOT_FOUND. The caller
    saves the profile."""
    name = name.strip()
    if not name:
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "a group needs a name")
    existing = next((g for g in load_groups(profile) if g.name.lower() == name.lower()), None)
    base = existing or SendReceiveGroup(name)
    members = base.transports
    if transports is not None:
        names = [t.strip() for t in transports if t.strip()]
        if not names:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "--transports names no transport (or `all`)")
        members = None if len(names) == 1 and names[0].lower() in EVERY_TRANSPORT else names
    updated = SendReceiveGroup(
        name=base.name,
        transports=members,
        online=online.applied_to(base.online),
        offline=offline.applied_to(base.offline),
    )
    save_group(profile, updated)
    return updated, existing is None


def remove_group(profile: Profile, name: str) -> SendReceiveGroup:
    """Remove a group ("All Accounts" cannot be removed, only redefined: MAPI_E_NO_ACCESS); the
    caller saves the profile."""
    found = find_group(profile, name)
    if found.name.lower() == DEFAULT_GROUP.lower():
        raise MAPIError(
            HResult.MAPI_E_NO_ACCESS,
            f"the group {DEFAULT_GROUP!r} cannot be removed; change it with `postroom group add '{DEFAULT_GROUP}' …`",
        )
    profile.groups = [g for g in profile.groups if str(g.get("name", "")).lower() != found.name.lower()]
    return found


class GroupSchedule:
    """When each group's automatic Send/Receive runs next, in the current mode."""

    def __init__(self) -> None:
        self.next_run: dict[str, datetime] = {}

    def reset(self, groups: Iterable[SendReceiveGroup], mode: Mode, now: datetime) -> None:
        self.next_run = {}
        for g in groups:
            every = g.settings(mode).every_minutes
            if every > 0:
                self.next_run[g.name] = now + timedelta(minutes=every)

    def due(self, groups: Iterable[SendReceiveGroup], mode: Mode, now: datetime) -> list[SendReceiveGroup]:
        out = []
        for g in groups:
            at = self.next_run.get(g.name)
            if at is not None and now >= at:
                out.append(g)
                self.next_run[g.name] = now + timedelta(minutes=g.settings(mode).every_minutes)
        return out

    def next_time(self) -> datetime | None:
        return min(self.next_run.values(), default=None)
