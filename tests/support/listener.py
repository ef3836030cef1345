"""A `postroom spooler --smtp` or `postroom serve smtp` running in a subprocess on a free port."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.cli import argv, environment

_LISTENING = re.compile(r"SMTP submission listener on \[?[0-9a-fA-F.:]+?\]?:(\d+)")


class Running:
    """The process, its port, and every line it wrote on stderr so far."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_listening(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                found = _LISTENING.search(line)
                if found:
                    self.port = int(found.group(1))
                    return self.port
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"exited {self.proc.returncode}: " + "\n".join(self.lines))
            time.sleep(0.05)
        raise AssertionError("not listening: " + "\n".join(self.lines))

    def wait_line(self, pattern: str, timeout: float = 30.0) -> str:
        """The first line matching `pattern` (a regular expression), waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no line matches {pattern!r}:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


@contextmanager
def running(
    profile: Path, *args: str, env: dict[str, str | None] | None = None, stdout: int | None = subprocess.DEVNULL
) -> Iterator[Running]:
    """`postroom --profile PROFILE ARGS…` (which must start a listener on 127.0.0.1:0), listening."""
    proc = subprocess.Popen(argv(profile, *args), stdout=stdout, stderr=subprocess.PIPE, env=environment(env))
    r = Running(proc)
    try:
        r.wait_listening()
        yield r
    finally:
        r.stop()
