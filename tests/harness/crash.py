"""The crash-and-fault harness: a real spooler process is killed with SIGKILL at random moments and
restarted, while it delivers over SMTP to a sink that injects faults and stops for a while.

At the end every message must be delivered exactly once, or be "outcome unknown" (a kill hit the
window between the server's 250 and the spooler's commit; the default policy resends with the same
Message-ID, so such a message may arrive twice), or have its NDR (5xx recipients). None is lost.

    python -m tests.harness.crash --messages 5000 --kills 100      # the long run for RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import spoolers
from tests.harness.spoolers import Tally, free_port, message_id, outcome_was_unknown, sink_counts, start_sink, stop

SPOOLER_FLAGS: list[str] = ["--force"] if os.environ.get("POSTROOM_HARNESS_FORCE", "1") == "1" else []
FAULTS = ["ok"] * 14 + ["rcpt4xx", "rcpt5xx", "data421", "drop"]


@dataclass
class Report:
    messages: int
    kills: int
    outcome: Tally = field(default_factory=Tally)  # the messages that should arrive (all but the 5xx ones)
    unknown_refused: int = 0  # outcome-unknown among the 5xx ones (resent, refused again)
    ndrs: int = 0
    ndr_expected: int = 0
    sink_outages: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        outcome = self.outcome
        return (
            not self.problems
            and outcome.lost == 0
            and outcome.unexplained_duplicates == 0
            and self.ndrs == self.ndr_expected
        )

    def table(self) -> str:
        rows = [
            ("messages", self.messages),
            ("kills (SIGKILL)", self.kills),
            ("sink outages", self.sink_outages),
            ("delivered exactly once", self.outcome.once),
            ("duplicates", self.outcome.duplicates),
            ("  of which outcome unknown", self.outcome.unknown_duplicates),
            ("outcome unknown (resent)", self.outcome.unknown + self.unknown_refused),
            ("lost", self.outcome.lost),
            ("NDRs (expected)", f"{self.ndrs} ({self.ndr_expected})"),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def start_spooler(profile: Path, log: Path) -> subprocess.Popen[bytes]:
    return spoolers.start_spooler(profile, log, flags=SPOOLER_FLAGS)


def make_profile(work: Path, port: int, store: str | None = None) -> Path:
    import postroom
    from postroom.profile import Profile

    profile = Profile.create(work / "profile", with_defaults=False)
    profile.settings.update({"lease_seconds": 2.0, "max_queue_lifetime_hours": 24.0, "crash_policy": "resend"})
    if store is not None:
        profile.settings["store"] = store  # e.g. a PostgreSQL URL: the same harness against that store
    service = profile.add_service(
        "smtp",
        "mta",
        {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "connections": 2,
            "timeout": 5,
            "temporary_failure_wait": 0.5,
        },
    )
    service.policy = {
        "retry_min_seconds": 0.3,
        "retry_max_seconds": 2,
        "breaker_threshold": 50,
        "breaker_seconds": 1,
    }
    profile.save()
    del postroom
    return profile.directory


def submit(profile_dir: Path, n: int, rng: random.Random) -> dict[int, str]:
    """Submit n messages, one recipient each; returns message ID → fault kind."""
    import postroom
    from postroom.profile import Profile

    kinds: dict[int, str] = {}
    with postroom.logon(Profile.load(profile_dir)) as s:
        for i in range(n):
            kind = rng.choice(FAULTS)
            mid = s.create_message(f"harness {i}", f"message {i}\n").to(f"{kind}-{i}@sink.test").submit()
            kinds[mid] = kind
    return kinds


def run(
    messages: int, kills: int, work: Path, seed: int = 1, timeout: float = 600.0, store: str | None = None
) -> Report:
    """Run the harness; returns its report (the caller decides whether to fail)."""
    import postroom
    from postroom.profile import Profile

    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sink_log = work / "sink.log"
    sink_log.touch()
    spool_log = work / "spooler.log"
    report = Report(messages, 0)
    profile_dir = make_profile(work, port, store)
    kinds = submit(profile_dir, messages, rng)
    sink = start_sink(port, sink_log)
    spooler = start_spooler(profile_dir, spool_log)
    started = time.monotonic()
    outage_done = False
    try:
        with postroom.logon(Profile.load(profile_dir)) as watcher:
            while time.monotonic() - started < timeout:
                remaining = [q for q in watcher.queue()]
                if not remaining and report.kills >= kills:
                    break
                if report.kills < kills:
                    time.sleep(rng.uniform(0.2, 1.2))
                    spooler.send_signal(signal.SIGKILL)
                    spooler.wait()
                    report.kills += 1
                    spooler = start_spooler(profile_dir, spool_log)
                    if not outage_done and report.kills == kills // 2:
                        # The server goes away for a while and comes back on the same port.
                        sink.terminate()
                        sink.wait()
                        time.sleep(1.5)
                        sink = start_sink(port, sink_log)
                        report.sink_outages += 1
                        outage_done = True
                else:
                    time.sleep(0.5)
            report.seconds = time.monotonic() - started
            left = watcher.queue()
            if left:
                report.problems.append(f"{len(left)} message(s) still queued after {timeout:.0f} s")
            for summary in watcher.list_messages("Inbox"):
                if summary.message_class == "REPORT.IPM.Note.NDR":
                    report.ndrs += 1
            counts = sink_counts(sink_log)
            for mid, kind in kinds.items():
                seen = counts.get(message_id(watcher, mid), 0)
                if kind != "rcpt5xx":
                    report.outcome.add(watcher, mid, f" ({kind})", seen)
                    continue
                report.ndr_expected += 1
                report.unknown_refused += outcome_was_unknown(watcher, mid)
                if seen:
                    report.problems.append(f"message {mid} ({kind}) was accepted {seen} time(s)")
            report.problems += report.outcome.problems
    finally:
        stop([spooler], sink, seconds=10)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store", default=None, help="a PostgreSQL URL (default: the profile's SQLite store)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "postroom-crash")
    args = parser.parse_args()
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    report = run(
        args.messages, args.kills, args.work, args.seed, timeout=max(600.0, args.messages * 0.5), store=args.store
    )
    print(report.table())
    for p in report.problems[:20]:
        print("problem:", p)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
