"""Store administration: find a store by what a user names, migrate its schema, copy it whole.

`postroom store migrate` and `postroom store copy` work on stores no session has open, named
by a postgresql:// URL, a profile directory (its `store` setting) or an SQLite file. This module
sits above both stores and the profile, so the stores never import the profile nor this
administration, and the schema code (`store/migrations.py`) never imports the stores it migrates.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .mapi.codes import HResult, MAPIError
from .profile import PROFILE_FILE, Profile
from .store.copy import CopyReport, copy_store
from .store.migrations import LATEST
from .store.sqlite import SQLiteStore
from .store.urls import StoreLocation, check_store_location, is_postgres_url, redact_url

__all__ = ["CopyReport", "MigrationReport", "StoreLocation", "copy_store", "locate", "migrate", "sqlite_version"]


def locate(name: str | os.PathLike[str]) -> StoreLocation:
    """A postgresql:// URL as is; a profile directory by its `store` setting; else an SQLite file path."""
    text = os.fspath(name)
    if is_postgres_url(text):
        return StoreLocation(text.strip())
    check_store_location(text)
    path = Path(text).expanduser()
    if (path / PROFILE_FILE).is_file():
        profile = Profile.load(path)
        url = profile.store_url
        if url is not None:
            return StoreLocation(url, profile.store_password_env, path)
        return StoreLocation(str(profile.store_path), None, path)
    if path.is_dir():
        raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"{path} is a directory without a profile.toml")
    return StoreLocation(str(path))


@dataclass(frozen=True)
class MigrationReport:
    store: str  # where, with any password removed
    kind: str  # "sqlite" or "postgresql"
    before: int | None  # None: the store did not exist (it was created)
    after: int

    @property
    def changed(self) -> bool:
        return self.before != self.after


def sqlite_version(path: str | os.PathLike[str]) -> int | None:
    """The schema version of an SQLite store file, without changing it (None: no store there)."""
    p = Path(path)
    if not p.is_file():
        return None
    db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=30.0)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return int(row[0]) if row else None


def migrate(target: str | os.PathLike[str], *, password_env: str | None = None) -> MigrationReport:
    """Create or migrate the store at `target` (a postgresql:// URL or an SQLite file) to LATEST."""
    if isinstance(target, str) and is_postgres_url(target):
        from .store.postgres import PostgresStore  # optional: psycopg

        store = PostgresStore(target, password_env=password_env, migrate=True)
        try:
            return MigrationReport(redact_url(target), "postgresql", store.migrated_from, LATEST)
        finally:
            store.close()
    check_store_location(target)
    folder = Path(target).expanduser().parent
    if not folder.is_dir():  # a typo in --store must not leave a tree of new directories behind
        raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no directory {folder} for the SQLite store {target}")
    before = sqlite_version(target)
    SQLiteStore(target).close()
    return MigrationReport(str(target), "sqlite", before, LATEST)
