"""The spooler daemon's pid file, held with a lock so that only a live daemon counts.

The daemon keeps `<profile>/spooler.pid` open with an exclusive `flock` for as long as it runs;
the kernel drops the lock the moment the process dies, however it dies. So a pid file left by
a killed daemon (or whose pid was reused by another program) never blocks a start, and
"is a daemon running?" is answered by the lock, never by guessing from the pid.

A second daemon started with `--force` beside a running one leaves the pid file alone: it
belongs to the daemon holding the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from ..mapi.codes import HResult, MAPIError

PID_FILE = "spooler.pid"


def pid_file(profile_dir: Path) -> Path:
    return profile_dir / PID_FILE


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def owner_pid(owner: str) -> int | None:
    """The pid in a spooler owner name (`host:pid:suffix`) when it is on this host."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    return int(pid_text)


def is_daemon_process(pid: int, daemon: int) -> bool:
    """Whether `pid` is the daemon's own process or one of its workers (`spooler --workers N`: the
    daemon is the parent holding the pid file, the workers publish the status table)."""
    if pid == daemon:
        return True
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return False
    fields = raw[raw.rindex(")") + 2 :].split()
    return len(fields) > 1 and fields[1] == str(daemon)


def running_daemon(profile_dir: Path) -> int | None:
    """The pid of the spooler daemon running on this profile, if one holds the pid file's lock."""
    path = pid_file(profile_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = read_pid(path)
            return pid if pid != os.getpid() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: a stale file
    finally:
        os.close(fd)


class DaemonPidFile:
    """The pid file of the daemon running in this process (a context manager)."""

    def __init__(self, profile_dir: Path, force: bool = False) -> None:
        self.path = pid_file(profile_dir)
        self.force = force
        self._fd: int | None = None
        self.note: str | None = None  # for the user: a stale file replaced, or --force used

    def __enter__(self) -> DaemonPidFile:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = read_pid(self.path)
            if not self.force:
                raise MAPIError(
                    HResult.MAPI_E_BUSY,
                    f"a spooler daemon is already running on this profile (pid {pid}, {self.path}); "
                    "stop it first, or use --force to start another one anyway",
                ) from None
            self.note = f"started although the spooler daemon {pid} is running (--force); the pid file stays its own"
            return self
        stale = read_pid(self.path)
        if stale is not None and stale != os.getpid():
            self.note = f"replaced a stale pid file (pid {stale} no longer runs a daemon here)"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:  # a full disk: the lock still marks the daemon; only the pid is missing
            self.note = f"cannot write the pid into {self.path}: {exc.strerror}"
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # the lock goes with it
        self._fd = None
