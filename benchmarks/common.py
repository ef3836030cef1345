"""Shared helpers for the benchmark scripts: machine facts, statistics, sinks, Postfix, profiles, output.

Every script in this folder imports this module (it sits next to them, so `python benchmarks/figN_….py`
finds it). Nothing here changes the system: sinks and the private Postfix instance listen on free
loopback ports and live in temporary directories that are removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable

# The tests' helpers serve the benchmarks too (tests/store/pgutil: a PostgreSQL store in a schema
# of its own; tests/harness: the crash harness's sink). They import `support` as pytest sees it,
# so tests/ goes on the path, and the repository, for `tests.…`.
sys.path[:0] = [str(p) for p in (REPO, REPO / "tests") if str(p) not in sys.path]

# The message every figure sends: a ~1 KiB text body and one recipient (like `smtp-source -l 1024`).
BODY = ("x" * 78 + "\n") * 13  # 13 lines of 79 characters: 1,027 bytes
SENDER = "bench@example.test"
RECIPIENT = "b@sink.test"


# --- machine and statistics ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    fs = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        fs = subprocess.run(
            ["df", "--output=fstype", tempfile.gettempdir()], capture_output=True, text=True, timeout=5
        ).stdout.split()[-1]
    postfix = ""
    if shutil.which("postconf"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            postfix = subprocess.run(
                ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
    try:
        import aiosmtplib

        aiosmtplib_version = getattr(aiosmtplib, "__version__", "")
    except ImportError:
        aiosmtplib_version = ""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "aiosmtplib": aiosmtplib_version,
        "postfix": postfix,
        "tmp_filesystem": fs,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of the values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return float(ordered[rank - 1])


def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:,.0f}"


def rate_line(label: str, width: int, rate: float | None, runs: Sequence[float], extra: str = "") -> str:
    """One line of a figure's output: the label, the median rate (and `extra`), then every run's."""
    runs_txt = ", ".join(f"{x:,.0f}" for x in runs) or "skipped"
    return f"{label:<{width}} {fmt_rate(rate):>8} msg/s{extra}   (runs: {runs_txt})"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}×"


# --- ports and processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def wait_listeners(port: int, count: int, timeout: float = 60.0) -> None:
    """Until `count` sockets listen on 127.0.0.1:`port` (SO_REUSEPORT: one per process of
    `serve smtp --processes N`). A client that connects once the first one listens would have
    every connection taken by that one process, and measure one process, not N."""
    deadline = time.monotonic() + timeout
    while True:
        found = _listening_sockets(port)
        if found >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{found} of {count} listeners on 127.0.0.1:{port} after {timeout:g} s")
        time.sleep(0.05)


def _listening_sockets(port: int) -> int:
    """The sockets in LISTEN state (0A) on 127.0.0.1:`port`, from /proc/net/tcp."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return sum(1 for line in table if line.split()[1:2] == [local] and line.split()[3] == "0A")


def wait_http(base: str, timeout: float = 60.0) -> None:
    """Until `base`/healthz answers (a `serve http` just started); its last error if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
                response.read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def py_spy_exe() -> str:
    """py-spy on PATH, else the one pip put beside this interpreter (it may not exist)."""
    return shutil.which("py-spy") or str(Path(PY).parent / "py-spy")


def start_py_spy(pid: int, output: Path, rate: int, *flags: str) -> subprocess.Popen[Any]:
    """py-spy recording `pid` as raw collapsed stacks into `output`, given a second to attach;
    stop it with SIGINT (it then writes the file) and wait."""
    spy = subprocess.Popen(
        [
            *(py_spy_exe(), "record", "--pid", str(pid), "--format", "raw", "--output", str(output)),
            *("--rate", str(rate), "--nonblocking", *flags),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    return spy


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM one process we started (by its pid), then SIGKILL it if it does not go."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """The live children of a process (from /proc; a zombie counts as gone)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = stat.read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return sorted(out)


def tree_cpu_seconds(pid: int) -> float:
    """CPU (user + system) of a process and every descendant it has or had: its own time, the time of
    the children it has reaped (cutime, cstime), and the same for every live descendant. A process
    that ended and was reaped is counted once, by its parent; one still running, by itself. This is
    how "all of Postfix's daemons" and "all of postroom's spooler processes" are summed."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        p = pending.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            f = _stat_fields(p)
            total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / ticks
            pending += children(p)
    return total


def self_cpu_seconds() -> float:
    """CPU of this process (the submitting side of a figure), user + system."""
    t = os.times()
    return t.user + t.system


def vm_hwm_kib(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


# --- SMTP sinks --------------------------------------------------------------------------------------


@dataclass
class Sink:
    """A discarding SMTP server on 127.0.0.1: Postfix's `smtp-sink` (C), or our Python stand-in.

    `soft_reject` names SMTP commands answered with 4xx (e.g. "rcpt": every RCPT gets a 4xx).
    """

    kind: str
    port: int
    proc: subprocess.Popen[Any]

    @classmethod
    @contextlib.contextmanager
    def start(cls, soft_reject: str = "", prefer: str = "smtp-sink") -> Iterator[Sink]:
        port = free_port()
        if prefer == "smtp-sink" and have("smtp-sink"):
            cmd = ["smtp-sink", "-m", "512"]
            if os.geteuid() == 0:
                cmd += ["-u", "nobody"]
            if soft_reject:
                cmd += ["-r", soft_reject]
            cmd += [f"127.0.0.1:{port}", "1024"]
            kind = "smtp-sink"
        else:
            cmd = [PY, str(HERE / "pysink.py"), str(port)] + (["--soft-reject", soft_reject] if soft_reject else [])
            kind = "pysink"
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(port)
            yield cls(kind, port, proc)
        finally:
            stop_process(proc)


# --- a private Postfix instance -------------------------------------------------------------------------

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet  n       -       n       -       -       smtpd
{hold_listen} inet  n       -       n       -       -       smtpd
  -o smtpd_client_restrictions=check_client_access,static:HOLD
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class Postfix:
    """Our own Postfix instance (own config_directory and queue_directory) relaying to a sink.

    `port` accepts and relays to [127.0.0.1]:relay_port; `hold_port` accepts and puts every
    message on hold (so intake can be measured without delivery competing for the CPU).
    """

    root: Path
    port: int
    hold_port: int
    relay_port: int
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "etc"

    @property
    def queue(self) -> Path:
        return self.root / "spool"

    def _postconf_default(self, name: str) -> str:
        return subprocess.run(["postconf", "-d", "-h", name], capture_output=True, text=True, check=True).stdout.strip()

    @classmethod
    def available(cls) -> str | None:
        """None when we can run our own instance, else why not."""
        for tool in ("postfix", "postconf", "postsuper", "smtp-source"):
            if not have(tool):
                return f"{tool} is not installed (Debian package postfix)"
        if os.geteuid() != 0:
            return "running a private Postfix instance needs root"
        try:
            import pwd

            pwd.getpwnam("postfix")
        except KeyError:
            return "there is no 'postfix' user"
        return None

    @classmethod
    @contextlib.contextmanager
    def start(cls, relay_port: int, concurrency: int = 20) -> Iterator[Postfix]:
        root = Path(tempfile.mkdtemp(prefix="postroom-bench-postfix-"))
        os.chmod(root, 0o755)
        pf = cls(root, free_port(), free_port(), relay_port)
        try:
            pf._configure(concurrency)
            pf._run("start")
            wait_port(pf.port, 20)
            wait_port(pf.hold_port, 20)
            yield pf
        finally:
            master = 0
            with contextlib.suppress(OSError, ValueError):
                master = int((pf.queue / "pid" / "master.pid").read_text().split()[0])
            with contextlib.suppress(Exception):
                pf._run("stop")
            # `postfix stop` returns before the master has exited; wait for our master to go.
            for _ in range(200):
                if not master or not Path(f"/proc/{master}").exists():
                    break
                time.sleep(0.05)
            shutil.rmtree(root, ignore_errors=True)

    def _configure(self, concurrency: int) -> None:
        self.config.mkdir()
        (self.root / "data").mkdir()
        shutil.chown(self.root / "data", "postfix", "postfix")
        self.queue.mkdir()
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "bench-postfix.example.test",
            "mydomain": "example.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "smtp_dns_support_level": "disabled",
            "disable_dns_lookups": "yes",
            "default_destination_concurrency_limit": str(concurrency),
            "smtp_destination_concurrency_limit": str(concurrency),
            "relay_destination_concurrency_limit": str(concurrency),
            "maillog_file": str(self.root / "postfix.log"),
            "maillog_file_prefixes": str(self.root),
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "smtputf8_enable": "no",
            "biff": "no",
            "delay_warning_time": "0",
            "alias_maps": "",
            "alias_database": "",
            "smtpd_banner": "$myhostname ESMTP",
            "in_flow_delay": "0",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "anvil_rate_time_unit": "60s",
        }
        (self.config / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.config / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{self.port}", hold_listen=f"127.0.0.1:{self.hold_port}")
        )

    def _run(self, action: str) -> None:
        out = subprocess.run(["postfix", "-c", str(self.config), action], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            why = (out.stderr or out.stdout).strip() or self.log_tail(5)
            raise RuntimeError(f"postfix {action} failed: {why}")

    def queued(self) -> int:
        """Messages in the queue (maildrop, incoming, active, deferred, hold) — files, no daemons involved."""
        total = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _dirpath, _dirs, files in os.walk(self.queue / sub):
                total += len(files)
        return total

    def wait_empty(self, timeout: float, poll: float = 0.02) -> float:
        """Wait until the queue is empty; returns the monotonic time at which it was seen empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queued() == 0:
                return time.monotonic()
            time.sleep(poll)
        raise TimeoutError(f"Postfix queue still holds {self.queued()} message(s) after {timeout:g} s")

    def master_pid(self) -> int:
        """The pid of this instance's master daemon: the root of the process tree of every Postfix daemon."""
        return int((self.queue / "pid" / "master.pid").read_text().split()[0])

    def delete_all(self) -> None:
        subprocess.run(["postsuper", "-c", str(self.config), "-d", "ALL"], capture_output=True, timeout=120)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "postfix.log").read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def optional_postfix(relay_port: int, notes: list[str], what: str) -> Iterator[Postfix | None]:
    """A private Postfix instance relaying to `relay_port` when one can run here, else None with
    "`what` skipped: why" added to `notes`; stopped and removed afterwards."""
    skip = Postfix.available()
    if skip is not None:
        notes.append(f"{what} skipped: {skip}")
        yield None
        return
    with Postfix.start(relay_port) as pf:
        yield pf


def smtp_source(n: int, sessions: int, port: int, timeout: float = 600) -> float:
    """`smtp-source -d` (connections reused) sending n ~1 KiB messages; returns the seconds it took."""
    cmd = [
        "smtp-source",
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(n),
        "-l",
        "1024",
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        "-M",
        "bench.example.test",
        f"127.0.0.1:{port}",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {(out.stderr or out.stdout).strip()}")
    return dt


# --- postroom profiles ------------------------------------------------------------------------------------


def make_profile(
    directory: Path,
    *,
    smtp_port: int | None = None,
    connections: int = 4,
    concurrency: int = 8,
    max_per_connection: int = 100_000,
    temporary_failure_wait: float | None = None,
    settings: dict[str, Any] | None = None,
    services: Sequence[tuple[str, str, dict[str, Any]]] = (),
) -> Path:
    """A fresh profile without the default maildir transport; an smtp service when smtp_port is given."""
    from postroom.profile import Profile

    p = Profile.create(directory, with_defaults=False)
    if smtp_port is not None:
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "connections": connections,
            "max_messages_per_connection": max_per_connection,
            "sender": SENDER,
        }
        if temporary_failure_wait is not None:
            options["temporary_failure_wait"] = temporary_failure_wait
        p.add_service("smtp", "sink", options)
    for kind, name, opts in services:
        p.add_service(kind, name, opts)
    p.settings["spooler_concurrency"] = concurrency
    p.settings["sender_address"] = SENDER
    p.settings.update(settings or {})
    p.save()
    return directory


def serialised(n: int) -> list[bytes]:
    """n pre-built ~1 KiB messages with CRLF line ends (like smtp-source -l 1024), for the clients
    that send bytes themselves (figure 1's smtplib reference, smtp_client.py)."""
    date = formatdate(localtime=True)
    body = (b"x" * 78 + b"\r\n") * 13
    return [
        b"From: <%s>\r\nTo: <%s>\r\nDate: %s\r\nMessage-Id: <%d@bench.example.test>\r\nSubject: bench %d\r\n\r\n"
        % (SENDER.encode(), RECIPIENT.encode(), date.encode(), i, i)
        + body
        for i in range(n)
    ]


#: How many recipients have an outcome, and the time of the last one.
OUTCOMES_SQL = "SELECT count(*), max(outcome_time) FROM recipients WHERE state != 'pending'"
#: The same from the history, which stays when a message is deleted once handled (relayed mail).
DELIVERED_EVENTS_SQL = "SELECT count(*), max(time) FROM events WHERE kind = 'delivered'"


def wait_for_outcomes(
    store_path: Path, n: int, daemon: subprocess.Popen[Any], log: Path, count_sql: str = OUTCOMES_SQL
) -> float:
    """Wait until n recipients have an outcome in the store (read by a connection of its own, so
    only what is committed counts); the time of the last one. Fails when the daemon exits first or
    nothing is left to wait for after max(300 s, n / 10 s)."""
    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)
    deadline = time.monotonic() + max(300.0, n / 10)
    try:
        while True:
            done, last = db.execute(count_sql).fetchone()
            if done >= n:
                return float(last)
            if daemon.poll() is not None:
                raise RuntimeError(f"spooler daemon exited ({daemon.returncode}) after {done} of {n}; see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {n} outcomes recorded; see {log}")
            time.sleep(0.05)
    finally:
        db.close()


def outcome_counts(store_path: Path) -> dict[str, int]:
    """Recipient states read straight from the store file by a separate connection (i.e. committed)."""
    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)
    try:
        return {state: n for state, n in db.execute("SELECT state, count(*) FROM recipients GROUP BY state")}
    finally:
        db.close()


def submit_one_at_a_time(session: Any, n: int, start: int = 0, body: str = BODY) -> None:
    for i in range(start, start + n):
        session.create_message(f"bench {i}", body).to(RECIPIENT).submit()


def submit_batches(session: Any, n: int, batch: int, start: int = 0, body: str = BODY) -> None:
    """Batched submission with Session.submit_many (one durable commit per batch)."""
    i = start
    while i < start + n:
        k = min(batch, start + n - i)
        session.submit_many([session.create_message(f"bench {j}", body).to(RECIPIENT) for j in range(i, i + k)])
        i += k


def has_submit_many(session: Any) -> bool:
    return callable(getattr(session, "submit_many", None))


def spooler_daemon(profile: Path, log: Path, workers: int = 1) -> subprocess.Popen[Any]:
    """`python -m postroom --profile DIR spooler --workers N` — the CLI spooler daemon, in its own
    process (N = 1) or a parent with N worker processes."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("ab") as fh:
        return subprocess.Popen(
            [PY, "-m", "postroom", "--profile", str(profile), "spooler", "--workers", str(workers)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def wait_daemon_ready(profile: Path, proc: subprocess.Popen[Any], timeout: float = 30.0, workers: int = 1) -> None:
    """Until the daemon listens for "submitted" notifications (its socket in the store's .notify/);
    with workers > 1, until every worker does."""
    from postroom.profile import Profile
    from postroom.store.notify import notify_directory

    directory = notify_directory(Profile.load(profile).store_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the spooler daemon exited with status {proc.returncode}")
        pids = [proc.pid] if workers == 1 else children(proc.pid)
        if directory.is_dir() and len(pids) == workers and all(any(directory.glob(f"{pid}-*.sock")) for pid in pids):
            return
        time.sleep(0.02)
    raise RuntimeError(f"the spooler daemon did not start listening within {timeout:g} s")


# --- arguments and output ------------------------------------------------------------------------------------


def exit_on_signals() -> None:
    """SIGTERM (and SIGINT, even when inherited as ignored) end the script through its `finally`
    blocks, so sinks, daemons and the private Postfix instance are stopped and temp dirs removed."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def arg_parser(description: str) -> argparse.ArgumentParser:
    exit_on_signals()
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="a smoke run of seconds (tiny N, one run)")
    ap.add_argument("--runs", type=int, default=None, help="repetitions (the median is reported)")
    ap.add_argument("--json", type=Path, default=None, help="write the figure's results here as JSON")
    return ap


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"postroom-bench-{prefix}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def emit(result: dict[str, Any], path: Path | None) -> None:
    """Print the figure and its reference lines; write the JSON for the driver."""
    import postroom

    result.setdefault("postroom_file", postroom.__file__)
    print(f"== {result['figure']}")
    for line in result.get("lines", []):
        print(f"   {line}")
    for note in result.get("notes", []):
        print(f"   note: {note}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))
    sys.stdout.flush()


def log(msg: str) -> None:
    print(f"   … {msg}", file=sys.stderr, flush=True)
