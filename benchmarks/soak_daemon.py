"""`python -m postroom ARGS…` (the soak's spooler daemons), able to say where it is stuck.

The same CLI entry point, plus two signal handlers for diagnosis: SIGUSR1 dumps every thread's
Python stack (faulthandler: works even while the event loop is blocked in a call), SIGUSR2 the
stack of every asyncio task (when the loop is free to run the handler). Both go to stderr, which
soak.py sends to the daemon's log. soak.py sends them when the daemon makes no progress.

    python benchmarks/soak_daemon.py --profile DIR spooler
"""

from __future__ import annotations

import asyncio
import faulthandler
import runpy
import signal
import sys
from types import FrameType
from typing import Any


def awaiting(coro: Any) -> list[str]:
    """Where a suspended coroutine is, innermost last: each frame of its await chain."""
    out = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            out.append(f"  awaiting {coro!r}"[:300])
            break
        out.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


def dump_tasks(_signum: int, _frame: FrameType | None) -> None:
    loop = asyncio.events._get_running_loop()
    if loop is None:
        print("soak_daemon: no running event loop", file=sys.stderr, flush=True)
        return
    tasks = asyncio.all_tasks(loop)
    lines = [f"soak_daemon: {len(tasks)} asyncio task(s)"]
    for task in tasks:
        lines.append(f"task {task.get_name()}:")
        lines += awaiting(task.get_coro())
    print("\n".join(lines), file=sys.stderr, flush=True)


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGUSR2, dump_tasks)
    sys.argv = ["postroom", *sys.argv[1:]]
    runpy.run_module("postroom", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
