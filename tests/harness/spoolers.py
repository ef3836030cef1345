"""Real spooler processes delivering to the counting sink, and the count of what arrived.

Shared by the crash harness and the multi-process tests (several spoolers on one store, a store
outage, the connection limit), so that they start, stop and judge spoolers the same way: a message
is delivered exactly once, or more than once only when its outcome was unknown (a crash or a lost
store connection between the server's 250 and the spooler's commit), and never lost.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int, log: Path, options: Sequence[str] = ()) -> subprocess.Popen[str]:
    """The counting SMTP sink (sink.py): one line per accepted message, `<Message-ID> <recipients>`.
    `options`: sink.py's own (--data-delay, --refuse-rcpt-until)."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "sink.py"), str(port), str(log), *options], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    return proc


def start_spooler(
    profile: Path, log: Path, *, flags: Iterable[str] = ("--force",), env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m postroom --profile DIR spooler`, its output appended to log, unbuffered.
    One spooler process (`--workers 1`) unless `flags` say otherwise: what a test kills is then
    the process that delivers, not a parent supervising it."""
    flags = list(flags)
    if not any(f.startswith("--workers") for f in flags):
        flags += ["--workers", "1"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "postroom", "--profile", str(profile), "spooler", *flags],
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )


def stop(spoolers: Iterable[subprocess.Popen[bytes]], sink: subprocess.Popen[str], seconds: float = 20) -> None:
    """SIGTERM every spooler still running (SIGKILL if it does not end in time), then the sink."""
    spoolers = list(spoolers)
    for spooler in spoolers:
        if spooler.poll() is None:
            spooler.send_signal(signal.SIGTERM)
    for spooler in spoolers:
        try:
            spooler.wait(seconds)
        except subprocess.TimeoutExpired:
            spooler.kill()
            spooler.wait()
    sink.terminate()
    sink.wait()


def smtp_profile(
    directory: Path,
    port: int,
    settings: Mapping[str, Any],
    smtp: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
) -> Path:
    """A profile with one SMTP transport to the sink on 127.0.0.1:port; returns its directory."""
    from postroom.profile import Profile

    profile = Profile.create(directory, with_defaults=False)
    profile.settings.update(settings)
    service = profile.add_service(
        "smtp", "mta", {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 10, **(smtp or {})}
    )
    service.policy = {"retry_min_seconds": 0.5, "retry_max_seconds": 2, "breaker_threshold": 0, **(policy or {})}
    profile.save()
    return profile.directory


def sink_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def sink_counts(log: Path) -> Counter[str]:
    """How many times the sink accepted each Message-ID."""
    return Counter(line.partition(" ")[0] for line in sink_lines(log))


def delivered_by(log: Path) -> int:
    """Recipients a spooler process reported delivered in its pass lines."""
    text = log.read_text(errors="replace")
    return sum(int(n) for n in re.findall(r"(?m)^\d\d:\d\d:\d\d .*?(\d+) recipient\(s\) delivered", text))


@dataclass
class Tally:
    """What became of a set of messages, judged by the sink's log and the store's history."""

    once: int = 0
    duplicates: int = 0
    unknown_duplicates: int = 0  # duplicates explained by an "outcome-unknown" event
    unknown: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def unexplained_duplicates(self) -> int:
        return self.duplicates - self.unknown_duplicates

    def add(self, session: Any, mid: int, label: str, seen: int) -> None:
        """Count one message that the sink accepted `seen` times."""
        was_unknown = outcome_was_unknown(session, mid)
        self.unknown += was_unknown
        if seen == 1:
            self.once += 1
        elif seen > 1:
            self.duplicates += 1
            if was_unknown:
                self.unknown_duplicates += 1
            else:
                history = "; ".join(f"{e.time:%H:%M:%S.%f} {e.kind} {e.detail}" for e in session.events(mid))
                self.problems.append(
                    f"message {mid}{label} delivered {seen} times without a crash to explain it: {history}"
                )
        else:
            self.lost += 1
            states = [(r.state.value, r.transport) for r in session.recipient_states(mid)]
            self.problems.append(f"message {mid}{label} never reached the sink: {states}")


def outcome_was_unknown(session: Any, mid: int) -> bool:
    return any(e.kind == "outcome-unknown" for e in session.events(mid))


def message_id(session: Any, mid: int) -> str:
    from postroom.mapi import tags as T

    return str(session.open_message(mid).get(T.PR_INTERNET_MESSAGE_ID))


def tally(session: Any, ids: Iterable[int], sink_log: Path) -> Tally:
    """Judge every message in ids by how often the sink accepted its Message-ID."""
    counts = sink_counts(sink_log)
    result = Tally()
    for mid in ids:
        result.add(session, mid, "", counts.get(message_id(session, mid), 0))
    return result


def resolve_held(session: Any, sink_log: Path) -> int:
    """The operator's part under crash_policy "hold": the server's log says whether each held message
    arrived; confirm those delivered, release the others. Returns how many were resolved."""
    from postroom.store import QueueState

    arrived = {line.partition(" ")[0] for line in sink_lines(sink_log)}
    resolved = 0
    for entry in session.queue():
        if entry.state is not QueueState.HELD:
            continue
        held_id = message_id(session, entry.id)
        if held_id in arrived:
            session.confirm_delivered(entry.id, f"{held_id} is in the server's log")
        else:
            session.release(entry.id)
        resolved += 1
    return resolved


def child_pids(parent: int) -> list[int]:
    """The pids of a process's live children (a `spooler --workers N` parent's workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)
