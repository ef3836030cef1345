"""The PostgreSQL server the tests use: POSTROOM_TEST_PG_URL (see `.ci/start-postgres`), one schema per test.

Without POSTROOM_TEST_PG_URL, the test session starts a throwaway cluster itself when PostgreSQL's
server binaries are installed (`support.pgcluster`). Tests that need PostgreSQL are marked
`@pytest.mark.postgres` (or call `require_server()`): when there is still no server they skip,
saying why, and under CI they fail with that reason (`support.prerequisites`).
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from support import pgcluster
from support.prerequisites import unavailable

ENV = pgcluster.ENV


def base_url() -> str | None:
    return os.environ.get(ENV) or None


@functools.cache
def skip_reason() -> str | None:
    """Why PostgreSQL tests cannot run here (None: they can)."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg 3 and psycopg-pool are not installed (pip install '.[postgres]')"
    problem = pgcluster.ensure_server()
    url = base_url()
    if url is None:
        return problem or f'no PostgreSQL server for the tests: set {ENV} (eval "$(bash .ci/start-postgres)")'
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        from postroom.store import redact_url

        return f"the PostgreSQL server in {ENV} ({redact_url(url)}) does not answer: {str(exc).strip()}"
    return None


def require_server() -> None:
    """Skip the current test (fail it under CI) unless a PostgreSQL server answers."""
    reason = skip_reason()
    if reason:
        unavailable(reason)


def with_schema(url: str, schema: str) -> str:
    """The URL with `search_path` set to one schema: a separate store in the same database."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-c search_path={schema}"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote), parts.fragment))


@contextmanager
def temp_schema(prefix: str = "t", server: str | None = None) -> Iterator[str]:
    """A fresh, empty schema for one test (or one benchmark run) on the server at `server` (the
    tests' server by default); the URL of a store in it. Dropped afterwards."""
    import psycopg

    url = server or base_url()
    assert url is not None
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"'.encode())
    try:
        yield with_schema(url, name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE'.encode())


@contextmanager
def sqlite_or_postgres(kind: str, sqlite_file: Path, prefix: str) -> Iterator[str]:
    """Where a test's store lives, for a fixture parametrised over both stores: `sqlite_file`
    ("sqlite"), or a fresh schema on the tests' server ("postgres"; skipped without one)."""
    if kind == "sqlite":
        yield str(sqlite_file)
        return
    require_server()
    with temp_schema(prefix) as url:
        yield url
