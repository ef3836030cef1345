"""Profiles and message services (IProfAdmin / IMsgServiceAdmin).

A profile is a directory holding `profile.toml` (0600) and the message store. It names
message services; each service brings one transport provider with a stable provider
UID. The transport order defaults to the order in which transports were added, with
"prefer last" providers moved to the end; an explicit order must list every transport
exactly once (MsgServiceTransportOrder) and then overrides "prefer last".
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.container
import tomlkit.exceptions
import tomlkit.items
from platformdirs import user_data_dir

from .mapi.codes import HResult, MAPIError, NotFound
from .mapi.entryid import MAPIUID
from .store.urls import check_store_location, is_postgres_url, redact_url, url_password
from .transports.registry import provider_class


class Mode(StrEnum):
    """Whether transports may be called now (online) or wait for Send/Receive (offline)."""

    ONLINE = "online"
    OFFLINE = "offline"

    @classmethod
    def parse(cls, mode: object) -> Mode:
        """The mode a caller names; MAPI_E_INVALID_PARAMETER for anything else."""
        if mode not in tuple(cls):
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"mode is 'online' or 'offline', not {mode!r}")
        return cls(str(mode))


PROFILE_FILE = "profile.toml"
STORE_FILE = "store.sqlite"
SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_profile_dir() -> Path:
    """The profile used without --profile: POSTROOM_PROFILE, else the default one in the data directory."""
    return environment_profile_dir() or Path(user_data_dir("postroom", appauthor=False)) / "profiles" / "default"


def environment_profile_dir() -> Path | None:
    """The profile POSTROOM_PROFILE names, if set. Like --profile, it must exist: only the default
    profile in the data directory is created on first use, so a typo never makes a new, empty one."""
    env = os.environ.get("POSTROOM_PROFILE")
    return Path(env).expanduser() if env else None


@dataclass
class Service:
    """A message service with its transport provider."""

    name: str
    kind: str
    provider_uid: MAPIUID
    options: dict[str, Any] = field(default_factory=dict)
    prefer_last: bool = False
    #: Load at start-up and call even when offline (the option KB 317412's fix introduced).
    call_when_offline: bool = False
    #: How often a transport that asks to be polled (LOGON_SP_POLL) is polled.
    poll_seconds: float = 60.0
    #: Retry backoff, circuit breaker and throttles (see postroom.spooler.policy).
    policy: dict[str, Any] = field(default_factory=dict)

    def to_toml(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "provider_uid": bytes(self.provider_uid).hex(),
            "prefer_last": self.prefer_last,
            "call_when_offline": self.call_when_offline,
            "poll_seconds": self.poll_seconds,
            "policy": self.policy,
            "options": self.options,
        }

    @classmethod
    def from_toml(cls, data: Mapping[str, Any]) -> Service:
        try:
            return cls(
                name=str(data["name"]),
                kind=str(data["kind"]),
                provider_uid=MAPIUID.from_hex(str(data["provider_uid"])),
                options=dict(data.get("options", {})),
                prefer_last=bool(data.get("prefer_last", False)),
                call_when_offline=bool(data.get("call_when_offline", False)),
                poll_seconds=float(data.get("poll_seconds", 60.0)),
                policy=dict(data.get("policy", {})),
            )
        except KeyError as exc:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"a [[service]] lacks {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"a [[service]] has a bad value: {exc}") from exc


def _edited(path: Path, data: dict[str, Any]) -> str:
    """profile.toml as it is on disk, changed to hold `data`, keeping what a person wrote there.

    People edit profile.toml by hand and comment it; a `postroom service add` must not throw that
    away. So the file is read with tomlkit and only what differs is changed: a value that stays
    the same keeps its place, its comments and its formatting; a table or a service that stays
    keeps its comments while its changed keys are rewritten; new keys go at the end of their
    table. A file that is missing or cannot be read as TOML is written anew.
    """
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomlkit.exceptions.TOMLKitError):
        document = tomlkit.document()
    _merge_table(document, data)
    return tomlkit.dumps(document)


def _merge_table(table: Any, data: Mapping[str, Any]) -> None:
    for key in [k for k in table if k not in data]:
        del table[key]
    for key, value in data.items():
        if key not in table:
            _add(table, key, _toml_value(value))
        elif isinstance(value, Mapping) and isinstance(table[key], dict):
            _merge_table(table[key], value)
        elif _is_tables(value) and isinstance(table[key], tomlkit.items.AoT):
            _merge_tables(table, key, value)
        elif _plain(table[key]) != value:
            table[key] = _toml_value(value)


def _add(table: Any, key: str, item: Any) -> None:
    """A new key: a value goes after the table's last value, not after the blank line and the
    comment that introduce the next table; a table goes at the end."""
    values = [k for k, v in table.items() if not isinstance(v, dict | tomlkit.items.AoT)]
    container = table.value if isinstance(table, tomlkit.items.Table) else table
    if values and not isinstance(item, dict | tomlkit.items.AoT) and isinstance(container, tomlkit.container.Container):
        try:
            container._insert_after(values[-1], key, item)  # tomlkit has no public "insert after"
            return
        except (AttributeError, TypeError, tomlkit.exceptions.TOMLKitError):
            pass  # another tomlkit: at the end, which is still right, if less neat
    table[key] = item


def _merge_tables(table: Any, key: str, rows: list[Mapping[str, Any]]) -> None:
    """An array of tables ([[service]]): a row whose name was there before keeps its table (and its
    comments), in the new order; the others are new."""
    before = {str(t.get("name")): t for t in table[key]}
    names = [str(row.get("name")) for row in rows]
    if names == list(before) and len(names) == len(set(names)):
        for existing, row in zip(table[key], rows, strict=True):
            _merge_table(existing, row)
        return
    array = tomlkit.aot()
    for name, row in zip(names, rows, strict=True):
        existing = before.pop(name, None)
        if existing is not None:
            _merge_table(existing, row)
            array.append(existing)
        else:
            array.append(tomlkit.item(row))
    table[key] = array


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _plain(item: Any) -> Any:
    return item.unwrap() if hasattr(item, "unwrap") else item


def _toml_value(value: Any) -> Any:
    """`value` as tomlkit writes it: a list of tables as [[…]], anything else as tomlkit chooses."""
    if _is_tables(value):
        array = tomlkit.aot()
        for row in value:
            array.append(tomlkit.item(row))
        return array
    return tomlkit.item(value)


@dataclass
class Profile:
    """A profile directory: its settings, its services and the path of its store."""

    directory: Path
    name: str = "default"
    services: list[Service] = field(default_factory=list)
    explicit_order: list[MAPIUID] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)

    # --- files --------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.directory / PROFILE_FILE

    @property
    def store_url(self) -> str | None:
        """The PostgreSQL database when `store = "postgresql://…"` (None: the SQLite file store_path).

        The URL never holds the password: libpq reads it from PGPASSWORD, a pgpass file or a
        service file, or `store_password_env` names the environment variable that holds it.
        """
        configured = self.settings.get("store")
        if not is_postgres_url(configured):
            return None
        url = str(configured).strip()
        if url_password(url) is not None:
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER,
                f"{self.path}: the store URL {redact_url(url)} contains a password; remove it and put the password "
                "in PGPASSWORD, a pgpass or service file, or an environment variable named by store_password_env",
            )
        return url

    @property
    def store_password_env(self) -> str | None:
        """The environment variable holding the PostgreSQL store's password, if the profile names one."""
        name = self.settings.get("store_password_env")
        return str(name) if name else None

    @property
    def store_path(self) -> Path:
        """The SQLite file: `store` in the profile (relative to the profile directory), or store.sqlite.

        A libpq connection string there is refused (MAPI_E_INVALID_PARAMETER), never taken for a file name."""
        configured = self.settings.get("store", STORE_FILE)
        try:
            check_store_location(str(configured))
        except MAPIError as exc:
            raise MAPIError(exc.code, f"{self.path}: {exc.message}") from None
        p = Path(str(configured)).expanduser()
        return p if p.is_absolute() else self.directory / p

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Profile:
        d = Path(directory).expanduser()
        path = d / PROFILE_FILE
        if not path.is_file():
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no profile at {d} (create one with `postroom init {d}`)")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"cannot read {path}: {exc}") from exc
        profile = data.get("profile", {})
        if not isinstance(profile, dict):
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"{path}: [profile] must be a table")
        tables = data.get("service", [])
        if not isinstance(tables, list) or not all(isinstance(s, dict) for s in tables):
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"{path}: [[service]] must be tables")
        services = [Service.from_toml(s) for s in tables]
        order = profile.pop("transport_order", None)
        if order is not None and not isinstance(order, list):
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"{path}: transport_order must be a list of provider UIDs")
        explicit = [MAPIUID.from_hex(str(u)) for u in order] if order is not None else None
        name = str(profile.pop("name", d.name))
        groups = data.get("sendreceive_group", [])
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"{path}: [[sendreceive_group]] must be tables")
        p = cls(directory=d, name=name, services=services, explicit_order=explicit, settings=profile, groups=groups)
        p._check_unique()
        return p

    def save(self) -> None:
        """Write profile.toml atomically, readable by the owner only (it may name secrets' files)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {"profile": {"name": self.name, **self.settings}}
        if self.explicit_order is not None:
            data["profile"]["transport_order"] = [bytes(u).hex() for u in self.explicit_order]
        data["service"] = [s.to_toml() for s in self.services]
        if self.groups:
            data["sendreceive_group"] = self.groups
        tmp = self.path.with_suffix(".toml.tmp")
        text = _edited(self.path, data)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    @classmethod
    def create(cls, directory: str | os.PathLike[str], *, with_defaults: bool = True) -> Profile:
        """A new profile; with the embedded defaults it has a `maildir` transport for localhost."""
        d = Path(directory).expanduser()
        if (d / PROFILE_FILE).exists():
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"a profile exists already at {d}")
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        p = cls(directory=d, name=d.name, settings={"store": STORE_FILE, "mode": Mode.ONLINE.value})
        if with_defaults:
            p.add_service("maildir", "local", {"root": "maildir", "domains": ["localhost"]})
        p.save()
        return p

    @classmethod
    def load_from_environment(cls) -> Profile:
        """The profile POSTROOM_PROFILE names; MAPI_E_NOT_FOUND, saying so, when there is none."""
        d = environment_profile_dir()
        assert d is not None
        try:
            return cls.load(d)
        except NotFound:
            raise MAPIError(
                HResult.MAPI_E_NOT_FOUND,
                f"POSTROOM_PROFILE names {d}, which holds no profile (create it with `postroom init {d}`, "
                "or unset POSTROOM_PROFILE to use the default profile)",
            ) from None

    @classmethod
    def open_or_create(cls, directory: str | os.PathLike[str] | None = None) -> Profile:
        """The named profile; the default one is created on first use, a named one (also through
        POSTROOM_PROFILE) must exist."""
        if directory is None and environment_profile_dir() is not None:
            return cls.load_from_environment()
        if directory is None:
            d = default_profile_dir()
            if not (d / PROFILE_FILE).exists():
                return cls.create(d)
            return cls.load(d)
        return cls.load(directory)

    # --- services ----------------------------------------------------------------------------
    def _check_unique(self) -> None:
        names: set[str] = set()
        for s in self.services:
            if s.name.lower() in names:
                raise MAPIError(HResult.MAPI_E_CORRUPT_DATA, f"{self.path}: service {s.name!r} appears twice")
            names.add(s.name.lower())

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name.lower() == name.lower():
                return s
        known = ", ".join(s.name for s in self.services) or "none"
        raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no service named {name!r} in this profile (services: {known})")

    def add_service(
        self,
        kind: str,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        prefer_last: bool | None = None,
        call_when_offline: bool = False,
        poll_seconds: float = 60.0,
    ) -> Service:
        if not SERVICE_NAME.match(name):
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER,
                f"invalid service name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)",
            )
        if any(s.name.lower() == name.lower() for s in self.services):
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"a service named {name!r} exists already")
        cls = provider_class(kind)
        checked = cls.validate_options(dict(options or {}))
        service = Service(
            name=name,
            kind=kind,
            provider_uid=MAPIUID.new(),
            options=checked,
            prefer_last=cls.prefer_last if prefer_last is None else prefer_last,
            call_when_offline=call_when_offline,
            poll_seconds=poll_seconds,
        )
        if poll_seconds <= 0:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "poll_seconds must be positive")
        self.services.append(service)
        if self.explicit_order is not None:
            # An explicit order stays complete: a new transport joins at the end.
            self.explicit_order.append(service.provider_uid)
        return service

    def remove_service(self, name: str) -> Service:
        service = self.service(name)
        self.services.remove(service)
        if self.explicit_order is not None:
            self.explicit_order = [u for u in self.explicit_order if u != service.provider_uid]
        return service

    # --- transport order ------------------------------------------------------------------------
    def transport_order(self) -> list[Service]:
        """The transports in the order the spooler offers recipients to them."""
        if self.explicit_order is not None:
            by_uid = {s.provider_uid: s for s in self.services}
            ordered = [by_uid[u] for u in self.explicit_order if u in by_uid]
            rest = [s for s in self.services if s not in ordered]
            return ordered + rest
        return [s for s in self.services if not s.prefer_last] + [s for s in self.services if s.prefer_last]

    def set_transport_order(self, transports: Sequence[str | bytes]) -> None:
        """MsgServiceTransportOrder: the complete list, each transport exactly once, by name or UID.

        A missing or repeated transport is a count mismatch (MAPI_E_BUSY, as documented);
        an unknown one is MAPI_E_NOT_FOUND.
        """
        uids: list[MAPIUID] = []
        for item in transports:
            uids.append(self._resolve_transport(item))
        seen: set[MAPIUID] = set()
        for uid in uids:
            if uid in seen:
                raise MAPIError(
                    HResult.MAPI_E_BUSY, f"transport {self._name_of(uid)!r} appears more than once in the order"
                )
            seen.add(uid)
        missing = [s.name for s in self.services if s.provider_uid not in seen]
        if missing:
            raise MAPIError(
                HResult.MAPI_E_BUSY,
                f"the transport order must list every transport exactly once; missing: {', '.join(missing)}",
            )
        self.explicit_order = uids

    def reset_transport_order(self) -> None:
        """Back to the default: order of addition, "prefer last" providers at the end."""
        self.explicit_order = None

    def _resolve_transport(self, item: str | bytes) -> MAPIUID:
        if isinstance(item, bytes):
            uid = MAPIUID(item)
            for s in self.services:
                if s.provider_uid == uid:
                    return uid
            raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no transport with provider UID {uid} in this profile")
        for s in self.services:
            if s.name.lower() == item.lower() or bytes(s.provider_uid).hex() == item.lower():
                return s.provider_uid
        known = ", ".join(s.name for s in self.services) or "none"
        raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no transport named {item!r} in this profile (transports: {known})")

    def _name_of(self, uid: MAPIUID) -> str:
        return next((s.name for s in self.services if s.provider_uid == uid), str(uid))

    @property
    def mode(self) -> Mode:
        """Online or offline (persisted; `postroom online` / `postroom offline`); online unless it says offline."""
        mode = str(self.settings.get("mode", Mode.ONLINE))
        return Mode(mode) if mode in tuple(Mode) else Mode.ONLINE

    def set_mode(self, mode: Mode | str) -> None:
        self.settings["mode"] = Mode.parse(mode).value

    def reload(self) -> Profile:
        """A fresh copy from disk (another process may have changed mode, services or order)."""
        return Profile.load(self.directory)
