"""Figure 9 — start-up time: how long one `postroom` command takes, from exec to exit.

Three commands, each run as its own process: `postroom --version`, `postroom --help`, and
`postroom --profile DIR queue` on a small profile (the default `local` maildir transport, one
message delivered, three waiting in the queue). The console script next to this Python is run
when there is one, else `python -m postroom`.

Reference, same run: `python -c pass`, the interpreter's own start-up and exit.

The commands take turns (one run of each, then the next round), so that other work on the
machine hits them all alike; the figure is the median wall-clock time, and the CPU time (user +
system) of the child is listed beside it because it moves less with the load. Bytecode is cached
as in an installed package (PYTHONDONTWRITEBYTECODE is dropped and PYTHONPYCACHEPREFIX points
into the work directory), and one warm-up run of each command writes the cache first: the
figure is the start-up a user sees, not the compiler.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common as C

REFERENCE = "python -c pass"
TARGETS_MS = {"postroom --version": 150.0, "postroom queue": 300.0}


def postroom_command() -> list[str]:
    """The console script installed beside this Python, else the module."""
    script = Path(C.PY).with_name("postroom")
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [C.PY, "-m", "postroom"]


def small_profile(directory: Path) -> Path:
    """The default profile with one message delivered and three waiting in the queue."""
    import postroom
    from postroom.profile import Profile

    profile = Profile.create(directory)
    with postroom.logon(profile) as session:
        session.create_message("delivered", "x").to("you@localhost").submit()
        session.deliver()
        for i in range(3):
            session.create_message(f"queued {i}", "x").to("you@localhost").submit()
    return directory


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system) of one run; the command must exit 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    args = ap.parse_args()
    runs = args.runs or (3 if args.quick else 40)
    result: dict[str, Any] = {"figure": "Figure 9: start-up time", "key": "fig9", "runs": runs, "notes": []}
    postroom = postroom_command()
    with C.workdir("fig9") as work:
        profile = small_profile(work / "profile")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        env["HOME"] = str(work / "home")  # nothing may touch the user's default profile
        env.pop("POSTROOM_PROFILE", None)
        commands = {
            REFERENCE: [C.PY, "-c", "pass"],
            "postroom --version": [*postroom, "--version"],
            "postroom --help": [*postroom, "--help"],
            "postroom queue": [*postroom, "--profile", str(profile), "queue"],
        }
        for argv in commands.values():
            run_once(argv, env)  # warm-up: writes the bytecode cache
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for r in range(runs):
            for name, argv in commands.items():
                w, c = run_once(argv, env)
                wall[name].append(w)
                cpu[name].append(c)
            if (r + 1) % 10 == 0:
                C.log(f"fig9 round {r + 1}/{runs}")
        shutil.rmtree(work / "pycache", ignore_errors=True)
    median = {name: C.median(v) * 1000 for name, v in wall.items()}
    fastest = {name: min(v) * 1000 for name, v in wall.items()}
    cpu_median = {name: C.median(v) * 1000 for name, v in cpu.items()}
    reference = median[REFERENCE]
    result.update(
        command=" ".join(postroom), samples=wall, cpu_samples=cpu, median_ms=median, min_ms=fastest, cpu_ms=cpu_median
    )
    result["ratios"] = {
        f"{name} / {REFERENCE}": C.ratio(median[name], reference) for name in commands if name != REFERENCE
    }
    result["targets"] = {f"{name} < {limit:.0f} ms": median[name] < limit for name, limit in TARGETS_MS.items()}

    def row(name: str) -> str:
        over = "(reference)"
        if name != REFERENCE:
            over = f"+{median[name] - reference:.0f} ms, {C.fmt_ratio(C.ratio(median[name], reference))}"
        return f"{name:<22}{median[name]:>8.0f}{fastest[name]:>8.0f}{cpu_median[name]:>8.0f}   {over}"

    shown = " ".join(Path(a).name for a in postroom)
    result["lines"] = [
        f"ms from exec to exit, {runs} run(s) of each, in turns; `postroom` runs as `{shown}`",
        f"{'':<22}{'median':>8}{'min':>8}{'CPU':>8}   median over the reference",
        *(row(name) for name in commands),
        "(queue: the default `local` transport, one message sent and three waiting; CPU = user + system, median)",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
