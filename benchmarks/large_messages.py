"""Large messages — 1 MiB messages submitted and delivered through the maildir transport.

postroom: N messages whose body is 1 MiB of text (lines of 78 characters), one recipient,
submitted one at a time (each durable), then delivered by one Session.deliver() pass through a
`maildir` transport (each file fsync'ed, as Maildir delivery does). Rates in MB/s of message body
(1 MB = 10**6 bytes) and messages per second. Goal (issue 17 point 7): delivery >= 50 MB/s.

Reference, same run: the disk floor of the same delivery: this process writes the same number of
1 MiB files into a Maildir-like tmp/ → new/ with the same fsyncs (file, then directory), and
nothing else.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import common as C

MIB = 1 << 20
LINE = "x" * 77 + "\n"
BIG_BODY = LINE * (MIB // len(LINE)) + "y" * (MIB % len(LINE))  # exactly 1 MiB of text
DOMAIN = "sink.test"


def postroom_rates(n: int, work: Path) -> tuple[float, float]:
    """(submit MB/s, delivery MB/s) of n messages with a 1 MiB body."""
    import postroom

    prof = C.make_profile(
        work / "profile", services=[("maildir", "local", {"root": str(work / "maildir"), "domains": [DOMAIN]})]
    )
    with postroom.logon(prof) as session:
        t0 = time.perf_counter()
        for i in range(n):
            session.create_message(f"large {i}", BIG_BODY).to(f"big@{DOMAIN}").submit()
        submitted = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = session.deliver()
        delivered = time.perf_counter() - t0
    files = list((work / "maildir" / DOMAIN / "big" / "new").iterdir())
    if len(files) != n:
        raise RuntimeError(f"expected {n} delivered files, found {len(files)} ({summary})")
    return n * MIB / submitted / 1e6, n * MIB / delivered / 1e6


def disk_floor(n: int, work: Path) -> float:
    """MB/s of writing n 1 MiB files the Maildir way: tmp/, fsync, rename into new/, fsync new/."""
    box = work / "floor"
    for sub in ("tmp", "new"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    data = BIG_BODY.encode()
    t0 = time.perf_counter()
    for i in range(n):
        tmp = box / "tmp" / f"{i}.msg"
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, box / "new" / tmp.name)
        fd = os.open(box / "new", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return n * MIB / (time.perf_counter() - t0) / 1e6


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages per run (default 100; --quick 10)")
    args = ap.parse_args()
    n = args.n or (10 if args.quick else 100)
    runs = args.runs or (1 if args.quick else 3)
    samples: dict[str, list[float]] = {"submit": [], "deliver": [], "floor": []}
    for r in range(runs):
        C.log(f"large messages round {r + 1}/{runs}")
        with C.workdir("large") as work:
            submit, deliver = postroom_rates(n, work)
            samples["submit"].append(submit)
            samples["deliver"].append(deliver)
            samples["floor"].append(disk_floor(n, work))
    med = {k: C.median(v) for k, v in samples.items()}
    result: dict[str, Any] = {
        "figure": "Large messages: 1 MiB through maildir",
        "key": "large",
        "n": n,
        "runs": runs,
        "samples": samples,
        "median": med,
        "ratios": {"deliver/floor": C.ratio(med["deliver"], med["floor"])},
        "targets": {"delivery >= 50 MB/s": med["deliver"] >= 50},
        "notes": [],
    }

    def line(label: str, key: str) -> str:
        runs_txt = ", ".join(f"{x:,.1f}" for x in samples[key])
        return f"{label:<58} {med[key]:>8,.1f} MB/s  ({med[key] * 1e6 / MIB:,.1f} msg/s; runs: {runs_txt})"

    result["lines"] = [
        f"N = {n} messages with a 1 MiB body, 1 recipient; median of {runs} run(s)",
        line("postroom submit(), one at a time, each durable", "submit"),
        line("postroom deliver() through maildir (fsync per file)", "deliver"),
        line("disk floor: the same files written tmp/ → new/ with fsyncs", "floor"),
        f"delivery/floor = {C.fmt_ratio(result['ratios']['deliver/floor'])}",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
