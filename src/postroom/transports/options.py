"""Checking transport options when a service is added: one vocabulary of clear errors.

Every problem is a MAPIError(MAPI_E_INVALID_PARAMETER) that names the option and the value.
"""

from __future__ import annotations

import math
import os
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
