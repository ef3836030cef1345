"""The users who may AUTH to the SMTP submission listener, kept hashed in the profile.

A password is never stored, only its scrypt hash (`scrypt$N$r$p$salt$hash`, base64), in the
profile's `[profile.listener_users]` table; profile.toml is 0600 anyway, but a copy of it (a
backup, a support ticket) must not give the passwords away. scrypt is memory-hard, so a stolen
hash costs an attacker as much per guess as it costs the listener per AUTH (about 50 ms).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping

from ..mapi.codes import HResult, MAPIError
from ..profile import Profile

USERS_KEY = "listener_users"
_N, _R, _P = 2**14, 8, 1
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")


def hash_password(password: str) -> str:
    """The scrypt hash of `password`, with a fresh salt, as one string."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: bytes, stored: str) -> bool:
    """Whether `password` matches the hash `stored` (compared in constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def listener_users(profile: Profile) -> Mapping[str, str]:
    """Name → hash of every listener user of the profile."""
    users = profile.settings.get(USERS_KEY, {})
    return {str(k): str(v) for k, v in users.items()} if isinstance(users, dict) else {}


def set_listener_user(profile: Profile, name: str, password: str) -> None:
    """Add a user, or give one a new password (the profile is not saved here)."""
    if not USER_NAME.match(name):
        raise MAPIError(
            HResult.MAPI_E_INVALID_PARAMETER,
            f"invalid listener user name {name!r}: use letters, digits and '_.@+-' (at most 128)",
        )
    if not password:
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"an empty password for listener user {name!r}")
    users = dict(listener_users(profile))
    users[name] = hash_password(password)
    profile.settings[USERS_KEY] = users


def remove_listener_user(profile: Profile, name: str) -> None:
    """Remove a user; MAPI_E_NOT_FOUND when there is none of that name."""
    users = dict(listener_users(profile))
    if name not in users:
        raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no listener user named {name!r}")
    del users[name]
    profile.settings[USERS_KEY] = users
