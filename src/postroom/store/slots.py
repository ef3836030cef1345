"""Connection slots: a transport's connection limit, held across every spooler process on a store.

A transport that may open at most N connections takes one of N numbered slots before it
opens one, and gives it back when the connection closes. Slots are locks the operating
system or the database releases by itself when their holder dies, so a spooler killed
with SIGKILL frees its slots at once; there is no lease to wait out:

* an SQLite store (processes on one machine) uses byte-range locks (fcntl) on a file
  beside the database;
* a PostgreSQL store (processes on many machines) uses session-level advisory locks on
  a connection of its own.

Both kinds of lock are re-entrant for their holder (a process re-locking a byte range or a
session re-taking an advisory lock succeeds), so each process also remembers which slots
it holds and never offers them twice.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..mapi.codes import HResult, MAPIError

MAX_SLOTS = 1024  # per transport: far above any sensible connection limit


def slot_key(namespace: str, transport: str, slot: int) -> int:
    """A number naming one slot of one transport, the same in every process (crc32, not hash())."""
    return (zlib.crc32(f"{namespace}\0{transport.lower()}".encode()) << 10) | slot


class ConnectionSlots(abc.ABC):
    """Numbered connection slots per transport, shared by every process on the store."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: set[tuple[str, int]] = set()

    def try_acquire(self, transport: str, limit: int) -> int | None:
        """Take a free slot among the transport's `limit` slots; None when all are taken."""
        if not 1 <= limit <= MAX_SLOTS:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"a connection limit is 1 to {MAX_SLOTS}, not {limit}")
        name = transport.lower()
        with self._mutex:
            for slot in range(limit):
                if (name, slot) in self._held:
                    continue
                if self._lock(name, slot):
                    self._held.add((name, slot))
                    return slot
        return None

    def release(self, transport: str, slot: int) -> None:
        """Give a slot back; releasing one not held (or already released) does nothing."""
        name = transport.lower()
        with self._mutex:
            if (name, slot) not in self._held:
                return
            self._held.discard((name, slot))
            self._unlock(name, slot)

    def held(self, transport: str) -> int:
        """How many of the transport's slots this process holds."""
        name = transport.lower()
        with self._mutex:
            return sum(1 for n, _ in self._held if n == name)

    def _forget_all(self) -> None:
        """The locks are gone (their connection was lost): nothing is held any more."""
        self._held.clear()

    @abc.abstractmethod
    def _lock(self, transport: str, slot: int) -> bool:
        """Try to lock one slot without waiting."""

    @abc.abstractmethod
    def _unlock(self, transport: str, slot: int) -> None: ...

    def close(self) -> None:
        """Release every slot this object holds."""
        with self._mutex:
            for name, slot in list(self._held):
                with contextlib.suppress(Exception):
                    self._unlock(name, slot)
            self._held.clear()


class LocalSlots(ConnectionSlots):
    """Slots within one process only: for transports driven without a store."""

    def _lock(self, transport: str, slot: int) -> bool:
        return True

    def _unlock(self, transport: str, slot: int) -> None:
        pass


class _LockFile:
    """One open descriptor per lock file and process, with the process's record of what it holds.

    POSIX drops all of a process's locks on a file when it closes *any* descriptor of it, and
    the kernel sees every store object in the process as one lock owner: so they all share
    this one descriptor (never closed) and this one record."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.held: set[tuple[str, int]] = set()
        self.mutex = threading.Lock()

    @staticmethod
    def of(path: Path) -> _LockFile:
        key = (os.getpid(), path.resolve())  # a forked child holds none of its parent's locks
        with _LOCK_FILES_GUARD:
            found = _LOCK_FILES.get(key)
            if found is None:
                found = _LOCK_FILES[key] = _LockFile(key[1])
            return found


_LOCK_FILES: dict[tuple[int, Path], _LockFile] = {}
_LOCK_FILES_GUARD = threading.Lock()


class FileSlots(ConnectionSlots):
    """Slots as one-byte fcntl locks in a file beside an SQLite store (processes on one machine)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = _LockFile.of(path)
        self._held, self._mutex = self._file.held, self._file.mutex

    def _lock(self, transport: str, slot: int) -> bool:
        try:
            fcntl.lockf(self._file.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot_key("", transport, slot), os.SEEK_SET)
        except OSError:  # EAGAIN / EACCES: another process holds it
            return False
        return True

    def _unlock(self, transport: str, slot: int) -> None:
        fcntl.lockf(self._file.fd, fcntl.LOCK_UN, 1, slot_key("", transport, slot), os.SEEK_SET)

    def close(self) -> None:
        """Nothing to do: the slots belong to the connections that hold them, not to this store object."""


class AdvisorySlots(ConnectionSlots):
    """Slots as PostgreSQL session-level advisory locks, on one connection kept for them.

    When that connection is lost, the server has released its locks: every slot counts as
    given back (the connections already open stay open until they close), and the next
    acquire connects again."""

    def __init__(self, connect: Callable[[], Any], namespace: str, error: Callable[[Any], MAPIError]) -> None:
        super().__init__()
        self._connect = connect
        self._namespace = namespace
        self._error = error
        self._conn: Any = None

    def _key(self, transport: str, slot: int) -> int:
        return slot_key(self._namespace, transport, slot)

    def _run(self, query: str, key: int) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._forget_all()
                self._conn = self._connect()
            row = self._conn.execute(query, (key,)).fetchone()
        except MAPIError:
            raise
        except Exception as exc:  # psycopg.Error / OSError: the connection and its locks are gone
            self._drop()
            raise self._error(exc) from exc
        return bool(row and row[0])

    def _lock(self, transport: str, slot: int) -> bool:
        return self._run("SELECT pg_try_advisory_lock(%s)", self._key(transport, slot))

    def _unlock(self, transport: str, slot: int) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(MAPIError):
            self._run("SELECT pg_advisory_unlock(%s)", self._key(transport, slot))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._mutex:
            self._drop()
