"""CPU per delivered message of one in-process `deliver()` drain through smtp to the sink (issue 17).

N messages (1 KiB, one recipient) are submitted in batches (not measured), then one
`Session.deliver()` pass drains them through the `smtp` transport to smtp-sink in this process,
as figure 1's spooler does. Measured: the process's CPU (every thread: the loop and the store's
writer) per delivered message, and the pass's rate. `--profile` adds a cProfile of the pass
(top functions by own and cumulative time), `--py-spy` a py-spy sample of it (if installed).

To compare checkouts, `--compare SRC …` runs each source tree (its `src/` on PYTHONPATH) in turn,
A/B/A/B, `--runs` rounds, the order reversed every other round, and prints the medians:

    python benchmarks/drain_cpu.py [-n 3000] [--concurrency 64] [--profile]
    python benchmarks/drain_cpu.py --compare /tmp/base/src src --runs 3
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common as C


def drain(n: int, concurrency: int, connections: int, profile: bool, py_spy: Path | None) -> dict[str, Any]:
    """Submit n, then time one deliver() pass over them: CPU and wall per delivered message."""
    import postroom

    with C.Sink.start() as sink, C.workdir("drain-cpu") as work:
        prof = C.make_profile(work / "p", smtp_port=sink.port, connections=connections, concurrency=concurrency)
        with postroom.logon(prof) as session:
            C.submit_batches(session, n, 1000)
            profiler = cProfile.Profile(time.thread_time) if profile else None  # CPU of the loop thread
            spy = None
            if py_spy is not None:
                spy = C.start_py_spy(os.getpid(), py_spy, 250)
            cpu0, t0 = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            summary = session.deliver()
            if profiler:
                profiler.disable()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
    if summary.delivered != n:
        raise RuntimeError(f"{summary.delivered} of {n} delivered in the pass")
    out: dict[str, Any] = {"n": n, "cpu_ms": cpu * 1000 / n, "rate": n / wall, "postroom": postroom.__file__}
    if profiler is not None:
        out["profile"] = top(profiler, cpu)
    return out


def pipeline(n: int, concurrency: int, connections: int, workers: int, py_spy: Path | None) -> dict[str, Any]:
    """Figure 1's pipeline: the spooler daemon (`--workers W`) delivers while this process submits
    one at a time; the CPU of the daemon's process tree per delivered message."""
    import postroom

    with C.Sink.start() as sink, C.workdir("pipeline-cpu") as work:
        prof = C.make_profile(
            work / "p", smtp_port=sink.port, connections=connections * workers, concurrency=concurrency
        )
        daemon = C.spooler_daemon(prof, work / "daemon.log", workers=workers)
        spy = None
        try:
            C.wait_daemon_ready(prof, daemon, workers=workers)
            if py_spy is not None:
                spy = C.start_py_spy(daemon.pid, py_spy, 250, "--subprocesses")
            cpu0 = C.tree_cpu_seconds(daemon.pid)
            t0 = time.time()
            with postroom.logon(prof) as session:
                store = session.profile.store_path
                C.submit_one_at_a_time(session, n)
            last = C.wait_for_outcomes(store, n, daemon, work / "daemon.log")
            cpu = C.tree_cpu_seconds(daemon.pid) - cpu0
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
        finally:
            C.stop_process(daemon, 30)
    return {"n": n, "cpu_ms": cpu * 1000 / n, "rate": n / (last - t0), "postroom": postroom.__file__}


def top(prof: cProfile.Profile, total: float, limit: int = 45) -> str:
    """The functions with the most own time, then the most cumulative time (shares of the pass's CPU)."""
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = [(tt, ct, nc, func) for func, (_cc, nc, tt, ct, _callers) in st.stats.items()]  # type: ignore[attr-defined]
    text = []
    for title, key in (("own", 0), ("cumulative", 1)):
        text.append(f"by {title} time:  {'own':>7} {'cum':>7} {'share':>6} {'calls':>8}  function")
        for tt, ct, nc, (path, line, name) in sorted(rows, key=lambda r: -r[key])[:limit]:
            short = path.replace(str(C.REPO) + "/src/", "").rsplit("/site-packages/", 1)[-1]
            short = short if len(short) < 50 else "…" + short[-48:]
            share = (tt if key == 0 else ct) / total * 100
            text.append(f"{'':18}{tt:7.3f} {ct:7.3f} {share:5.1f}% {nc:8}  {short}:{line}({name})")
    return "\n".join(text)


def compare(sources: list[str], n: int, runs: int, concurrency: int, connections: int, workers: int) -> None:
    """Each source tree in its own subprocess, interleaved; medians of CPU per message and rate."""
    samples: dict[str, list[dict[str, Any]]] = {s: [] for s in sources}
    for r in range(runs):
        for src in sources if r % 2 == 0 else list(reversed(sources)):
            env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
            cmd = [C.PY, __file__, "-n", str(n), "--concurrency", str(concurrency), "--connections", str(connections)]
            cmd += ["--pipeline", str(workers)] if workers else []
            out = subprocess.run([*cmd, "--one"], env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            samples[src].append(result)
            C.log(f"{src}: {result['cpu_ms']:.3f} ms CPU/msg, {result['rate']:.0f} msg/s ({result['postroom']})")
    load = os.getloadavg()
    what = f"pipeline (daemon --workers {workers})" if workers else "drain"
    print(f"{what} of {n} via smtp, spooler_concurrency {concurrency}, load average {load[0]:.2f} {load[1]:.2f}")
    for src, rs in samples.items():
        cpus = [x["cpu_ms"] for x in rs]
        rates = [x["rate"] for x in rs]
        print(
            f"  {src:<40} {C.median(cpus):6.3f} ms CPU/msg (runs {', '.join(f'{x:.3f}' for x in cpus)})"
            f"  {C.median(rates):6.0f} msg/s (runs {', '.join(f'{x:.0f}' for x in rates)})"
        )


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64, help="spooler_concurrency (default 64)")
    ap.add_argument("--connections", type=int, default=4, help="SMTP connections (default 4)")
    ap.add_argument("--profile", action="store_true", help="cProfile the pass")
    ap.add_argument("--py-spy", type=Path, default=None, help="sample the pass with py-spy into this raw file")
    ap.add_argument("--pipeline", type=int, default=0, help="figure 1's pipeline with this many daemon workers")
    ap.add_argument("--compare", nargs="+", default=None, help="source trees (their src/) to compare")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # one run as JSON, for --compare
    args = ap.parse_args()
    if args.compare:
        compare(args.compare, args.n, args.runs or 3, args.concurrency, args.connections, args.pipeline)
        return 0
    if args.pipeline:
        result = pipeline(args.n, args.concurrency, args.connections, args.pipeline, args.py_spy)
    else:
        result = drain(args.n, args.concurrency, args.connections, args.profile, args.py_spy)
    if args.one:
        print(json.dumps(result))
        return 0
    what = "pipeline" if args.pipeline else "drain"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{what} of {args.n}: {result['cpu_ms']:.3f} ms CPU/msg, {result['rate']:.0f} msg/s; load average {load}")
    if "profile" in result:
        print(result["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
