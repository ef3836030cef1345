"""Naming a message store: a postgresql:// URL or an SQLite file path, and the secrets a URL must not show.

A profile's `store` setting and the command line name a store; these helpers tell the two kinds
apart, refuse a libpq connection string where a name is expected, and keep passwords out of
messages, listings and the profile. They need no store, so a profile can use them without
opening one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..mapi.codes import HResult, MAPIError

#: The keywords of a libpq connection string ("host=db dbname=mail …"), to recognise one.
# fmt: off
LIBPQ_KEYWORDS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "require_auth", "channel_binding",
    "connect_timeout", "client_encoding", "options", "application_name", "fallback_application_name",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
    "replication", "gssencmode", "sslmode", "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword",
    "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service", "target_session_attrs",
    "load_balance_hosts",
})
# fmt: on
_CONNINFO_KEY = re.compile(r"(?:^|\s)([A-Za-z_]+)\s*=")


def _is_secret_key(key: str) -> bool:
    """`password`, `sslpassword` and any other parameter named like a password hold a secret."""
    return "password" in key.lower()


def is_postgres_url(target: object) -> bool:
    """Whether a `store` setting names a PostgreSQL database (postgresql:// or postgres://)."""
    return isinstance(target, str) and target.strip().lower().startswith(("postgresql://", "postgres://"))


def _url_secrets(url: str) -> list[str]:
    """Every secret written into a URL: the password of its user info, and the value of every
    password-like query parameter (`password`, `sslpassword`, …)."""
    try:
        parts = urlsplit(url)
        secrets = [parts.password] if parts.password else []
    except ValueError:  # e.g. an unclosed [IPv6] host
        return [url]
    secrets += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if _is_secret_key(k) and v]
    return secrets


def url_password(url: str) -> str | None:
    """The first secret written into a URL, if any (a profile must never hold one)."""
    secrets = _url_secrets(url)
    return secrets[0] if secrets else None


def redact_url(url: str) -> str:
    """The URL without its secrets (password, sslpassword, …), for messages and listings."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "(a malformed URL)"
    netloc = parts.netloc
    if has_password:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostinfo}"
    query = parts.query
    if query:
        pairs = [(k, "***" if _is_secret_key(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="/:*", quote_via=quote)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_secrets(text: str, url: str) -> str:
    """`text` (a driver's error message, say) with every secret of `url` replaced by `***`."""
    for secret in _url_secrets(url):
        text = text.replace(secret, "***")
        text = text.replace(quote(secret, safe=""), "***")
    return text


def conninfo_keywords(text: str) -> list[str] | None:
    """The keywords of `text` when it is a libpq connection string ("host=db dbname=mail"), else None."""
    keys = [k.lower() for k in _CONNINFO_KEY.findall(text)]
    if keys and _CONNINFO_KEY.match(text.lstrip()) and keys[0] in LIBPQ_KEYWORDS:
        return keys
    return None


def check_store_location(target: str | os.PathLike[str]) -> None:
    """Refuse a libpq connection string where a store is named: it would otherwise become the
    name of a new SQLite file (and the password in it a file name)."""
    text = os.fspath(target)
    keys = conninfo_keywords(text)
    if keys is None:
        return
    raise MAPIError(
        HResult.MAPI_E_INVALID_PARAMETER,
        f"the store is given as a libpq connection string ({' '.join(k + '=…' for k in keys)}); name a PostgreSQL "
        "store by its URL instead, e.g. postgresql://USER@HOST:5432/DBNAME, with the password in PGPASSWORD, a "
        "pgpass or service file, or the variable named by store_password_env (an SQLite file whose name really "
        "looks like that: give it as ./NAME)",
    )


@dataclass(frozen=True)
class StoreLocation:
    """A store named on the command line: a postgresql:// URL, a profile directory, or an SQLite file."""

    target: str  # URL or file path
    password_env: str | None = None
    profile_dir: Path | None = None

    @property
    def postgres(self) -> bool:
        return is_postgres_url(self.target)

    @property
    def label(self) -> str:
        return redact_url(self.target) if self.postgres else self.target
