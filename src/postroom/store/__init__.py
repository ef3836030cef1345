"""The message store: folders, messages, the outgoing queue with leases, receive folders, history.

Two implementations with one interface (MessageStore): SQLiteStore, the embedded default
(one file in the profile), and PostgresStore, one database shared by every postroom process
(needs the optional dependencies: `pip install 'postroom[postgres]'`). `open_store` picks one
from the profile's `store` setting.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

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
    "is_postgres_url",
    "match_receive_folder",
    "open_store",
    "redact_url",
    "url_password",
]

PASSWORD_KEYS = ("password",)


def is_postgres_url(target: object) -> bool:
    """Whether a `store` setting names a PostgreSQL database (postgresql:// or postgres://)."""
    return isinstance(target, str) and target.strip().lower().startswith(("postgresql://", "postgres://"))


def url_password(url: str) -> str | None:
    """The password written into a URL, if any (a profile must never hold one)."""
    parts = urlsplit(url)
    if parts.password:
        return parts.password
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in PASSWORD_KEYS and value:
            return value
    return None


def redact_url(url: str) -> str:
    """The URL without its password, for messages and listings."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostinfo}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k in PASSWORD_KEYS else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="/:*", quote_via=quote)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def open_store(target: str | os.PathLike[str], *, password_env: str | None = None) -> MessageStore:
    """The store a profile names: a postgresql:// URL (PostgresStore) or an SQLite file path (SQLiteStore).

    For PostgreSQL the password comes from libpq (PGPASSWORD, a pgpass or service file) or,
    when `password_env` names one, from that environment variable; it is never in the URL.
    An older schema is migrated (SQLite) or refused with what to do (PostgreSQL); a newer one
    is refused (MAPI_E_VERSION).
    """
    if is_postgres_url(target):
        return _postgres_class()(str(target), password_env=password_env)
    return SQLiteStore(target)


def _postgres_class() -> type[PostgresStore]:
    from ..mapi.codes import HResult, MAPIError

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
