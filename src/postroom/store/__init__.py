"""The message store: folders, messages, the outgoing queue with leases, receive folders, history.

Two implementations with one interface (MessageStore): SQLiteStore, the embedded default
(one file in the profile), and PostgresStore, one database shared by every postroom process
(needs the optional dependencies: `pip install 'postroom[postgres]'`). `open_store` picks one
from the profile's `store` setting.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..mapi.codes import HResult, MAPIError
from .base import (
    Event,
    Folder,
    FolderRole,
    LeaseLost,
    MessageStore,
    MessageSummary,
    QueueEntry,
    QueueState,
    RecipientOutcome,
    RecipientState,
    RecipientStatus,
    RecipientWait,
    WaitKind,
)
from .receive import match_receive_folder
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = [
    "Event",
    "Folder",
    "FolderRole",
    "LeaseLost",
    "MessageStore",
    "MessageSummary",
    "PostgresStore",
    "QueueEntry",
    "QueueState",
    "RecipientOutcome",
    "RecipientState",
    "RecipientStatus",
    "RecipientWait",
    "SQLiteStore",
    "WaitKind",
    "check_store_location",
    "is_postgres_url",
    "match_receive_folder",
    "open_store",
    "redact_secrets",
    "redact_url",
    "url_password",
]

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


def open_store(target: str | os.PathLike[str], *, password_env: str | None = None) -> MessageStore:
    """The store a profile names: a postgresql:// URL (PostgresStore) or an SQLite file path (SQLiteStore).

    For PostgreSQL the password comes from libpq (PGPASSWORD, a pgpass or service file) or,
    when `password_env` names one, from that environment variable; it is never in the URL.
    An older schema is migrated (SQLite) or refused with what to do (PostgreSQL); a newer one
    is refused (MAPI_E_VERSION).
    """
    if is_postgres_url(target):
        return _postgres_class()(str(target), password_env=password_env)
    check_store_location(target)
    return SQLiteStore(target)


def _postgres_class() -> type[PostgresStore]:
    try:
        from .postgres import PostgresStore
    except ImportError as exc:
        raise MAPIError(
            HResult.MAPI_E_NO_SUPPORT,
            f"a PostgreSQL store needs psycopg 3 and psycopg-pool: pip install 'postroom[postgres]' ({exc})",
        ) from exc
    return PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        return _postgres_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
