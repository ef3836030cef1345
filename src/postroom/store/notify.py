"""Store notifications across processes: "a message was submitted", "new mail", "mode changed".

Every listener binds a Unix datagram socket in the profile's `.notify/` directory, and a
notifier sends one datagram to each socket there. No listener means nothing to do, and a
stale socket (its process died) is removed by the first notifier that finds it dead. The
store commits first and notifies afterwards, so a listener that wakes up always finds
the change. A lost datagram only delays work until the spooler's slow safety scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import stat
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .words import StoredWords

MAX_DATAGRAM = 8192


class NoteKind(StoredWords):
    """What a store notification tells its listeners."""

    SUBMITTED = "submitted"  # a message was submitted: the spooler has work
    QUEUE = "queue"  # the queue changed otherwise (released, retried, woken, given back)
    NEWMAIL = "newmail"  # a message was delivered into a folder (fnevNewMail)
    MODE = "mode"  # the profile went online or offline
    CONFIG = "config"  # services, transport order or groups changed


@dataclass(frozen=True)
class Notification:
    """One store event, and what it is about (`message_id`, `mode`, …)."""

    kind: NoteKind | str  # a str only for a kind this postroom does not know (sent by another)
    data: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"kind": self.kind, "data": self.data}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Notification | None:
        try:
            obj = json.loads(raw)
            return cls(NoteKind.read(str(obj["kind"])), dict(obj.get("data") or {}))
        except (ValueError, KeyError, TypeError):
            return None


#: A directory changed less than this long ago is listed again at each publish: a listener that
#: binds within the same tick of the file system's clock leaves its modification time as it was.
RECENT_NS = 2_000_000_000


class NotificationBus:
    """Publish and subscribe on one profile's notification directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._where = str(directory)
        #: The listeners' socket paths, and the directory's (inode, mtime) when they were listed:
        #: submitting one message at a time must not list the directory for every message.
        self._listed: tuple[tuple[int, int], list[str]] | None = None

    def publish(self, kind: NoteKind, **data: Any) -> None:
        """Send to every listener; never raises (a notification is a hint, the store is the truth)."""
        listeners = self._listeners()
        if not listeners:
            return
        payload = Notification(kind, data).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            for path in listeners:
                try:
                    sock.sendto(payload, path)
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                    # EAGAIN (listener's buffer full): it is busy and will rescan anyway.

    def _listeners(self) -> list[str]:
        """The sockets in the directory: listed again only when it changed (or changed just now)."""
        try:
            st = os.stat(self._where)
        except OSError:
            return []
        if not stat.S_ISDIR(st.st_mode):
            return []
        seen = (st.st_ino, st.st_mtime_ns)
        listed = self._listed
        if listed is not None and listed[0] == seen and time.time_ns() - st.st_mtime_ns > RECENT_NS:
            return listed[1]
        paths = [str(p) for p in self.directory.glob("*.sock")]
        self._listed = (seen, paths)
        return paths

    def listen(self) -> Listener:
        return Listener(self.directory)


class Listener:
    """A subscription: an async iterator of notifications, closed with close()."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self.sock.setblocking(False)
        self._queue: asyncio.Queue[Notification] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_readable(self) -> None:
        assert self._queue is not None
        while True:
            try:
                raw = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            note = Notification.decode(raw)
            if note is not None:
                self._queue.put_nowait(note)

    def attach(self) -> asyncio.Queue[Notification]:
        """Start delivering into an asyncio queue on the running loop."""
        if self._queue is None:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
        return self._queue

    async def get(self, timeout: float | None = None) -> Notification | None:
        queue = self.attach()
        try:
            return await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            return None

    async def __aiter__(self) -> AsyncIterator[Notification]:
        queue = self.attach()
        while True:
            yield await queue.get()

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def notify_directory(store_path: Path) -> Path:
    """Where a store's listeners bind: beside the store, or under /tmp when that path is too long
    for a Unix socket name (108 bytes)."""
    beside = store_path.parent / ".notify"
    if len(str(beside)) <= 70:
        return beside
    import hashlib

    digest = hashlib.sha256(str(store_path.resolve()).encode()).hexdigest()[:20]
    return Path("/tmp") / f"postroom-{os.getuid()}" / digest
