"""The store suite runs every test against both stores: `store` is an SQLiteStore, then a PostgresStore."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.store.pgutil import require_server, temp_schema

from postroom.store import MessageStore, open_store

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "postgres":
        require_server()
    return name


@pytest.fixture
def store_target(backend: str, tmp_path: Path) -> Iterator[str]:
    """Where the test's store lives: an SQLite file, or a PostgreSQL URL (a schema of its own)."""
    if backend == "sqlite":
        yield str(tmp_path / "store.sqlite")
        return
    with temp_schema() as url:
        yield url


@pytest.fixture
def open_another(store_target: str) -> Iterator[Callable[[], MessageStore]]:
    """Opens more stores on the same data (another process would do the same)."""
    opened: list[MessageStore] = []

    def opener() -> MessageStore:
        s = open_store(store_target)
        opened.append(s)
        return s

    yield opener
    for s in opened:
        s.close()


@pytest.fixture
def store(store_target: str) -> Iterator[MessageStore]:
    s = open_store(store_target)
    yield s
    s.close()
