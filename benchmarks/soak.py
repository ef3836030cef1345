"""Soak (issue 14): N messages over four transports while spooler daemons are SIGKILLed and the
PostgreSQL server is restarted; nothing may be lost, every duplicate must be explained by an
"outcome unknown" in the history, and local mail must not wait behind the SMTP backlog.

The transports, routed by the recipient's domain (transport order fast, slow, flaky, local):

  fast   smtp → a counting sink (tests/harness/sink.py) that accepts at once      fast.test
  slow   smtp → the same sink answering the end of DATA after 0.2–0.5 s           slow.test
  flaky  smtp → the same sink answering 451 at RCPT for the first REFUSE seconds  flaky.test
  local  maildir, one root directory shared by the daemons                        localhost

Two `postroom spooler` daemons (real processes, each with its own profile on the same store)
deliver: daemon A is SIGKILLed every ~KILL seconds and started again; daemon B runs throughout,
so its resident memory over the run is the memory figure. The store is a fresh schema in a
private PostgreSQL cluster started for the run (.ci/start-postgres with its own state directory),
restarted once mid-run with `pg_ctl restart -m fast`; with --store sqlite, one SQLite file
(no restart). A burst of SMTP mail is submitted first (the backlog), then batches every few seconds.

Judged at the end: every message's Message-ID is counted at its sink (or in the Maildir files);
the store's history says which messages had an unknown outcome (crash_policy resend); the wait
of each maildir message is submit (the history's "submitted" event) → its Maildir file's mtime.

    python benchmarks/soak.py            # 20,000 messages, ~12-15 min
    python benchmarks/soak.py --quick    # 1,000 messages, ~30 s (CI: tests/integration/test_benchmarks_quick.py)
    python benchmarks/soak.py --store sqlite -n 5000

Exit status 1 when a message was lost, a duplicate is unexplained, an unexpected NDR came back,
a message is still queued at the end, nothing was delivered for STALL seconds while SMTP mail was
queued (a hang) or a daemon died by itself; also, in a full run, when a target (maildir p99) is
missed. In --quick mode the targets are reported, not enforced. When daemon B writes no pass line
for STALL seconds, its thread and asyncio task stacks are dumped into its log (soak_daemon.py).
"""

from __future__ import annotations

import contextlib
import email.parser
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common as C
from tests.harness.spoolers import Tally, sink_counts, start_sink
from tests.store.pgutil import with_schema

KINDS = ("fast", "slow", "flaky", "local")
DOMAINS = {"fast": "fast.test", "slow": "slow.test", "flaky": "flaky.test", "local": "localhost"}
MIX = {"fast": 0.45, "slow": 0.25, "flaky": 0.10, "local": 0.20}
SMTP_BACKLOG = ("fast", "slow")  # the backlog the maildir messages must not wait behind
BACKLOG_MIN = 100  # "while the SMTP backlog drains": submitted while at least this many were queued
MAILDIR_P99_TARGET = 10.0
PASS_LINE = re.compile(rb"(?m)^\d\d:\d\d:\d\d \d+ message\(s\)")


@dataclass(frozen=True)
class Plan:
    """The run's shape; --quick scales it down to about a minute."""

    messages: int
    burst: int  # SMTP messages (fast and slow) submitted at once at the start: the backlog
    submit_seconds: float  # the rest is submitted in batches over this long
    batch_every: float
    refuse_seconds: float  # the flaky server answers 451 at RCPT this long from the start
    kill_every: float
    restart_at: float  # seconds into the run: the PostgreSQL restart
    lease_seconds: float
    flaky_policy: dict[str, float]
    slow_delay: tuple[float, float]
    concurrency: int
    sample_every: float
    table_every: float
    drain_timeout: float
    stall_seconds: float  # no delivery this long while SMTP mail is queued: a hang (B silent this long: a note)

    @classmethod
    def full(cls, n: int) -> Plan:
        return cls(
            messages=n,
            burst=n // 10,
            submit_seconds=600.0,
            batch_every=2.0,
            refuse_seconds=600.0,
            kill_every=30.0,
            restart_at=270.0,
            lease_seconds=10.0,
            flaky_policy={"retry_min_seconds": 30, "retry_max_seconds": 120},
            slow_delay=(0.2, 0.5),
            concurrency=8,
            sample_every=5.0,
            table_every=120.0,
            drain_timeout=1800.0,
            stall_seconds=60.0,
        )

    @classmethod
    def quick(cls, n: int) -> Plan:
        return cls(
            messages=n,
            burst=n // 10,
            submit_seconds=12.0,
            batch_every=0.5,
            refuse_seconds=9.0,
            kill_every=5.0,
            restart_at=6.0,
            lease_seconds=3.0,
            flaky_policy={"retry_min_seconds": 2, "retry_max_seconds": 4},
            slow_delay=(0.05, 0.15),
            concurrency=8,
            sample_every=1.0,
            table_every=5.0,
            drain_timeout=120.0,
            stall_seconds=20.0,
        )


# --- the store: a private PostgreSQL cluster (restartable), or an SQLite file ---------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of our own (.ci/start-postgres with its own state directory), so that
    restarting it disturbs nobody else's tests. Listens on 127.0.0.1 only; removed afterwards."""

    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="postroom-soak-pg-"))
        os.chmod(self.state, 0o755)  # the server runs as the postgres user when we are root
        env = {k: v for k, v in os.environ.items() if k not in ("POSTROOM_TEST_PG_URL", "PGPASSFILE")}
        env["POSTROOM_PG_STATE"] = str(self.state)
        out = subprocess.run(
            ["bash", str(C.REPO / ".ci" / "start-postgres")], capture_output=True, text=True, env=env, timeout=300
        )
        exports = dict(tok.split("=", 1) for tok in shlex.split(out.stdout) if "=" in tok)
        if "POSTROOM_TEST_PG_URL" not in exports:
            shutil.rmtree(self.state, ignore_errors=True)
            raise RuntimeError(f"no private PostgreSQL cluster: {out.stderr.strip()[-500:]}")
        self.url = exports["POSTROOM_TEST_PG_URL"]
        os.environ["PGPASSFILE"] = exports["PGPASSFILE"]  # for us and the daemons we start
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
        self.pg_ctl = str(bins[-1]) if bins else "pg_ctl"
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def ctl(self, *args: str) -> None:
        data = self.state / "data"
        cmd = [*self.run_as, self.pg_ctl, "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "120", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def restart(self) -> float:
        """`pg_ctl restart -m fast`: every connection is cut, the server is down for a moment."""
        t0 = time.monotonic()
        self.ctl("restart", "-m", "fast")
        return time.monotonic() - t0

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ctl("stop", "-m", "fast")
        shutil.rmtree(self.state, ignore_errors=True)


class Probe:
    """Reads the store's tables directly, with a connection of its own (what is committed)."""

    def __init__(self, store: str, schema: str | None) -> None:
        self.store = store
        self.schema = schema

    @contextlib.contextmanager
    def _db(self) -> Iterator[Any]:
        if self.schema is None:
            db = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=30)
            try:
                yield db
            finally:
                db.close()
        else:
            import psycopg

            with psycopg.connect(self.store, connect_timeout=3) as conn:
                yield conn

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.schema is None:
            with self._db() as db:
                return list(db.execute(sql, params).fetchall())
        with self._db() as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())

    def size_bytes(self) -> int:
        if self.schema is None:
            return sum(p.stat().st_size for p in Path(self.store).parent.glob(Path(self.store).name + "*"))
        return int(
            self.rows(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ? AND c.relkind = 'r'",
                (self.schema,),
            )[0][0]
        )

    def sample(self) -> dict[str, Any]:
        queued = [int(r[0]) for r in self.rows("SELECT id FROM messages WHERE queue_state IS NOT NULL")]
        delivered = int(self.rows("SELECT count(*) FROM recipients WHERE state='delivered'")[0][0])
        events = int(self.rows("SELECT count(*) FROM events")[0][0])
        return {"queued": queued, "delivered": delivered, "events": events, "store_bytes": self.size_bytes()}


# --- daemons and memory -------------------------------------------------------------------------------


def vm_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class Daemon:
    """One `postroom spooler` daemon's profile and its current process."""

    name: str
    profile: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    peak_kib: int = 0  # VmHWM over all its lives
    progress_at: float = 0.0
    log_size: int = 0
    silences: list[list[float]] = field(default_factory=list)  # [from t, seconds] without a pass line

    def start(self) -> None:
        """`postroom spooler` through soak_daemon.py (the CLI, plus stack dumps on SIGUSR1/SIGUSR2)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [C.PY, str(C.HERE / "soak_daemon.py"), "--profile", str(self.profile), "spooler", "--workers", "1"],
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.starts += 1
        self.progress_at = time.monotonic()
        self.log_size = self.log.stat().st_size

    def silent_for(self) -> float:
        """Seconds since its last pass line (written after every daemon pass that did something)."""
        size = self.log.stat().st_size
        if size > self.log_size:
            with self.log.open("rb") as f:
                f.seek(self.log_size)
                if PASS_LINE.search(f.read(size - self.log_size)):
                    self.progress_at = time.monotonic()
            self.log_size = size
        return time.monotonic() - self.progress_at

    def dump_stacks(self) -> None:
        """Where it is: threads (works while the event loop is blocked), then asyncio tasks."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            self.proc.send_signal(signal.SIGUSR2)

    def note_memory(self) -> int:
        """The current VmRSS (KiB); keeps the peak (VmHWM) up to date."""
        if self.proc is None or self.proc.poll() is not None:
            return 0
        self.peak_kib = max(self.peak_kib, vm_kib(self.proc.pid, "VmHWM"))
        return vm_kib(self.proc.pid, "VmRSS")

    def kill(self) -> None:
        assert self.proc is not None
        self.note_memory()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int | None:
        """SIGTERM; the exit status (None: it had to be killed)."""
        if self.proc is None:
            return None
        self.note_memory()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


# --- profiles and submission ----------------------------------------------------------------------------


def make_profile(directory: Path, store: str, ports: dict[str, int], maildir: Path, plan: Plan) -> Path:
    from postroom.profile import Profile

    profile = Profile.create(directory, with_defaults=False)
    profile.settings.update(
        {
            "store": store,
            "lease_seconds": plan.lease_seconds,
            "crash_policy": "resend",
            "spooler_concurrency": plan.concurrency,
            "sender_address": C.SENDER,
        }
    )
    connections = {"fast": 4, "slow": 3, "flaky": 2}
    for kind in ("fast", "slow", "flaky"):
        options = {
            "host": "127.0.0.1",
            "port": ports[kind],
            "security": "none",
            "connections": connections[kind],
            "timeout": 30,
            "domains": [DOMAINS[kind]],
            "sender": C.SENDER,
        }
        service = profile.add_service("smtp", kind, options)
        if kind == "flaky":
            service.policy = dict(plan.flaky_policy)
    profile.add_service("maildir", "local", {"root": str(maildir), "domains": [DOMAINS["local"]]})
    profile.save()
    return directory


@dataclass
class Submitted:
    """What was submitted: per message index its kind, Message-ID and store ID."""

    kinds: list[str] = field(default_factory=list)
    mids: list[int] = field(default_factory=list)
    retries: int = 0  # submit_many calls repeated after a store error

    def message_id(self, i: int, run: str) -> str:
        return f"<soak-{i}.{run}@soak.test>"


def choose_kinds(plan: Plan, rng: random.Random) -> list[str]:
    smtp = {k: MIX[k] for k in SMTP_BACKLOG}
    burst = rng.choices(list(smtp), weights=list(smtp.values()), k=plan.burst)
    rest = rng.choices(list(MIX), weights=list(MIX.values()), k=plan.messages - plan.burst)
    return burst + rest


def submit_batch(session: Any, first: int, kinds: list[str], run: str, sub: Submitted) -> None:
    from postroom.mapi import tags as T
    from postroom.mapi.codes import HResult, MAPIError

    drafts = []
    for i in range(first, first + len(kinds)):
        kind = kinds[i - first]
        draft = session.create_message(f"soak {i} ({kind})", C.BODY).to(f"u{i % 8}@{DOMAINS[kind]}")
        drafts.append(draft.set(T.PR_INTERNET_MESSAGE_ID, sub.message_id(i, run)))
    for attempt in range(30):
        try:
            sub.mids += session.submit_many(drafts)
            sub.kinds += kinds
            return
        except MAPIError as exc:  # e.g. the first use of a pooled connection the restart cut
            if exc.code is not HResult.MAPI_E_NETWORK_ERROR or attempt == 29:
                raise
            sub.retries += 1
            time.sleep(1.0)


# --- the run -------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    submitted: int
    delivered: int
    backlog: dict[str, int]
    rss_b: int
    rss_a: int
    store_bytes: int
    events: int
    load: str


@dataclass
class Run:
    plan: Plan
    store_kind: str
    samples: list[Sample] = field(default_factory=list)
    kills: int = 0
    restarts: list[float] = field(default_factory=list)  # seconds the server was being restarted
    kill_times: list[float] = field(default_factory=list)
    restart_t: float | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    submit_seconds: float = 0.0
    drained: bool = False


def run_soak(plan: Plan, store_kind: str, work: Path, seed: int) -> dict[str, Any]:
    import postroom
    from postroom.profile import Profile

    rng = random.Random(seed)
    run_tag = uuid.uuid4().hex[:8]
    maildir = work / "maildir"
    logs = {k: work / f"sink-{k}.log" for k in ("fast", "slow", "flaky")}
    ports = {k: C.free_port() for k in logs}
    pg: PrivatePostgres | None = None
    schema: str | None = None
    started = 0.0  # time.time() at t = 0 (the samples' t count from there)
    sinks: list[subprocess.Popen[str]] = []
    daemons: list[Daemon] = []
    r = Run(plan, store_kind)
    sub = Submitted()
    kinds = choose_kinds(plan, rng)
    try:
        if store_kind == "postgresql":
            C.log("starting a private PostgreSQL cluster")
            pg = PrivatePostgres()
            import psycopg

            schema = f"soak_{run_tag}"
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
            store = with_schema(pg.url, schema)
        else:
            store = str(work / "store.sqlite")
        client = make_profile(work / "client", store, ports, maildir, plan)
        for name in ("A", "B"):
            daemons.append(Daemon(name, make_profile(work / name, store, ports, maildir, plan), work / f"{name}.log"))
        sink_options = {
            "fast": [],
            "slow": ["--data-delay", f"{plan.slow_delay[0]}:{plan.slow_delay[1]}"],
            "flaky": ["--refuse-rcpt-until", f"{time.time() + plan.refuse_seconds:.3f}"],
        }
        for kind, log in logs.items():
            log.touch()
            sinks.append(start_sink(ports[kind], log, sink_options[kind]))
        probe = Probe(store, schema)
        a, b = daemons
        with postroom.logon(Profile.load(client)) as session:
            t0, started = time.monotonic(), time.time()
            submit_batch(session, 0, kinds[: plan.burst], run_tag, sub)  # the backlog, before the daemons start
            for d in daemons:
                d.start()
            batches = max(1, round(plan.submit_seconds / plan.batch_every))
            rest = plan.messages - plan.burst
            cuts = [plan.burst + rest * k // batches for k in range(batches + 1)]
            next_batch, next_kill, next_sample = 0, t0 + plan.kill_every, t0
            deadline: float | None = None
            C.log(f"soak: {plan.messages} messages, {store_kind}; burst of {plan.burst}, then {batches} batches")
            while True:
                now = time.monotonic()
                elapsed = now - t0
                if next_batch < batches and elapsed >= next_batch * plan.batch_every:
                    lo, hi = cuts[next_batch], cuts[next_batch + 1]
                    submit_batch(session, lo, kinds[lo:hi], run_tag, sub)
                    next_batch += 1
                    if next_batch == batches:
                        r.submit_seconds = time.monotonic() - t0
                        deadline = time.monotonic() + plan.drain_timeout
                if pg is not None and r.restart_t is None and elapsed >= plan.restart_at:
                    C.log(f"t={elapsed:.0f} s: pg_ctl restart -m fast")
                    r.restart_t = elapsed
                    r.restarts.append(pg.restart())
                for d in daemons:  # started again at once, as a service manager would
                    if d.proc is not None and d.proc.poll() is not None:
                        exited_by_itself(r, d, elapsed)
                        d.start()
                if now >= next_kill:
                    a.kill()
                    r.kills += 1
                    r.kill_times.append(elapsed)
                    a.start()
                    next_kill = now + plan.kill_every * rng.uniform(0.8, 1.2)
                busy = bool(r.samples) and any(r.samples[-1].backlog[k] for k in SMTP_BACKLOG)
                silent = b.silent_for()
                if busy and silent > plan.stall_seconds:
                    if not b.silences or sum(b.silences[-1]) < elapsed - silent - 1:  # a new silence
                        C.log(
                            f"t={elapsed:.0f} s: daemon B has written no pass line for {silent:.0f} s (stacks: B.log)"
                        )
                        b.silences.append([elapsed - silent, silent])
                        b.dump_stacks()
                    b.silences[-1][1] = silent
                if now >= next_sample:
                    next_sample = now + plan.sample_every
                    snap = take_sample(probe, sub, a, b, elapsed)
                    if snap is not None:
                        r.samples.append(snap)
                        empty = sum(snap.backlog.values()) == 0
                        if next_batch == batches and empty:
                            r.drained = True
                            break
                if deadline is not None and now > deadline:
                    r.problems.append(f"the queue did not drain within {plan.drain_timeout:.0f} s of the last batch")
                    break
                time.sleep(0.05)
            r.seconds = time.monotonic() - t0
            r.problems += hangs(r.samples, plan.stall_seconds)
            # B's last figure before it stops (A's lives are in its VmHWM peak).
            b.note_memory()
            statuses = {d.name: d.stop() for d in daemons}
            if statuses["B"] != 0:
                r.problems.append(f"daemon B did not stop cleanly on SIGTERM (status {statuses['B']})")
            for s in sinks:
                s.terminate()
                s.wait()
            sinks = []
            result = judge(r, session, probe, sub, run_tag, logs, maildir, work, daemons, started)
    finally:
        for d in daemons:
            with contextlib.suppress(Exception):
                d.stop()
        for s in sinks:
            s.terminate()
            s.wait()
        if pg is not None:
            pg.stop()
    return result


def exited_by_itself(r: Run, d: Daemon, elapsed: float) -> None:
    """A daemon ended without being told to. One that was starting while PostgreSQL restarted may
    end with exit status 2 by design (a store that cannot be reached at start is an error at once):
    a note. Anything else is a problem."""
    assert d.proc is not None
    status = d.proc.returncode
    starting = r.restart_t is not None and elapsed - r.restart_t < 30 and status == 2
    said = "cannot connect to the message store" in d.log.read_text(errors="replace")[-2000:]
    text = f"daemon {d.name} exited by itself at t={elapsed:.0f} s (status {status}); started again"
    if starting and said:
        r.notes.append(text + ": it could not reach the store at start, during the PostgreSQL restart")
    else:
        r.problems.append(text)


def hangs(samples: list[Sample], seconds: float) -> list[str]:
    """Stretches longer than `seconds` in which nothing was delivered while SMTP mail was queued."""
    out = []
    since: Sample | None = None
    for s in samples:
        if since is None or s.delivered != since.delivered or not any(s.backlog[k] for k in SMTP_BACKLOG):
            since = s
        elif s.t - since.t > seconds:
            out.append(f"nothing was delivered from t={since.t:.0f} s to t={s.t:.0f} s while SMTP mail was queued")
            since = s
    return out


def take_sample(probe: Probe, sub: Submitted, a: Daemon, b: Daemon, elapsed: float) -> Sample | None:
    try:
        snap = probe.sample()
    except Exception:  # the server is restarting: skip this sample
        return None
    kind_of = dict(zip(sub.mids, sub.kinds, strict=True))
    backlog = Counter(kind_of.get(mid, "?") for mid in snap["queued"])
    return Sample(
        t=elapsed,
        submitted=len(sub.mids),
        delivered=snap["delivered"],
        backlog={k: backlog.get(k, 0) for k in KINDS},
        rss_b=b.note_memory(),
        rss_a=a.note_memory(),
        store_bytes=snap["store_bytes"],
        events=snap["events"],
        load=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
    )


# --- judging ----------------------------------------------------------------------------------------------


class History:
    """The store's history of every message, read in one query, as the harness's Tally reads it
    (`events(mid)`); anything else it asks is answered by the session."""

    def __init__(self, probe: Probe, session: Any) -> None:
        self.session = session
        self.by_message: dict[int, list[Any]] = defaultdict(list)
        from postroom.store import Event

        for mid, t, kind, transport, detail in probe.rows(
            "SELECT message_id, time, kind, transport, detail FROM events ORDER BY id"
        ):
            self.by_message[int(mid)].append(
                Event(time=datetime.fromtimestamp(float(t), UTC), kind=kind, transport=transport, detail=detail)
            )

    def events(self, mid: int) -> list[Any]:
        return self.by_message.get(mid, [])

    def recipient_states(self, mid: int) -> Any:
        return self.session.recipient_states(mid)


def maildir_deliveries(maildir: Path) -> tuple[Counter[str], dict[str, float]]:
    """Message-ID → Maildir files holding it, and the first file's mtime."""
    counts: Counter[str] = Counter()
    first: dict[str, float] = {}
    parser = email.parser.BytesHeaderParser()
    for path in maildir.glob("*/*/new/*"):
        with path.open("rb") as f:
            mid = str(parser.parse(f).get("Message-ID", "<none>")).strip()
        counts[mid] += 1
        mtime = path.stat().st_mtime
        first[mid] = min(first.get(mid, mtime), mtime)
    return counts, first


def judge(
    r: Run,
    session: Any,
    probe: Probe,
    sub: Submitted,
    run_tag: str,
    logs: dict[str, Path],
    maildir: Path,
    work: Path,
    daemons: list[Daemon],
    started: float,
) -> dict[str, Any]:
    plan = r.plan
    history = History(probe, session)
    seen = {kind: sink_counts(log) for kind, log in logs.items()}
    seen["local"], first_file = maildir_deliveries(maildir)
    outcome = Tally()
    per_kind: dict[str, Tally] = {k: Tally() for k in KINDS}
    waits: list[tuple[float, float]] = []  # (submitted at, seconds waited) of each maildir message
    slow_ones: list[dict[str, Any]] = []  # the maildir messages that waited longer than the target
    for i, (kind, mid) in enumerate(zip(sub.kinds, sub.mids, strict=True)):
        message_id = sub.message_id(i, run_tag)
        count = seen[kind].get(message_id, 0)
        for other in KINDS:
            if other != kind and seen[other].get(message_id):
                r.problems.append(f"message {mid} ({kind}) arrived at {other}")
        outcome.add(history, mid, f" ({kind})", count)
        per_kind[kind].add(history, mid, f" ({kind})", count)
        if kind == "local" and message_id in first_file:
            submitted = next((e.time.timestamp() for e in history.events(mid) if e.kind == "submitted"), None)
            if submitted is not None:
                waits.append((submitted, first_file[message_id] - submitted))
                if first_file[message_id] - submitted > MAILDIR_P99_TARGET:
                    slow_ones.append(
                        {
                            "mid": mid,
                            "t": round(submitted - started, 1),
                            "wait": round(first_file[message_id] - submitted, 1),
                            "history": [
                                f"{e.time:%H:%M:%S.%f} {e.kind} {e.transport or ''} {e.detail}"[:200]
                                for e in history.events(mid)
                            ],
                        }
                    )
    ndrs = sum(1 for s in session.list_messages("Inbox") if s.message_class == "REPORT.IPM.Note.NDR")
    left = len(session.queue())
    if left:
        r.problems.append(f"{left} message(s) still queued at the end")
    r.problems += outcome.problems[:20]

    # The SMTP backlog when each maildir message was submitted (the last sample before it).
    sample_at = [(started + s.t, sum(s.backlog[k] for k in SMTP_BACKLOG)) for s in r.samples]
    behind: list[float] = []
    for at, wait in waits:
        before = [n for t, n in sample_at if t <= at]
        if before and before[-1] >= BACKLOG_MIN:
            behind.append(wait)
    all_waits = [w for _, w in waits]
    rows = sum(len(v) for v in history.by_message.values())
    per_message = [len(history.events(mid)) for mid in sub.mids]
    rows_by_kind = {
        k: C.median([len(history.events(mid)) for mid, kk in zip(sub.mids, sub.kinds, strict=True) if kk == k])
        for k in KINDS
    }
    a, b = daemons
    b_rss = [s.rss_b for s in r.samples if s.rss_b]
    half = len(b_rss) // 2
    sizes = [s.store_bytes for s in r.samples]
    result: dict[str, Any] = {
        "figure": "Soak: reliability under kills, a store restart and a mixed backlog",
        "key": "soak",
        "store": r.store_kind,
        "plan": plan.__dict__,
        "messages": len(sub.mids),
        "by_kind": {k: sub.kinds.count(k) for k in KINDS},
        "kills": r.kills,
        "pg_restarts": len(r.restarts),
        "pg_restart_seconds": r.restarts,
        "pg_restart_t": r.restart_t,
        "submit_retries": sub.retries,
        "once": outcome.once,
        "duplicates": outcome.duplicates,
        "unknown_duplicates": outcome.unknown_duplicates,
        "outcome_unknown": outcome.unknown,
        "lost": outcome.lost,
        "per_kind": {
            k: {"once": t.once, "duplicates": t.duplicates, "unknown": t.unknown, "lost": t.lost}
            for k, t in per_kind.items()
        },
        "ndrs": ndrs,
        "left": left,
        "maildir_waits": len(all_waits),
        "maildir_p50": C.percentile(all_waits, 50),
        "maildir_p99": C.percentile(all_waits, 99),
        "maildir_max": max(all_waits, default=float("nan")),
        "behind_backlog": len(behind),
        "behind_p50": C.percentile(behind, 50),
        "behind_p99": C.percentile(behind, 99),
        "behind_max": max(behind, default=float("nan")),
        "over_10s": sum(1 for w in all_waits if w > MAILDIR_P99_TARGET),
        "rss_b_first_half_kib": max(b_rss[:half], default=0),
        "rss_b_second_half_kib": max(b_rss[half:], default=0),
        "peak_rss_b_kib": b.peak_kib,
        "peak_rss_a_kib": a.peak_kib,
        "store_bytes_end": sizes[-1] if sizes else 0,
        "store_bytes_per_message": (sizes[-1] / len(sub.mids)) if sizes and sub.mids else 0,
        "history_rows": rows,
        "history_rows_per_message": rows / max(1, len(sub.mids)),
        "history_rows_max": max(per_message, default=0),
        "history_rows_median_by_kind": rows_by_kind,
        "seconds": r.seconds,
        "submit_seconds": r.submit_seconds,
        "drained": r.drained,
        "samples": [s.__dict__ for s in r.samples],
        "kill_times": r.kill_times,
        "b_silences": daemons[1].silences,
        "maildir_over_target": slow_ones[:300],
        "problems": r.problems,
        "notes": list(r.notes),
        "logs": str(work),
    }
    result["ok"] = (
        not r.problems and outcome.lost == 0 and outcome.unexplained_duplicates == 0 and ndrs == 0 and left == 0
    )
    p99 = result["behind_p99"] if behind else result["maildir_p99"]
    result["targets"] = {
        "0 lost": outcome.lost == 0,
        "every duplicate recorded as outcome unknown": outcome.unexplained_duplicates == 0,
        f"maildir p99 wait < {MAILDIR_P99_TARGET:g} s while the SMTP backlog drains": p99 < MAILDIR_P99_TARGET,
    }
    result["lines"] = render_lines(result, r)
    return result


def render_lines(x: dict[str, Any], r: Run) -> list[str]:
    plan = r.plan
    mib = 1024.0
    restart = (
        f"1 PostgreSQL restart (pg_ctl restart -m fast at t={x['pg_restart_t']:.0f} s, "
        f"{x['pg_restart_seconds'][0]:.1f} s)"
        if x["pg_restarts"]
        else "no store restart (SQLite)"
    )
    by_kind = ", ".join(f"{k} {x['by_kind'][k]}" for k in KINDS)
    lines = [
        f"{x['messages']} messages on {x['store']} ({by_kind}); {x['kills']} SIGKILLs of daemon A "
        f"(every ~{plan.kill_every:g} s), {restart}; submitted over {x['submit_seconds']:.0f} s, "
        f"queue empty after {x['seconds']:.0f} s",
        "",
        f"{'delivered exactly once':<44} {x['once']}",
        f"{'duplicates':<44} {x['duplicates']}",
        f"{'  of which recorded as outcome unknown':<44} {x['unknown_duplicates']}",
        f"{'outcome unknown (resent, same Message-ID)':<44} {x['outcome_unknown']}",
        f"{'lost':<44} {x['lost']}",
        f"{'NDRs (expected 0)':<44} {x['ndrs']}",
        f"{'still queued at the end':<44} {x['left']}",
        f"{'maildir wait p50 / p99 / max, all':<44} {x['maildir_p50']:.2f} / {x['maildir_p99']:.2f} / "
        f"{x['maildir_max']:.1f} s ({x['maildir_waits']} messages, {x['over_10s']} over 10 s)",
        f"{'  submitted with SMTP backlog >= ' + str(BACKLOG_MIN):<44} {x['behind_p50']:.2f} / "
        f"{x['behind_p99']:.2f} / {x['behind_max']:.1f} s ({x['behind_backlog']} messages)",
        f"{'daemon B (never killed) VmRSS, max 1st/2nd half':<44} {x['rss_b_first_half_kib'] / mib:.1f} / "
        f"{x['rss_b_second_half_kib'] / mib:.1f} MiB (VmHWM {x['peak_rss_b_kib'] / mib:.1f} MiB)",
        f"{'daemon A (killed) peak VmHWM over its lives':<44} {x['peak_rss_a_kib'] / mib:.1f} MiB",
        f"{'store size at the end':<44} {x['store_bytes_end'] / mib / mib:.1f} MiB "
        f"({x['store_bytes_per_message'] / 1024:.1f} KiB per message)",
        f"{'history rows per message (mean / max)':<44} {x['history_rows_per_message']:.1f} / {x['history_rows_max']}",
        f"{'  median by transport':<44} "
        + ", ".join(f"{k} {v:g}" for k, v in x["history_rows_median_by_kind"].items()),
        "",
        "    t  submitted  delivered  queued fast/slow/flaky/local  B RSS MiB  A RSS MiB  store MiB  history rows"
        "  load",
    ]
    shown: list[Sample] = []
    for s in r.samples:
        if not shown or s.t - shown[-1].t >= plan.table_every or s is r.samples[-1]:
            shown.append(s)
    for s in shown:
        q = "/".join(str(s.backlog[k]) for k in KINDS)
        lines.append(
            f"{s.t:5.0f}  {s.submitted:9}  {s.delivered:9}  {q:>28}  {s.rss_b / mib:9.1f}  {s.rss_a / mib:9.1f}  "
            f"{s.store_bytes / mib / mib:9.1f}  {s.events:12}  {s.load}"
        )
    lines.append("")
    for since, seconds in x["b_silences"]:
        lines.append(
            f"daemon B wrote no pass line for {seconds:.0f} s from t={since:.0f} s (a pass without a time limit; "
            "its stacks are in B.log)"
        )
    lines.append(
        f"settings: lease_seconds {plan.lease_seconds:g}, crash_policy resend, spooler_concurrency "
        f"{plan.concurrency} per daemon; flaky transport's policy "
        + " ".join(f"{k}={v:g}" for k, v in plan.flaky_policy.items())
        + f" (the default is 300/4000 s); flaky refused for {plan.refuse_seconds:g} s; slow DATA "
        f"{plan.slow_delay[0]:g}-{plan.slow_delay[1]:g} s; connections fast 4, slow 3, flaky 2"
    )
    return lines


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages (default 20000; --quick 1000)")
    ap.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, Maildir, sink logs)")
    args = ap.parse_args()
    n = args.n or (1000 if args.quick else 20_000)
    plan = Plan.quick(n) if args.quick else Plan.full(n)
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    work = Path(tempfile.mkdtemp(prefix="postroom-soak-"))
    result: dict[str, Any] = {}
    try:
        result = run_soak(plan, args.store, work, args.seed)
    finally:
        if args.keep or not result.get("ok"):
            C.log(f"logs, Maildir and sink logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["loadavg"] = f"{load_before} → {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    result["lines"].append(f"load average {result['loadavg']} (2 cores shared with other work)")
    for p in result["problems"][:20]:
        result.setdefault("notes", []).append(f"problem: {p}")
    C.emit(result, args.json)
    missed = [name for name, met in result["targets"].items() if not met]
    if not result["ok"]:
        return 1
    return 1 if missed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
