"""systemd's notification protocol (sd_notify(3)), in the few lines it takes: no dependency.

Under `Type=notify` systemd passes the path of a datagram socket in NOTIFY_SOCKET (an abstract
one when it starts with `@`); the daemon sends `READY=1` once it serves, `WATCHDOG=1` at least
every half WATCHDOG_USEC, and `RELOADING=1` … `READY=1` around a reload (SIGHUP). Without
NOTIFY_SOCKET every call does nothing, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or not (path.startswith("/") or path.startswith("@")):
        return None
    return "\0" + path[1:] if path.startswith("@") else path


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=…") to systemd; False when nobody listens."""
    address = _address()
    if address is None:
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall("\n".join(fields).encode("utf-8"))
        return True
    return False


def reloading() -> bool:
    """RELOADING=1 with the monotonic time systemd asks for since version 253."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half WATCHDOG_USEC), or None when systemd wants none."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or _address() is None:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (a parent that started us)
    return int(usec) / 2_000_000
