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

Slots are shared fairly. A process that waits for a slot says so (another lock), and while
another process waits, no process takes a slot beyond its fair share (the limit divided by
the processes holding or waiting for the transport's slots, rounded up) and one above it
gives a connection back when that connection is next free. Without this, the first busy
process would keep every slot and the others' messages would wait for nothing.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..mapi.codes import HResult, MAPIError

MAX_SLOTS = 1024  # per transport: far above any sensible connection limit
#: How long a process trusts what it last learned about the other processes' demand for slots.
CONTENTION_SECONDS = 0.2


def slot_key(namespace: str, transport: str, slot: int) -> int:
    """A number naming one slot of one transport, the same in every process (crc32, not hash())."""
    return (zlib.crc32(f"{namespace}\0{transport.lower()}".encode()) << 10) | slot


@dataclass(frozen=True)
class Contention:
    """The other processes' demand for one transport's slots."""

    processes: int = 0  # other processes holding or waiting for a slot
    waiting: bool = False  # one of them is waiting for a slot now

    def share(self, limit: int) -> int:
        """This process's fair share of `limit` slots."""
        return -(-limit // (self.processes + 1))


class ConnectionSlots(abc.ABC):
    """Numbered connection slots per transport, shared (fairly) by every process on the store."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: set[tuple[str, int]] = set()
        # Slots whose lock was lost with its connection while the transport connection that held
        # it stays open: still counted as this process's, but not locked any more.
        self._orphans: set[tuple[str, int]] = set()
        self._waiting: dict[str, int] = {}
        self._seen: dict[str, tuple[float, Contention]] = {}

    def try_acquire(self, transport: str, limit: int) -> int | None:
        """Take a free slot among the transport's `limit` slots; None when all are taken, when
        another process waits and this one has its fair share already, or while this process
        still has a connection open whose slot lock was lost (it may be over the limit)."""
        if not 1 <= limit <= MAX_SLOTS:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"a connection limit is 1 to {MAX_SLOTS}, not {limit}")
        name = transport.lower()
        with self._mutex:
            self._settle_orphans()
            if self._orphaned(name) or self._above_share(name, limit, self._count(name) + 1):
                return None
            for slot in range(limit):
                if (name, slot) in self._held or (name, slot) in self._orphans:
                    continue
                if self._lock(name, slot):
                    if self._orphaned(name):  # the lock connection was lost and made again meanwhile
                        self._unlock(name, slot)
                        return None
                    self._held.add((name, slot))
                    self._presence_changed(name)
                    return slot
        return None

    def release(self, transport: str, slot: int) -> None:
        """Give a slot back; releasing one not held (or already released) does nothing."""
        name = transport.lower()
        with self._mutex:
            if (name, slot) in self._orphans:
                self._orphans.discard((name, slot))  # its lock is gone already
                self._presence_changed(name)
                return
            if (name, slot) not in self._held:
                return
            self._held.discard((name, slot))
            self._unlock(name, slot)
            self._presence_changed(name)

    def held(self, transport: str) -> int:
        """How many of the transport's slots this process holds."""
        with self._mutex:
            return self._count(transport.lower())

    def set_waiting(self, transport: str, waiting: bool) -> None:
        """One more (True) or one fewer (False) task of this process waits for a slot of the transport."""
        name = transport.lower()
        with self._mutex:
            count = max(0, self._waiting.get(name, 0) + (1 if waiting else -1))
            if count:
                self._waiting[name] = count
            else:
                self._waiting.pop(name, None)
            self._presence_changed(name)

    def should_give_back(self, transport: str, limit: int) -> bool:
        """True when another process waits for a slot and this one holds more than its fair share,
        or when a slot lock of this process was lost (another process may have taken that slot):
        the connection that has just become free should be closed."""
        name = transport.lower()
        with self._mutex:
            self._settle_orphans()
            return self._orphaned(name) or self._above_share(name, limit, self._count(name))

    def contention(self, transport: str) -> Contention:
        """The other processes' demand for the transport's slots, learned at most CONTENTION_SECONDS ago."""
        name = transport.lower()
        with self._mutex:
            return self._contention(name)

    def in_use(self, transport: str) -> int:
        """How many of the transport's slots every process on the store holds now (for /metrics).

        Read without taking any slot, so a scrape never makes a spooler wait for one."""
        name = transport.lower()
        with self._mutex:
            return self._count(name) + self._held_elsewhere(name)

    def _held_elsewhere(self, name: str) -> int:
        """The transport's slots other processes hold (none known: slots within one process)."""
        return 0

    def _count(self, name: str) -> int:
        return sum(1 for n, _ in self._held if n == name) + sum(1 for n, _ in self._orphans if n == name)

    def _orphaned(self, name: str) -> bool:
        return any(n == name for n, _ in self._orphans)

    def _above_share(self, name: str, limit: int, holding: int) -> bool:
        contention = self._contention(name)
        return contention.waiting and holding > contention.share(limit)

    def _contention(self, name: str) -> Contention:
        now = time.monotonic()
        seen = self._seen.get(name)
        if seen is None or now - seen[0] >= CONTENTION_SECONDS:
            seen = self._seen[name] = (now, self._probe(name))
        return seen[1]

    def _forget_all(self) -> None:
        """The locks are gone (their connection was lost): what was held is orphaned until its
        transport connection closes, or until the lock is taken again (_settle_orphans)."""
        self._orphans |= self._held
        self._held.clear()

    def _settle_orphans(self) -> None:
        """Lock the orphaned slots again where no other process has taken them; while the store
        cannot answer, they stay orphans."""
        with contextlib.suppress(MAPIError):
            for name, slot in sorted(self._orphans):
                if self._lock(name, slot):
                    self._orphans.discard((name, slot))
                    self._held.add((name, slot))

    @abc.abstractmethod
    def _lock(self, transport: str, slot: int) -> bool:
        """Try to lock one slot without waiting."""

    @abc.abstractmethod
    def _unlock(self, transport: str, slot: int) -> None: ...

    def _presence_changed(self, name: str) -> None:  # noqa: B027 (a hook: only shared slots need it)
        """This process's holding or waiting for the transport's slots changed: tell the others."""

    def _probe(self, name: str) -> Contention:
        """Ask the lock manager about the other processes (called with the mutex held)."""
        return Contention()

    def close(self) -> None:
        """Release every slot this object holds."""
        with self._mutex:
            for name, slot in list(self._held):
                with contextlib.suppress(Exception):
                    self._unlock(name, slot)
            self._held.clear()
            self._orphans.clear()


class LocalSlots(ConnectionSlots):
    """Slots within one process only: for transports driven without a store."""

    def _lock(self, transport: str, slot: int) -> bool:
        return True

    def _unlock(self, transport: str, slot: int) -> None:
        pass


#: Processes on one machine that can make themselves known per transport (beyond it, a process
#: still keeps the limit but is not counted when the others work out their fair share).
MAX_MEMBERS = 64


class _LockFile:
    """One open descriptor per lock file and process, with the process's record of what it holds.

    POSIX drops all of a process's locks on a file when it closes *any* descriptor of it, and
    the kernel sees every store object in the process as one lock owner: so they all share
    this one descriptor (never closed) and this one record."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.held: set[tuple[str, int]] = set()
        self.waiting: dict[str, int] = {}
        self.seen: dict[str, tuple[float, Contention]] = {}
        self.member: dict[str, int] = {}  # transport → this process's member number
        self.wanting: set[str] = set()  # transports whose "waiting" byte this process holds
        self.mutex = threading.Lock()

    @staticmethod
    def of(path: Path) -> _LockFile:
        key = (os.getpid(), path.resolve())  # a forked child holds none of its parent's locks
        with _LOCK_FILES_GUARD:
            found = _LOCK_FILES.get(key)
            if found is None:
                found = _LOCK_FILES[key] = _LockFile(key[1])
            return found

    def try_lock(self, offset: int) -> bool:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        except OSError:  # EAGAIN / EACCES: another process holds it
            return False
        return True

    def lock(self, offset: int) -> None:
        """Lock, waiting: only for a byte that other processes lock no longer than a probe."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, offset, os.SEEK_SET)

    def unlock(self, offset: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)

    def held_by_others(self, start: int, length: int) -> int:
        """How many bytes of [start, start + length) other processes hold, asked with F_GETLK:
        unlike locked_elsewhere it takes nothing, so a process trying a byte meanwhile is never
        refused because of it. F_GETLK names one conflicting lock (any one), so the range is
        split around it and both sides asked again: a few calls for a few locks, one for none."""
        if length <= 0:
            return 0
        ask = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        kind, _, found, size, _ = struct.unpack(_FLOCK, fcntl.fcntl(self.fd, fcntl.F_GETLK, ask))
        if kind == fcntl.F_UNLCK:
            return 0
        end = start + length
        first, last = max(start, int(found)), min(end, int(found) + int(size) if size > 0 else end)  # 0: to the end
        return last - first + self.held_by_others(start, first - start) + self.held_by_others(last, end - last)

    def locked_elsewhere(self, offset: int) -> bool:
        """Probe a byte this process does not hold: lock and unlock it at once."""
        if self.try_lock(offset):
            self.unlock(offset)
            return False
        return True


#: struct flock on Linux (64-bit off_t): l_type, l_whence, l_start, l_len, l_pid, and padding.
_FLOCK = "hhqqi4x"

_LOCK_FILES: dict[tuple[int, Path], _LockFile] = {}
_LOCK_FILES_GUARD = threading.Lock()


class FileSlots(ConnectionSlots):
    """Slots as one-byte fcntl locks in a file beside an SQLite store (processes on one machine).

    A process holding or waiting for a transport's slots also locks a member byte (the first
    free one of MAX_MEMBERS), and while it waits a "waiting" byte of the same number: so the
    others can count the processes that share the transport and see that one waits."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = _LockFile.of(path)
        self._held, self._mutex = self._file.held, self._file.mutex
        self._waiting, self._seen = self._file.waiting, self._file.seen

    def _lock(self, transport: str, slot: int) -> bool:
        return self._file.try_lock(slot_key("", transport, slot))

    def _unlock(self, transport: str, slot: int) -> None:
        self._file.unlock(slot_key("", transport, slot))

    def _presence_changed(self, name: str) -> None:
        file = self._file
        waiting = bool(self._waiting.get(name))
        present = waiting or self._count(name) > 0
        member = file.member.get(name)
        if member is None and present:
            member = next((m for m in range(MAX_MEMBERS) if file.try_lock(slot_key("member", name, m))), None)
            if member is None:
                return  # too many processes: this one is not counted
            file.member[name] = member
        if member is None:
            return
        if waiting != (name in file.wanting):
            if waiting:
                file.lock(slot_key("waiting", name, member))
                file.wanting.add(name)
            else:
                file.unlock(slot_key("waiting", name, member))
                file.wanting.discard(name)
        if not present:
            file.unlock(slot_key("member", name, member))
            del file.member[name]

    def _probe(self, name: str) -> Contention:
        file, mine = self._file, self._file.member.get(name)
        processes, waiting = 0, False
        for member in range(MAX_MEMBERS):
            if member == mine or not file.locked_elsewhere(slot_key("member", name, member)):
                continue
            processes += 1
            waiting = waiting or file.locked_elsewhere(slot_key("waiting", name, member))
        return Contention(processes, waiting)

    def _held_elsewhere(self, name: str) -> int:
        # Slots are taken lowest first but given back in any order: ask about all of them. This
        # process's own locks never conflict with it, so F_GETLK reports only the others'.
        return self._file.held_by_others(slot_key("", name, 0), MAX_SLOTS)

    def close(self) -> None:
        """Nothing to do: the slots belong to the connections that hold them, not to this store object."""


class AdvisorySlots(ConnectionSlots):
    """Slots as PostgreSQL session-level advisory locks, on one connection kept for them.

    A process waiting for a transport's slots holds a shared "waiting" advisory lock of the
    transport; the others learn from pg_locks how many processes hold or wait for the
    transport's slots and whether one waits.

    When that connection is lost, the server has released its locks. The slots of connections
    still open are then orphans: the next acquire or give-back question connects again and
    locks them again, and a slot another process took meanwhile stays an orphan until its
    connection closes. Meanwhile
    this process takes no new slot for the transport and gives connections back as they come
    free, so the limit is exceeded at most until then."""

    def __init__(self, connect: Callable[[], Any], namespace: str, error: Callable[[Any], MAPIError]) -> None:
        super().__init__()
        self._connect = connect
        self._namespace = namespace
        self._error = error
        self._conn: Any = None
        self._wanting: set[str] = set()

    def _key(self, transport: str, slot: int) -> int:
        return slot_key(self._namespace, transport, slot)

    def _waiting_key(self, transport: str) -> int:
        return slot_key(self._namespace + "\0waiting", transport, 0)

    def _fetch(self, query: str, params: tuple[Any, ...] | dict[str, Any]) -> tuple[Any, ...]:
        try:
            if self._conn is None or self._conn.closed:
                self._forget_all()
                self._conn = self._connect()
            row = self._conn.execute(query, params).fetchone()
        except MAPIError:
            raise
        except Exception as exc:  # psycopg.Error / OSError: the connection and its locks are gone
            self._drop()
            raise self._error(exc) from exc
        return tuple(row or ())

    def _run(self, query: str, key: int) -> bool:
        row = self._fetch(query, (key,))
        return bool(row and row[0])

    def _lock(self, transport: str, slot: int) -> bool:
        return self._run("SELECT pg_try_advisory_lock(%s)", self._key(transport, slot))

    def _unlock(self, transport: str, slot: int) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(MAPIError):
            self._run("SELECT pg_advisory_unlock(%s)", self._key(transport, slot))

    def _presence_changed(self, name: str) -> None:
        waiting = bool(self._waiting.get(name))
        if waiting == (name in self._wanting):
            return
        with contextlib.suppress(MAPIError):  # without it, the others just do not see this process wait
            if waiting:
                self._run("SELECT pg_try_advisory_lock_shared(%s)", self._waiting_key(name))
                self._wanting.add(name)
            elif self._conn is not None:
                self._wanting.discard(name)
                self._run("SELECT pg_advisory_unlock_shared(%s)", self._waiting_key(name))

    def _probe(self, name: str) -> Contention:
        self._presence_changed(name)  # again, in case the connection (and the lock) was lost meanwhile
        # An advisory lock on a bigint key shows in pg_locks as classid (high half), objid (low half).
        first = self._key(name, 0)
        try:
            processes, waiting = self._fetch(
                _CONTENTION_QUERY, {"first": first, "last": first + MAX_SLOTS - 1, "waiting": self._waiting_key(name)}
            )
        except MAPIError:
            return Contention()  # the store cannot say: as if nobody else were there
        return Contention(int(processes or 0), bool(waiting))

    def _held_elsewhere(self, name: str) -> int:
        first = self._key(name, 0)
        (count,) = self._fetch(_IN_USE_QUERY, {"first": first, "last": first + MAX_SLOTS - 1})
        return int(count or 0)

    def _forget_all(self) -> None:
        super()._forget_all()
        self._wanting.clear()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._forget_all()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._mutex:
            self._drop()
            self._orphans.clear()


#: The transport's slot locks held by other sessions (this process's own are counted from _held).
_IN_USE_QUERY = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid <> pg_backend_pid()
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((classid::bigint << 32) | objid::bigint) BETWEEN %(first)s AND %(last)s
"""

_CONTENTION_QUERY = """
SELECT count(DISTINCT pid), coalesce(bool_or(key = %(waiting)s), false)
FROM (
    SELECT pid, (classid::bigint << 32) | objid::bigint AS key
    FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid <> pg_backend_pid()
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
) AS advisory
WHERE key BETWEEN %(first)s AND %(last)s OR key = %(waiting)s
"""
