"""Where the time goes: profiles of submission and delivery (not a figure; quoted in benchmarks/investigations.md).

    python benchmarks/profile_hotspots.py                 # cProfile: submit and deliver, N=2000
    python benchmarks/profile_hotspots.py --py-spy        # + py-spy on the spooler daemon during a fig-1 run

* submit: N × `create_message(…).to(…).submit()` one at a time, under cProfile;
* deliver: N messages queued (submit_many), then one `Session.deliver()` pass into smtp-sink
  under cProfile (in this process: the spooler, the smtp transport and its own SMTP client,
  transports/smtp_client.py, which replaced aiosmtplib: README "A faster SMTP path");
* --py-spy: the CLI spooler daemon, sampled by py-spy (busy samples only) while this
  process submits N messages one at a time — the figure-1 pipeline. Collapsed stacks are summed
  into inclusive and own shares per function.

Shares are of the profiled section's total; cProfile inflates many small calls, py-spy does not.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import common as C


def top(prof: cProfile.Profile, total: float, sort: str, limit: int) -> str:
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats(sort)
    rows = []
    for func, (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((ct if sort == "cumulative" else tt, nc, tt, ct, func))
    rows.sort(reverse=True)
    out = [f"{'cumulative':>10} {'share':>6} {'own':>8} {'calls':>8}  function"]
    for _key, nc, tt, ct, (path, line, name) in rows[:limit]:
        short = path.replace(str(C.REPO) + "/src/", "").replace(sys.prefix, "…")
        short = short if len(short) < 60 else "…" + short[-58:]
        out.append(f"{ct:>10.3f} {ct / total * 100:>5.1f}% {tt:>8.3f} {nc:>8}  {short}:{line}({name})")
    return "\n".join(out)


def profile_submit(n: int, limit: int) -> str:
    import postroom

    with C.workdir("prof-submit") as work, postroom.logon(C.make_profile(work / "p")) as session:
        C.submit_one_at_a_time(session, 20)  # warm-up
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        C.submit_one_at_a_time(session, n, start=20)
        prof.disable()
        wall = time.perf_counter() - t0
    return (
        f"### submit: {n} × submit() one at a time — {n / wall:,.0f} msg/s under the profiler, wall {wall:.2f} s\n\n"
        "```\n" + top(prof, wall, "cumulative", limit) + "\n```\n"
    )


def profile_deliver(n: int, limit: int) -> str:
    import postroom

    with C.Sink.start() as sink, C.workdir("prof-deliver") as work:
        with postroom.logon(C.make_profile(work / "p", smtp_port=sink.port, connections=2, concurrency=4)) as session:
            C.submit_batches(session, n, 1000) if C.has_submit_many(session) else C.submit_one_at_a_time(session, n)
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            summary = session.deliver()
            prof.disable()
            wall = time.perf_counter() - t0
        assert summary.delivered == n, summary.delivered
    return (
        f"### deliver: one deliver() pass over {n} queued messages into {sink.kind} — {n / wall:,.0f} msg/s under "
        f"the profiler, wall {wall:.2f} s\n\n```\n" + top(prof, wall, "cumulative", limit) + "\n```\n"
    )


def profile_daemon(n: int, limit: int) -> str:
    import postroom

    if not Path(C.py_spy_exe()).exists():
        return "### daemon (py-spy)\n\npy-spy is not installed (pip install py-spy)\n"
    with C.Sink.start() as sink, C.workdir("prof-daemon") as work:
        prof = C.make_profile(work / "p", smtp_port=sink.port, connections=2, concurrency=4)
        daemon = C.spooler_daemon(prof, work / "daemon.log")
        raw = work / "stacks.txt"
        try:
            C.wait_daemon_ready(prof, daemon)
            spy = C.start_py_spy(daemon.pid, raw, 200, "--idle")
            t0 = time.perf_counter()
            with postroom.logon(prof) as session:
                C.submit_one_at_a_time(session, n)
                store = session.profile.store_path
            while C.outcome_counts(store).get("delivered", 0) < n:
                time.sleep(0.1)
            wall = time.perf_counter() - t0
            spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
            spy.wait(30)
        finally:
            C.stop_process(daemon, 30)
        inclusive: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if "_run_module_as_main" not in stack:
                continue  # the main thread only (the event loop); worker threads idle in their pool
            k = int(count)
            total += k
            frames = []
            for f in stack.split(";"):
                name, _, where = f.partition(" (")
                file, _, lineno = where.rstrip(")").rpartition(":")
                frames.append((f"{name} ({file.rsplit('/', 1)[-1]})", lineno))
            for f in {name for name, _ in frames}:
                inclusive[f] += k
            name, lineno = frames[-1]
            own[f"{name[:-1]}:{lineno})"] += k
    out = [
        f"### spooler daemon under py-spy during a figure-1 pipeline of {n} messages ({n / wall:,.0f} msg/s)\n",
        f"{total} samples of the daemon's main thread (its event loop) at 200 Hz over {wall:.1f} s, idle samples "
        "included: shares are of wall time. `EpollSelector.select` = the loop waiting for I/O (idle).\n",
        "```",
        f"{'inclusive':>9}  function (file)",
    ]
    trunk = [f for f, k in inclusive.items() if k >= total]  # in every sample: the CLI/asyncio call stack
    out[-1] += "   (frames present in every sample — the CLI/asyncio trunk — left out)"
    for f, k in [(f, k) for f, k in inclusive.most_common() if f not in trunk][:limit]:
        out.append(f"{k / total * 100:>8.1f}%  {f}")
    out.append("```\n\nTop by own samples:\n\n```")
    for f, k in own.most_common(15):
        out.append(f"{k / total * 100:>6.1f}%  {f}")
    out.append("```\n")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--py-spy", action="store_true", help="also sample the spooler daemon with py-spy")
    ap.add_argument("--only", default="submit,deliver")
    ap.add_argument("--output", type=Path, default=None, help="also write the report here (markdown)")
    args = ap.parse_args()
    parts = []
    only = set(args.only.split(","))
    if "submit" in only:
        parts.append(profile_submit(args.n, args.limit))
    if "deliver" in only:
        parts.append(profile_deliver(args.n, args.limit))
    if args.py_spy:
        parts.append(profile_daemon(args.n, args.limit))
    text = "\n".join(parts)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
