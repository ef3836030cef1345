"""Checking transport options when a service is added: one vocabulary of clear errors.

Every problem with an option's value is a MAPIError(MAPI_E_INVALID_PARAMETER) that names the
option and the value. Problems of the surroundings an option names (an unset variable, an
unreadable file) are MAPI_E_UNCONFIGURED: `setup_problems` finds them when a service is added
or changed, and a transport meets them again at delivery, where its messages then wait.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..mapi.codes import HResult, MAPIError


def invalid(message: str) -> MAPIError:
    return MAPIError(HResult.MAPI_E_INVALID_PARAMETER, message)


def string_list(name: str, value: Any) -> list[str]:
    """A list of non-empty strings from a list/tuple of strings or a comma-separated string."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
        for item in items:
            if not isinstance(item, str):
                raise invalid(f"option {name!r}: every entry must be a string, not {item!r}")
    else:
        raise invalid(f"option {name!r} must be a list of strings or a comma-separated string, not {value!r}")
    out = [item.strip() for item in items if item.strip()]
    if not out:
        raise invalid(f"option {name!r} must name at least one value")
    return out


def text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"option {name!r} must be a non-empty string, not {value!r}")
    text: str = value.strip()
    if any(not c.isprintable() for c in text):
        raise invalid(f"option {name!r} contains a control character")
    return text


def token(name: str, value: Any) -> str:
    """A string without white space (a host name, a user name, a variable name)."""
    cleaned = text(name, value)
    if any(c.isspace() for c in cleaned):
        raise invalid(f"option {name!r} must not contain white space: {cleaned!r}")
    return cleaned


def number(name: str, value: Any, *, integer: bool = False) -> float:
    what = "a whole number" if integer else "a number of seconds"
    if isinstance(value, bool):
        raise invalid(f"option {name!r} must be {what}, not {value!r}")
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise invalid(f"option {name!r} must be {what}, not {value!r}") from None
    if not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        raise invalid(f"option {name!r} must be {what}, not {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise invalid(f"option {name!r} must be positive, not {value!r}")
    return number


def boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise invalid(f"option {name!r} must be true or false, not {value!r}")


def path(name: str, value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    cleaned = text(name, value)
    if "\0" in cleaned:
        raise invalid(f"option {name!r} contains a NUL character")
    return cleaned


# --- what every transport that talks to a server takes ----------------------------------------------


def server(
    options: Mapping[str, Any],
    *,
    security_modes: Sequence[str],
    default_security: str,
    default_ports: Mapping[str, int],
    host_missing: str,
) -> dict[str, Any]:
    """`host` (required: `host_missing` says what it is), `security` and `port` (its default by security)."""
    if "host" not in options:
        raise invalid(host_missing)
    out: dict[str, Any] = {"host": token("host", options["host"])}
    security = str(options.get("security", default_security)).strip().lower()
    if security not in security_modes:
        raise invalid(f"option 'security' must be one of {', '.join(security_modes)}, not {options['security']!r}")
    out["security"] = security
    port = options.get("port", default_ports[security])
    port_number = number("port", port, integer=True)
    if port_number > 65535:
        raise invalid(f"option 'port' must be a port number (1-65535), not {port!r}")
    out["port"] = int(port_number)
    return out


def password_source(options: Mapping[str, Any]) -> dict[str, Any]:
    """`password_env` or `password_file`, never both: where the password is (it is never an option)."""
    if "password_env" in options and "password_file" in options:
        raise invalid("options 'password_env' and 'password_file' exclude each other: give one of them")
    if "password_env" in options:
        return {"password_env": token("password_env", options["password_env"])}
    if "password_file" in options:
        return {"password_file": path("password_file", options["password_file"])}
    return {}


def tls_checks(options: Mapping[str, Any], security: str, security_modes: Sequence[str]) -> dict[str, Any]:
    """`verify_tls` (default true), and `ca_file`, which needs a security mode with TLS."""
    out: dict[str, Any] = {"verify_tls": boolean("verify_tls", options.get("verify_tls", True))}
    if "ca_file" in options:
        if security == "none":
            with_tls = " or ".join(repr(mode) for mode in security_modes if mode != "none")
            raise invalid(f"option 'ca_file' needs security {with_tls}")
        out["ca_file"] = path("ca_file", options["ca_file"])
    return out


def refuse_password(options: Mapping[str, Any]) -> None:
    """A password never goes into the profile: an option `password` is refused, saying where to put it."""
    if "password" in options:
        raise invalid(
            "option 'password' is not accepted: a password never goes into the profile. Put it in an "
            "environment variable and name that in 'password_env', or in a file readable only by you "
            "and name that in 'password_file'"
        )


class Secret:
    """Holds the password; never shows it in a repr or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<password hidden>"

    __str__ = __repr__


def read_password(password_env: str | None, password_file: Path | None) -> str:
    """A secret from the environment variable or the file the options name (never from the profile).

    MAPI_E_FAILONEPROVIDER when it cannot be had: the transport is skipped for the session.
    """
    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise MAPIError(
                HResult.MAPI_E_FAILONEPROVIDER,
                f"the environment variable {password_env} (option 'password_env') is not set",
            )
        return password
    assert password_file is not None
    try:
        text = password_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise MAPIError(
            HResult.MAPI_E_FAILONEPROVIDER,
            f"cannot read the password file {password_file} (option 'password_file'): {why}",
        ) from None
    return text.rstrip("\r\n")


def client_tls_context(security: str, ca_file: Path | None, verify_tls: bool) -> ssl.SSLContext | None:
    """The client TLS context: certificate and host name checks on unless verify_tls is false."""
    if security == "none":
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise MAPIError(
                HResult.MAPI_E_FAILONEPROVIDER, f"cannot load the CA file {ca_file} (option 'ca_file'): {exc}"
            ) from None
    if not verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def resolve_path(value: str | None, profile_dir: Path) -> Path | None:
    """A path option: `~` expanded, relative to the profile directory."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else profile_dir / path


def unconfigured(message: str) -> MAPIError:
    return MAPIError(HResult.MAPI_E_UNCONFIGURED, message)


def setup_problems(options: dict[str, Any], profile_dir: Path) -> list[str]:
    """What stops the password and CA options of checked `options` from working on this machine now."""
    problems: list[str] = []
    password_file = resolve_path(options.get("password_file"), profile_dir)
    if options.get("username") is not None and (options.get("password_env") or password_file):
        try:
            read_password(options.get("password_env"), password_file)
        except MAPIError as exc:
            problems.append(exc.message)
    ca_file = resolve_path(options.get("ca_file"), profile_dir)
    if ca_file is not None and options.get("security", "none") != "none":
        try:
            client_tls_context(str(options.get("security")), ca_file, True)
        except MAPIError as exc:
            problems.append(exc.message)
    return problems
