"""The parent of `postroom spooler --workers N` (cli/workers.py), on real child processes that stand
in for spooler workers: small Python programs that exit, crash or wait for SIGTERM on cue."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import pytest

from postroom.cli.workers import RestartPolicy, Supervisor, WorkersFailed

FAST = RestartPolicy(first_backoff=0.01, max_backoff=0.05, healthy_seconds=30.0, max_failures=4)

WAITS_FOR_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (print('{\"stopped\": true}', flush=True), sys.exit(0)))\n"
    'print(\'{"pass": 1, "messages": 2, "delivered": 2}\', flush=True)\n'
    "print('{\"ready\": 1}', flush=True)\n"
    "time.sleep(60)\n"
)


def program(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def supervisor(code: str, n: int, lines: list[tuple[int, dict[str, Any]]], **kw: Any) -> tuple[Supervisor, list[str]]:
    """A supervisor of n copies of `code`; the lines they print go to `lines`, its events to the list returned."""
    events: list[str] = []

    def on_line(i: int, data: dict[str, Any]) -> None:
        if "ready" in data:
            sup.ready(i)
        lines.append((i, data))

    sup = Supervisor(lambda _i: program(code), n, on_line=on_line, on_event=events.append, **kw)
    return sup, events


def test_the_backoff_doubles_while_a_worker_keeps_dying_and_stops_growing_at_its_cap() -> None:
    policy = RestartPolicy(first_backoff=0.5, max_backoff=4.0)
    assert [policy.backoff(k) for k in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_worker_that_keeps_crashing_is_started_again_until_the_parent_gives_up() -> None:
    sup, events = supervisor("raise SystemExit(3)", 1, [], policy=FAST)
    with sup.signals_handled(), pytest.raises(WorkersFailed) as failed:
        sup.run()
    assert failed.value.failures == 4 and failed.value.status == 3
    assert str(failed.value) == "spooler worker 0 failed 4 times in a row (last exit status 3)"
    assert len(events) == 3 and all("starting it again" in e for e in events)


def test_a_worker_that_stops_with_an_error_of_its_own_is_not_started_again() -> None:
    sup, events = supervisor("raise SystemExit(2)", 2, [], policy=FAST)
    with sup.signals_handled(), pytest.raises(WorkersFailed) as failed:
        sup.run()
    assert failed.value.status == 2 and failed.value.failures == 1
    assert str(failed.value).endswith("stopped with an error (exit status 2)")
    assert events == []


def test_sigterm_is_passed_on_to_every_worker_and_the_parent_waits_for_them() -> None:
    lines: list[tuple[int, dict[str, Any]]] = []
    ready = threading.Event()
    sup, _ = supervisor(WAITS_FOR_SIGTERM, 2, lines, policy=FAST, on_all_ready=ready.set)
    timer = threading.Thread(target=lambda: (ready.wait(30), os.kill(os.getpid(), signal.SIGTERM)))
    with sup.signals_handled():
        timer.start()
        sup.run()
    timer.join()
    assert ready.is_set() and sup.signals == [signal.SIGTERM]
    assert sorted(i for i, d in lines if "pass" in d) == [0, 1]
    assert sorted(i for i, d in lines if d.get("stopped")) == [0, 1]  # each finished and said so
    assert all(slot.last_status == 0 for slot in sup.slots)
