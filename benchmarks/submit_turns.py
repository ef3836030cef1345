"""Where a one-at-a-time submit's time goes while a spooler daemon delivers (issue 17, figure 1).

The daemon (`--workers 1`, spooler_concurrency = argv[2], default 64, smtp to a sink) delivers while
this process submits argv[1] messages one at a time, as figure 1's `run_postroom` does.
turn_probe/sitecustomize.py, loaded in both processes, times each writer turn (the wait for it, how
long it is held, which code took it); the submitter's statements are traced (the COMMIT's share).
GAP=seconds sleeps between submits (a daemon that keeps up: a pass every few messages); ALONE=1
submits with no daemon. From the repository root: `python benchmarks/submit_turns.py 3000`.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import json
import os
import statistics as st
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PROBE = Path(__file__).with_name("turn_probe")
Turn = tuple[float, float, float]


def summary(name: str, turns: list[Turn], span: float) -> None:
    if not turns:
        print(name, "none")
        return
    waits = [got - asked for asked, got, _ in turns]
    holds = sorted(done - got for _, got, done in turns)
    print(
        f"{name}: {len(turns)} turns, {len(turns) / span:.0f}/s; wait mean {st.mean(waits) * 1e3:.2f} ms "
        f"p50 {st.median(waits) * 1e3:.2f} max {max(waits) * 1e3:.1f}; hold mean {st.mean(holds) * 1e3:.2f} ms "
        f"p50 {st.median(holds) * 1e3:.2f} p90 {holds[int(0.9 * len(holds))] * 1e3:.2f} max {holds[-1] * 1e3:.1f}; "
        f"busy {sum(holds) / span * 100:.0f}%"
    )


def main() -> None:
    n = int(sys.argv[1])
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    gap = float(os.environ.get("GAP", "0"))
    alone = os.environ.get("ALONE") == "1"
    work = Path(tempfile.mkdtemp(prefix="submit-turns-"))
    out = str(work / "turns")
    os.environ["TURN_PROBE_OUT"] = out
    os.environ["PYTHONPATH"] = f"{PROBE}:{os.environ.get('PYTHONPATH', '')}"
    sys.path[:0] = [str(Path(__file__).parent), str(PROBE)]
    import common as C
    import sitecustomize as probe

    import postroom

    print(postroom.__file__)
    trace: list[tuple[float, str]] = []
    wal_max = [0]
    with C.Sink.start() as sink:
        profile = C.make_profile(work / "profile", smtp_port=sink.port, connections=4, concurrency=concurrency)
        daemon = None if alone else C.spooler_daemon(profile, work / "daemon.log", workers=1)
        try:
            if daemon is not None:
                C.wait_daemon_ready(profile, daemon)
            with postroom.logon(profile) as session:
                store = session.engine.store
                store_path = session.profile.store_path
                store._db.set_trace_callback(lambda sql: trace.append((time.perf_counter(), sql[:40])))  # type: ignore[attr-defined]
                done = threading.Event()

                def watch_wal() -> None:
                    while not done.is_set():
                        with contextlib.suppress(OSError):
                            wal_max[0] = max(wal_max[0], os.path.getsize(f"{store_path}-wal"))
                        time.sleep(0.01)

                threading.Thread(target=watch_wal, daemon=True).start()
                t0, t0_wall = time.perf_counter(), time.time()
                for i in range(n):
                    session.create_message(f"bench {i}", C.BODY).to(C.RECIPIENT).submit()
                    if gap:
                        time.sleep(gap)
                t1 = time.perf_counter()
                done.set()
            if daemon is not None:
                last = C.wait_for_outcomes(store_path, n, daemon, work / "daemon.log")
                print(f"end to end {n / (last - t0_wall):.0f}/s")
        finally:
            if daemon is not None:
                C.stop_process(daemon, 30)
    print(f"wal max {wal_max[0] / 1e6:.1f} MB")
    print(f"submit rate {n / (t1 - t0):.0f}/s  ({(t1 - t0) / n * 1e3:.3f} ms per submit)")
    mine = [t[:3] for t in probe.TURNS if t0 <= t[0] <= t1]
    summary("submitter", mine, t1 - t0)
    for path in work.glob("turns.[0-9]*"):
        theirs: list[Any] = [t for t in json.loads(path.read_text()) if t0 <= t[0] <= t1]
        summary(f"daemon {path.suffix[1:]}", [tuple(t[:3]) for t in theirs], t1 - t0)
        by_taker: dict[str, list[float]] = collections.defaultdict(list)
        for _, got, let_go, taker in theirs:
            by_taker[taker].append(let_go - got)
        for taker, holds in sorted(by_taker.items(), key=lambda kv: -sum(kv[1])):
            print(
                f"   {taker}: {len(holds)} turns, hold total {sum(holds) * 1e3:.0f} ms mean {st.mean(holds) * 1e3:.2f}"
            )
    for path in work.glob("turns.calls.*"):
        print("daemon calls (whole run)", path.read_text())
    kinds = collections.Counter(sql.split()[0] for _, sql in trace)
    print("statements per submit", len(trace) / n, kinds.most_common(8))
    released = sorted(done for _, _, done in mine)
    commits = [t for t, sql in trace if sql.startswith("COMMIT")]
    begins = [t for t, sql in trace if sql.startswith("BEGIN")]
    fsync = [released[i] - t for t in commits if (i := bisect.bisect_left(released, t)) < len(released)]
    inside = [c - b for b, c in zip(begins, commits, strict=False)]
    if fsync and inside:
        print(
            f"submitter COMMIT (fsync) mean {st.mean(fsync) * 1e3:.2f} ms p50 {st.median(fsync) * 1e3:.2f}; "
            f"BEGIN..COMMIT mean {st.mean(inside) * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
