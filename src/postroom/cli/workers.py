"""`postroom spooler --workers N`: one parent supervising N spooler processes on one store.

Why processes: one spooler is CPU-bound on one core (issue 17), and everything spooler processes
must share already lives in the store (claims are leases; transport usage, breakers and connection
slots are rows), so N processes on one store share the work and the limits as N hosts would.

The parent does no delivery. It opens the store once before anything else (so a store that cannot
be opened is an error at once, as for one daemon), holds the profile's pid file, starts the workers
(each `postroom spooler --worker-of PARENT`, machine output on a pipe), relays their pass lines,
restarts a worker that dies (after a backoff that doubles while it keeps dying young), passes
SIGTERM/SIGINT on and waits for the work in flight. It gives up with an error when a worker stops
with an error of its own (exit status 2: a MAPI error, e.g. its store file was deleted — starting
it again would only write into a new, empty store), or once one worker has died `max_failures`
times in a row without ever running `healthy_seconds`.

The workers run in their own process group, so a Ctrl-C at the terminal reaches them once (from
the parent), not twice; and each watches its parent, so a parent killed with SIGKILL does not
leave them delivering unsupervised.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

#: A worker's command, given its index (0-based).
Command = Callable[[int], Sequence[str]]

#: The exit status of a worker that stopped on a MAPI error it reported (cli/app.py's EXIT_USAGE):
#: a decision of the worker, not a crash, so it is not restarted.
STOPPED_WITH_ERROR = 2


@dataclass
class RestartPolicy:
    """When the parent starts a dead worker again, and when it gives up."""

    first_backoff: float = 0.5
    max_backoff: float = 30.0
    #: A worker that ran this long was healthy: its next death starts the backoff afresh.
    healthy_seconds: float = 10.0
    #: Deaths in a row, each before `healthy_seconds`, after which the parent gives up.
    max_failures: int = 4

    def backoff(self, failures: int) -> float:
        return float(min(self.max_backoff, self.first_backoff * 2 ** max(0, failures - 1)))


@dataclass
class WorkerSlot:
    """One of the N places a worker process runs in; a restarted worker takes the same slot."""

    index: int
    proc: subprocess.Popen[str] | None = None
    started: float = 0.0
    failures: int = 0  # deaths in a row without a healthy run
    restart_at: float | None = None
    last_status: int | None = None
    reader: threading.Thread | None = field(default=None, repr=False)


class WorkersFailed(Exception):
    """A worker stopped with an error, or kept dying: the parent stopped restarting them."""

    def __init__(self, slot: int, failures: int, status: int | None, kind: str = "spooler worker") -> None:
        if status == STOPPED_WITH_ERROR:
            text = f"{kind} {slot} stopped with an error (exit status {status})"
        else:
            text = f"{kind} {slot} failed {failures} times in a row (last exit status {status})"
        super().__init__(text)
        self.slot = slot
        self.failures = failures
        self.status = status


class Supervisor:
    """Runs `n` workers until stopped; `run()` returns once every worker has ended."""

    def __init__(
        self,
        command: Command,
        n: int,
        *,
        on_line: Callable[[int, dict[str, Any]], None],
        on_event: Callable[[str], None],
        policy: RestartPolicy | None = None,
        env: dict[str, str] | None = None,
        on_stop: Callable[[], None] | None = None,
        on_all_ready: Callable[[], None] | None = None,
        kind: str = "spooler worker",
    ) -> None:
        self.command = command
        self.kind = kind  # what the messages call a worker ("spooler worker", "listener process")
        self.slots = [WorkerSlot(i) for i in range(n)]
        self.on_line = on_line
        self.on_event = on_event
        self.policy = policy or RestartPolicy()
        self.env = env
        self.on_stop = on_stop  # told of the first signal (the parent may be waiting for its store)
        self.on_all_ready = on_all_ready  # once, when every worker has said it is ready
        self._ready: set[int] = set()
        self._all_ready_told = False
        self.signals: list[int] = []
        self._lock = threading.Lock()  # on_line is called from the readers' threads
        self._wake = threading.Event()

    # --- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """Remember the signal and pass it on to every live worker: they finish what is in flight."""
        self.signals.append(signum)
        if self.on_stop is not None:
            self.on_stop()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)
        self._wake.set()

    def _on_reload(self, signum: int, _frame: object) -> None:
        """SIGHUP (systemd's ExecReload): every worker re-reads the profile; none stops."""
        self._stop_all(signum)

    # --- the loop ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def signals_handled(self) -> Iterator[None]:
        """SIGTERM and SIGINT go to the workers from here on (enter it first: a signal that arrives
        before the workers start still stops cleanly, none is started); SIGHUP is passed on as a
        reload."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_reload)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def run(self) -> None:
        """Start the workers and keep them running until SIGTERM/SIGINT; WorkersFailed when one stops
        with an error or they keep dying young (the others are stopped first). Call it inside
        `signals_handled()`."""
        if self.signals:
            return
        for slot in self.slots:
            self._start(slot)
        failed = self._supervise()
        if failed is not None:
            self._stop_all(signal.SIGTERM)
        self._wait_all()
        if failed is not None:
            raise failed

    def ready(self, index: int) -> None:
        """A worker's "ready" line (it has its store open); from a reader's thread."""
        self._ready.add(index)
        self._wake.set()

    def _supervise(self) -> WorkersFailed | None:
        while not self.signals:
            if not self._all_ready_told and len(self._ready) == len(self.slots):
                self._all_ready_told = True
                if self.on_all_ready is not None:
                    try:
                        self.on_all_ready()
                    except BaseException:
                        self._stop_all(signal.SIGTERM)
                        self._wait_all()
                        raise
            now = time.monotonic()
            for slot in self.slots:
                if slot.proc is not None and slot.proc.poll() is not None:
                    failed = self._ended(slot, now)
                    if failed is not None:
                        return failed
                if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at and not self.signals:
                    self._start(slot)
            self._wake.wait(0.1)
            self._wake.clear()
        return None

    def _ended(self, slot: WorkerSlot, now: float) -> WorkersFailed | None:
        assert slot.proc is not None
        status = slot.proc.returncode
        self._join_reader(slot)
        slot.proc, slot.last_status = None, status
        ran = now - slot.started
        slot.failures = 1 if ran >= self.policy.healthy_seconds else slot.failures + 1
        if status == STOPPED_WITH_ERROR or slot.failures >= self.policy.max_failures:
            return WorkersFailed(slot.index, slot.failures, status, self.kind)
        wait = self.policy.backoff(slot.failures)
        slot.restart_at = now + wait
        self.on_event(f"{self.kind} {slot.index} ended (exit status {status}); starting it again in {wait:.1f} s")
        return None

    def _environment(self, index: int) -> dict[str, str] | None:
        """The first worker talks to systemd (READY=1, the watchdog, reloads; it also runs the
        listener and the status page): the others are not told of NOTIFY_SOCKET, so systemd hears
        one daemon, not a READY=1 from each worker."""
        if index == 0:
            return self.env
        env = dict(os.environ if self.env is None else self.env)
        env.pop("NOTIFY_SOCKET", None)
        return env

    def _start(self, slot: WorkerSlot) -> None:
        slot.proc = subprocess.Popen(
            list(self.command(slot.index)),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self._environment(slot.index),
            process_group=0,  # a terminal's Ctrl-C reaches the worker once, through the parent
        )
        slot.started = time.monotonic()
        slot.restart_at = None
        assert slot.proc.stdout is not None
        slot.reader = threading.Thread(target=self._read, args=(slot.index, slot.proc.stdout), daemon=True)
        slot.reader.start()

    def _read(self, index: int, stream: IO[str]) -> None:
        for raw in stream:
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if isinstance(data, dict):
                with self._lock:
                    self.on_line(index, data)
        self._wake.set()

    def _join_reader(self, slot: WorkerSlot) -> None:
        if slot.reader is not None:
            slot.reader.join(5)
            slot.reader = None

    def _stop_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)

    def _wait_all(self) -> None:
        """Every worker ends: a stop never cuts a delivery short, so this waits as long as they take."""
        for slot in self.slots:
            if slot.proc is not None:
                slot.proc.wait()
                self._join_reader(slot)
                slot.last_status = slot.proc.returncode


def watch_parent(parent: int) -> None:
    """In a worker: SIGTERM to itself (a clean stop) once the parent is gone, checked every second."""

    def loop() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, name="postroom-parent-watch", daemon=True).start()
