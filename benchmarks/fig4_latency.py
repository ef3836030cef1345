"""Figure 4 — online latency: from submit() returning to the transport's submit_message being called.

The spooler daemon runs in its own process (the CLI daemon, `postroom --profile DIR spooler`, see
stamp_transport.py) with one transport of kind "stamp" that writes time.monotonic() when its
submit_message is called. This process submits M messages one at a time, with a small gap between
them, and notes time.monotonic() when each submit() returns. Latency = stamp − return (negative
when the daemon called the transport before submit() had returned to its caller).

Reference, same run: the latency floor of the mechanism itself — a Unix datagram from this
process to a process waiting in an asyncio loop, which stamps its arrival (what the daemon's
wake-up costs before any spooler work).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common as C
import stamp_transport  # registers the "stamp" kind in this process too

ECHO_SERVER = r"""
import asyncio, os, socket, sys, time
path, out = sys.argv[1], sys.argv[2]
async def main():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(path); s.setblocking(False)
    loop = asyncio.get_running_loop(); fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    while True:
        data = await loop.sock_recv(s, 256)
        now = time.monotonic()
        if data == b"stop": break
        os.write(fd, data + b"\t%.9f\n" % now)
asyncio.run(main())
"""


def measure_postroom(m: int, gap: float, work: Path) -> dict[str, Any]:
    import postroom

    stamps = work / "stamps.txt"
    prof = C.make_profile(work / "profile", services=[("stamp", "stamp", {"file": str(stamps)})])
    daemon = subprocess.Popen(
        [C.PY, str(C.HERE / "stamp_transport.py"), str(prof)],
        stdout=(work / "daemon.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    returned: dict[str, float] = {}
    try:
        C.wait_daemon_ready(prof, daemon)
        with postroom.logon(prof) as session:
            for i in range(-3, m):  # three warm-up messages, not counted
                session.create_message(f"lat {i}", C.BODY).to(C.RECIPIENT).submit()
                returned[f"lat {i}"] = time.monotonic()
                time.sleep(gap)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = stamp_transport.read_stamps(stamps)
            if all(k in got for k in returned):
                break
            time.sleep(0.05)
    finally:
        C.stop_process(daemon, 30)
    got = stamp_transport.read_stamps(stamps)
    missing = [k for k in returned if k not in got]
    if missing:
        raise RuntimeError(f"{len(missing)} message(s) never reached the transport, e.g. {missing[0]}")
    return {"latencies_ms": [(got[f"lat {i}"] - returned[f"lat {i}"]) * 1000 for i in range(m)]}


def measure_floor(m: int, gap: float, work: Path) -> list[float]:
    path, out = str(work / "echo.sock"), work / "echo.txt"
    proc = subprocess.Popen([C.PY, "-c", ECHO_SERVER, path, str(out)])
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        sent: dict[str, float] = {}
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for i in range(m):
                s.sendto(f"m{i}".encode(), path)
                sent[f"m{i}"] = time.monotonic()
                time.sleep(gap)
            time.sleep(0.2)
            s.sendto(b"stop", path)
        proc.wait(10)
    finally:
        C.stop_process(proc)
    got = {}
    for line in out.read_text().splitlines():
        k, _, t = line.partition("\t")
        got[k] = float(t)
    return [(got[k] - sent[k]) * 1000 for k in sent if k in got]


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-m", type=int, default=None, help="messages per run (default 400; --quick 20)")
    ap.add_argument("--gap", type=float, default=None, help="seconds between submits (default 0.02)")
    args = ap.parse_args()
    m = args.m or (20 if args.quick else 400)
    gap = args.gap if args.gap is not None else 0.02
    runs = args.runs or (1 if args.quick else 3)
    result: dict[str, Any] = {"figure": "Figure 4: online latency", "key": "fig4", "m": m, "runs": runs, "notes": []}
    per_run: list[dict[str, float]] = []
    floor_runs: list[dict[str, float]] = []
    all_lat: list[float] = []
    for r in range(runs):
        C.log(f"fig4 run {r + 1}/{runs}: {m} submits, gap {gap * 1000:g} ms")
        with C.workdir("fig4") as work:
            lat = measure_postroom(m, gap, work)["latencies_ms"]
            floor = measure_floor(m, gap, work)
        all_lat += lat
        per_run.append({"p50": C.percentile(lat, 50), "p99": C.percentile(lat, 99), "max": max(lat)})
        floor_runs.append({"p50": C.percentile(floor, 50), "p99": C.percentile(floor, 99)})
    med = {k: C.median([r[k] for r in per_run]) for k in ("p50", "p99", "max")}
    floor_med = {k: C.median([r[k] for r in floor_runs]) for k in ("p50", "p99")}
    result.update(per_run=per_run, median=med, floor=floor_med, floor_runs=floor_runs)
    result["pooled"] = {"p50": C.percentile(all_lat, 50), "p99": C.percentile(all_lat, 99), "n": len(all_lat)}
    result["targets"] = {"p50 <= 5 ms": med["p50"] <= 5.0, "p99 <= 50 ms": med["p99"] <= 50.0}
    result["lines"] = [
        f"{m} submits per run, {gap * 1000:g} ms apart, daemon in its own process; median over {runs} run(s)",
        f"postroom submit() return → submit_message called:  p50 {med['p50']:.2f} ms   p99 {med['p99']:.2f} ms"
        f"   (max {med['max']:.1f} ms; runs p50/p99: "
        + ", ".join(f"{r['p50']:.2f}/{r['p99']:.2f}" for r in per_run)
        + ")",
        f"reference: Unix datagram → asyncio process wake-up:  p50 {floor_med['p50']:.3f} ms   "
        f"p99 {floor_med['p99']:.3f} ms",
        f"postroom/floor at p50 = {C.fmt_ratio(C.ratio(med['p50'], floor_med['p50']))}",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
