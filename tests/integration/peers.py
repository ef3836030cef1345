"""Real mail servers on loopback for the integration tests: Postfix (SMTP) and Dovecot (IMAP, POP3).

`running_peers()` starts one Postfix and one Dovecot for the whole test session, each from the
templates in `tests/integration/peers/`, in a fresh temporary directory, on free loopback ports,
without systemd, and stops them when the session ends. Both serve the same Maildir tree:

* Postfix delivers `alice@example.test`, `bob@example.test` and `user01`..`user40@example.test`
  into `<root>/mail/example.test/<user>/` (virtual Maildir delivery); other `example.test` users
  are refused at RCPT with ``550 5.1.1``; `@bounce.test` is accepted and then bounced by Postfix
  with a real DSN (``5.1.2``); `@defer.test` is refused at RCPT with ``450 4.4.1``; `@sink.test`
  is accepted and discarded.
* A second SMTP listener (`Peers.corpus_smtp_port`) redirects every message, whatever its
  recipients, to `corpus@example.test` and changes no header (no header rewriting, no header
  dropped), so a test can send real-world messages with their own To/Cc unchanged and compare
  what arrives byte for byte (tests/integration/test_fidelity_corpus.py).
* A third SMTP listener (`Peers.lockstep_smtp_port`) is the first one without PIPELINING in its
  EHLO reply, for the SMTP client's lock-step path (tests/integration/test_smtp_pipelining.py).
* Dovecot logs in any user of any domain with `Peers.password` (a static passdb) and serves
  `<root>/mail/<domain>/<user>/`, so a test that only needs a mailbox takes a fresh user
  (`Peers.new_user()`) and writes messages straight into its Maildir (`Peers.put_message`).
  With `openssl` available it also speaks TLS (implicit and STARTTLS) with a certificate for
  127.0.0.1/localhost signed by a throw-away CA (`Peers.ca_file`).

Both need root (Postfix's queue, Dovecot's privilege separation) and the Debian packages
postfix, dovecot-imapd and dovecot-pop3d (`.ci/install-system-packages`); without them the tests
that use these servers are skipped with that reason, or fail with it under CI
(`support.prerequisites`).

Test modules ask for the `peers` fixture (tests/integration/conftest.py: one shared instance
however many modules ask for it, with its password in `PASSWORD_ENV` while a test uses it).
"""

from __future__ import annotations

import contextlib
import imaplib
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support.prerequisites import unavailable

TEMPLATES = Path(__file__).parent / "peers"
MAIL_UID = 5000
#: The Postfix users of example.test (besides these, every other local part is unknown).
POSTFIX_USERS = ("alice", "bob", *(f"user{n:02d}" for n in range(1, 41)))
#: Where the corpus listener delivers every message (see the module docstring).
CORPUS_MAILBOX = "corpus@example.test"
SKIP_REASON = "needs postfix and dovecot (installed by .ci/install-system-packages)"
START_TIMEOUT = 20.0
#: The environment variable the tests give the servers' password in (a profile's `password_env`).
PASSWORD_ENV = "POSTROOM_TEST_PEER_PASSWORD"

_POSTFIX_SBIN = Path("/usr/lib/postfix/sbin")
_DOVECOT_LIBEXEC = Path("/usr/lib/dovecot")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def missing_prerequisite() -> str | None:
    """Why the servers cannot run here, or None."""
    if os.geteuid() != 0:
        return f"{SKIP_REASON}; they also need root"
    for tool in ("postfix", "postconf", "dovecot", "doveconf"):
        if shutil.which(tool) is None:  # the servers are started by name, as found on PATH
            return f"{SKIP_REASON}; {tool} is missing (not on PATH)"
    for program in (_POSTFIX_SBIN / "master", _DOVECOT_LIBEXEC / "imap", _DOVECOT_LIBEXEC / "pop3"):
        if not program.exists():
            return f"{SKIP_REASON}; {program} is missing"
    import grp
    import pwd

    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
        pwd.getpwnam("dovecot")
        pwd.getpwnam("dovenull")
    except KeyError as exc:
        return f"{SKIP_REASON}; system user or group {exc.args[0]} is missing"
    return None


def _render(template: str, values: dict[str, str]) -> str:
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise RuntimeError(f"unfilled placeholder in {template}: {text[text.index('{{') :][:40]!r}")
    return text


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _make_test_ca(directory: Path) -> Path | None:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost; None without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    directory.mkdir(mode=0o755)
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n", encoding="ascii")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "san.ext"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA"],
        [openssl, "req", *ec, "-keyout", "key.pem", "-out", "server.csr", "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", "server.csr", *sign, "-out", "cert.pem"],
    ]
    for step in steps:
        done = subprocess.run(step, cwd=directory, capture_output=True, check=False)
        if done.returncode != 0:
            return None
    (directory / "key.pem").chmod(0o600)
    return directory / "ca.pem"


@dataclass
class Peers:
    """The running servers and helpers around their Maildirs."""

    root: Path
    password: str
    smtp_port: int
    corpus_smtp_port: int
    lockstep_smtp_port: int
    imap_port: int
    pop3_port: int
    imaps_port: int | None
    pop3s_port: int | None
    ca_file: Path | None
    postfix_config: Path
    dovecot_config: Path
    _postfix: subprocess.Popen[bytes] | None = None
    _dovecot: subprocess.Popen[bytes] | None = None
    _counter: Iterator[int] = field(default_factory=itertools.count)
    _users: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    # Postfix users are few (user01..user40): their own count, so Dovecot-only mailboxes never use them up.
    _postfix_users: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- paths and mailboxes -------------------------------------------------------------------
    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    @property
    def postfix_log(self) -> Path:
        return self.root / "postfix" / "postfix.log"

    @property
    def dovecot_log(self) -> Path:
        return self.root / "dovecot" / "dovecot.log"

    def maildir(self, address: str) -> Path:
        """The Maildir of `address` (what both Postfix and Dovecot use)."""
        local, _, domain = address.lower().rpartition("@")
        return self.mail_root / domain / local

    def new_user(self, prefix: str = "box") -> str:
        """A fresh Dovecot-only mailbox address (Postfix does not deliver to it)."""
        with self._lock:
            n = next(self._users)
        return f"{prefix}{n:03d}-{secrets.token_hex(3)}@example.test"

    def new_postfix_user(self) -> str:
        """A fresh example.test user Postfix delivers to (user01..user40, each handed out once)."""
        with self._lock:
            n = next(self._postfix_users)
        if n > 40:
            raise RuntimeError("ran out of Postfix test users (user01..user40)")
        return f"user{n:02d}@example.test"

    def _ensure_maildir(self, address: str) -> Path:
        box = self.maildir(address)
        for path in (box.parent, box, box / "tmp", box / "new", box / "cur"):
            if not path.exists():
                path.mkdir(mode=0o700)
                os.chown(path, MAIL_UID, MAIL_UID)
        return box

    def put_message(self, address: str, data: bytes) -> Path:
        """Drop a message into the Maildir's new/ the Maildir way (tmp/, then rename)."""
        box = self._ensure_maildir(address)
        with self._lock:
            n = next(self._counter)
        name = f"{time.time_ns()}.P{os.getpid()}Q{n}.postroom-test"
        tmp = box / "tmp" / name
        tmp.write_bytes(data)
        os.chown(tmp, MAIL_UID, MAIL_UID)
        final = box / "new" / name
        tmp.rename(final)
        return final

    def maildir_files(self, address: str, folder: str | None = None) -> list[Path]:
        """The message files of the INBOX (or of a Maildir++ sub-folder `folder`)."""
        box = self.maildir(address)
        if folder is not None:
            box = box / f".{folder}"
        return sorted(p for sub in ("new", "cur") if (box / sub).is_dir() for p in (box / sub).iterdir())

    # --- IMAP straight to Dovecot (for checks independent of postroom) --------------------------
    @contextlib.contextmanager
    def imap(self, address: str, mailbox: str = "INBOX") -> Iterator[imaplib.IMAP4]:
        conn = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        try:
            conn.login(address, self.password)
            conn.select(mailbox)
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def fetch_all(self, address: str, mailbox: str = "INBOX") -> list[bytes]:
        """Every message of a mailbox, as Dovecot serves it (BODY.PEEK[], UID order)."""
        out: list[bytes] = []
        with self.imap(address, mailbox) as conn:
            typ, data = conn.uid("SEARCH", "ALL")
            assert typ == "OK", data
            for uid in (data[0] or b"").split():
                typ, parts = conn.uid("FETCH", uid.decode("ascii"), "(BODY.PEEK[])")
                assert typ == "OK", parts
                for part in parts:
                    if isinstance(part, tuple):
                        out.append(part[1])
        return out

    # --- processes -------------------------------------------------------------------------------
    def start_postfix(self) -> None:
        if self._postfix is not None and self._postfix.poll() is None:
            return
        self._postfix = subprocess.Popen(
            ["postfix", "-c", str(self.postfix_config), "start-fg"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_up("postfix", self._postfix, (self.smtp_port, self.lockstep_smtp_port), self.postfix_log)

    def stop_postfix(self) -> None:
        proc, self._postfix = self._postfix, None
        if proc is None:
            return
        subprocess.run(
            ["postfix", "-c", str(self.postfix_config), "stop"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=30,
        )
        self._reap(proc)

    def start_dovecot(self) -> None:
        if self._dovecot is not None and self._dovecot.poll() is None:
            return
        self._dovecot = subprocess.Popen(
            ["dovecot", "-F", "-c", str(self.dovecot_config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        ports = [p for p in (self.imap_port, self.pop3_port, self.imaps_port, self.pop3s_port) if p]
        self._wait_up("dovecot", self._dovecot, ports, self.dovecot_log)

    def stop_dovecot(self) -> None:
        """Stop Dovecot and every IMAP/POP3 session it serves (as a service manager would), wait
        until its ports are closed. (Its master alone leaves running sessions behind.)"""
        proc, self._dovecot = self._dovecot, None
        if proc is None:
            return
        proc.terminate()
        self._reap(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own process group (start_new_session)
        wait_until(lambda: not port_open(self.imap_port) and not port_open(self.pop3_port), 10)

    @property
    def dovecot_running(self) -> bool:
        return self._dovecot is not None and self._dovecot.poll() is None

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    @staticmethod
    def _wait_up(name: str, proc: subprocess.Popen[bytes], ports: tuple[int, ...] | list[int], log: Path) -> None:
        up = wait_until(lambda: proc.poll() is not None or all(port_open(p) for p in ports), START_TIMEOUT)
        if up and proc.poll() is None:
            return
        raise RuntimeError(f"{name} did not start (exit code {proc.poll()}); its log ends with:\n{_tail(log)}")

    def stop(self) -> None:
        try:
            self.stop_dovecot()
        finally:
            self.stop_postfix()


def _build(root: Path) -> Peers:
    password = f"pw-{secrets.token_hex(8)}"
    ports = {
        "smtp": free_port(),
        "corpus_smtp": free_port(),
        "lockstep_smtp": free_port(),
        "imap": free_port(),
        "pop3": free_port(),
    }
    ca_file = _make_test_ca(root / "tls")
    tls_ports = {"imaps": free_port(), "pop3s": free_port()} if ca_file else {"imaps": 0, "pop3s": 0}

    mail = root / "mail"
    mail.mkdir(mode=0o755)
    os.chown(mail, MAIL_UID, MAIL_UID)

    # Postfix: config directory (root-owned), queue (root-owned; postfix creates the rest), data.
    pf = root / "postfix"
    conf = pf / "conf"
    conf.mkdir(parents=True, mode=0o755)
    (pf / "queue").mkdir(mode=0o755)
    data = pf / "data"
    data.mkdir(mode=0o700)
    import pwd

    postfix_uid = pwd.getpwnam("postfix").pw_uid
    os.chown(data, postfix_uid, -1)
    values = {
        "ROOT": str(root),
        "MAIL_UID": str(MAIL_UID),
        "SMTP_LISTEN": f"127.0.0.1:{ports['smtp']}",
        "CORPUS_SMTP_LISTEN": f"127.0.0.1:{ports['corpus_smtp']}",
        "LOCKSTEP_SMTP_LISTEN": f"127.0.0.1:{ports['lockstep_smtp']}",
        "PASSWORD": password,
        "PORT_IMAP": str(ports["imap"]),
        "PORT_POP3": str(ports["pop3"]),
        "PORT_IMAPS": str(tls_ports["imaps"]),
        "PORT_POP3S": str(tls_ports["pop3s"]),
    }
    if ca_file is not None:
        values["SSL"] = f"ssl = yes\nssl_cert = <{root}/tls/cert.pem\nssl_key = <{root}/tls/key.pem"
    else:
        values["SSL"] = "ssl = no"
    (conf / "main.cf").write_text(_render("main.cf", values), encoding="utf-8")
    (conf / "master.cf").write_text(_render("master.cf", values), encoding="utf-8")
    (conf / "transport").write_text(_render("transport", values), encoding="utf-8")
    (conf / "rcpt_checks").write_text(_render("rcpt_checks", values), encoding="utf-8")
    (conf / "corpus_checks").write_text(_render("corpus_checks", values), encoding="utf-8")
    (conf / "vmailbox").write_text(
        "".join(f"{user}@example.test  example.test/{user}/\n" for user in (*POSTFIX_USERS, "corpus")),
        encoding="utf-8",
    )

    # Dovecot.
    dv = root / "dovecot"
    for sub in ("", "run", "state"):
        (dv / sub).mkdir(mode=0o755, exist_ok=True)
    (dv / "dovecot.conf").write_text(_render("dovecot.conf", values), encoding="utf-8")

    return Peers(
        root=root,
        password=password,
        smtp_port=ports["smtp"],
        corpus_smtp_port=ports["corpus_smtp"],
        lockstep_smtp_port=ports["lockstep_smtp"],
        imap_port=ports["imap"],
        pop3_port=ports["pop3"],
        imaps_port=tls_ports["imaps"] or None,
        pop3s_port=tls_ports["pop3s"] or None,
        ca_file=ca_file,
        postfix_config=conf,
        dovecot_config=dv / "dovecot.conf",
    )


_shared: Peers | None = None
_users_of_shared = 0


def running_peers() -> Iterator[Peers]:
    """Generator for a session-scoped fixture: the shared servers, started on first use.

    Skips when the servers cannot run here (fails under CI). The servers stop when the last
    fixture using them is finalised (at the end of the test session).
    """
    global _shared, _users_of_shared
    problem = missing_prerequisite()
    if problem is not None:
        unavailable(problem)
    if _shared is None:
        # Not under pytest's 0700 tmp dirs: Postfix and Dovecot drop privileges and need to reach it.
        root = Path(tempfile.mkdtemp(prefix="postroom-peers-"))
        root.chmod(0o755)
        try:
            peers = _build(root)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        try:
            peers.start_postfix()
            peers.start_dovecot()
        except BaseException:
            peers.stop()
            shutil.rmtree(root, ignore_errors=True)
            raise
        _shared = peers
    _users_of_shared += 1
    try:
        yield _shared
    finally:
        _users_of_shared -= 1
        if _users_of_shared == 0 and _shared is not None:
            peers, _shared = _shared, None
            try:
                peers.stop()
            finally:
                if not os.environ.get("POSTROOM_KEEP_PEERS"):
                    shutil.rmtree(peers.root, ignore_errors=True)
