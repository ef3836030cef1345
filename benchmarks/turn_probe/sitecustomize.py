"""Loaded by `benchmarks/submit_turns.py` in its own process and the spooler daemon's (PYTHONPATH).

With TURN_PROBE_OUT set, every writer turn (store/writer_turns.py) is timed: when it was asked for,
when it was got, when it was let go, and the code that took it; and some store calls are counted.
Both are written as JSON beside TURN_PROBE_OUT when the process exits."""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

OUT = os.environ.get("TURN_PROBE_OUT")
#: (asked, got, let go, taken by) per turn, perf_counter seconds (one clock for all processes).
TURNS: list[tuple[float, float, float, str]] = []
CALLS: dict[str, int] = {}
COUNTED = ("record_pass", "claim_messages", "mark_started", "finish_many", "renew_leases", "unclaim")
PLUMBING = {"__enter__", "_writing", "_tx", "batch", "inner", "helper", "turn"}


def _taker() -> str:
    frame = sys._getframe(3)
    names: list[str] = []
    while frame is not None and len(names) < 3:
        if frame.f_code.co_name not in PLUMBING:
            names.append(frame.f_code.co_name)
        frame = frame.f_back
    return "/".join(names)


def _install(out: str) -> None:
    from postroom.store import sqlbase, writer_turns

    original = writer_turns.WriterTurns.turn

    @contextmanager
    def turn(self: writer_turns.WriterTurns) -> Iterator[None]:
        taker = _taker()
        asked = time.perf_counter()
        with original(self):
            got = time.perf_counter()
            try:
                yield
            finally:
                TURNS.append((asked, got, time.perf_counter(), taker))

    writer_turns.WriterTurns.turn = turn  # type: ignore[method-assign]

    def counted(name: str) -> None:
        method: Callable[..., Any] = getattr(sqlbase.SQLMessageStore, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            CALLS[name] = CALLS.get(name, 0) + 1
            return method(self, *args, **kwargs)

        setattr(sqlbase.SQLMessageStore, name, call)

    for name in COUNTED:
        if hasattr(sqlbase.SQLMessageStore, name):
            counted(name)

    def dump() -> None:
        Path(f"{out}.{os.getpid()}").write_text(json.dumps(TURNS))
        Path(f"{out}.calls.{os.getpid()}").write_text(json.dumps(CALLS))

    atexit.register(dump)


if OUT:
    _install(OUT)
