"""The message store: folders, messages, the outgoing queue with leases, receive folders, history.

Two implementations with one interface (MessageStore): SQLiteStore, the embedded default
(one file in the profile), and PostgresStore, one database shared by every postroom process
(needs the optional dependencies: `pip install 'postroom[postgres]'`). `open_store` picks one
from the profile's `store` setting.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..mapi.codes import HResult, MAPIError
from .base import (
    Event,
    EventKind,
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
    RetryAll,
    WaitKind,
)
from .receive import match_receive_folder
from .sqlite import SQLiteStore
from .urls import check_store_location, is_postgres_url, redact_secrets, redact_url, url_password

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = [
    "Event",
    "EventKind",
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
    "RetryAll",
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
