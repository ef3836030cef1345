"""Debian's cron daemon, run alone for one test: a real caller of /usr/sbin/sendmail.

cron reads the machine's crontabs (/etc/crontab, /etc/cron.d, /var/spool/cron/crontabs), keeps
its pid and reboot marker in /run, and mails a job's output through the compiled-in
/usr/sbin/sendmail (Postfix's here). So it runs in a private mount namespace (`unshare -m`) in
which each of those paths is the test's own: tmpfs over /run, /etc/cron.d and the spool, an empty
/etc/crontab, and the test's wrapper bound over /usr/sbin/sendmail. Nothing outside changes.

With /run empty there is no /run/crond.reboot, so cron takes this for a boot and runs the
`@reboot` jobs at once: no waiting for a minute boundary.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

CRON = "/usr/sbin/cron"


def why_cron_cannot_run() -> str | None:
    """Why this machine cannot run an isolated cron for a test, or None when it can."""
    if os.geteuid() != 0:
        return "the cron caller test needs root (useradd, a mount namespace)"
    if not Path(CRON).exists():
        return "cron is not installed (Debian package cron)"
    for tool in ("unshare", "mount", "useradd", "userdel", "runuser"):
        if shutil.which(tool) is None:
            return f"the cron caller test needs {tool}"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"no private mount namespace here (unshare -m: {probe.stderr.decode().strip()})"
    return None


@contextmanager
def isolated_cron(workdir: Path, cron_d: str, sendmail: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cron -f` with `cron_d` as its only crontab and `sendmail` as /usr/sbin/sendmail;
    SIGKILL it (and so its namespace) on the way out."""
    entry = workdir / "cron.d-entry"
    entry.write_text(cron_d)
    entry.chmod(0o644)  # cron skips a system crontab that others may write
    empty = workdir / "crontab"
    empty.write_text("")
    script = "; ".join(
        [
            "set -e",
            "mount -t tmpfs tmpfs /run",
            "mount -t tmpfs tmpfs /etc/cron.d",
            f"cp {shlex.quote(str(entry))} /etc/cron.d/postroom-test",
            f"mount --bind {shlex.quote(str(empty))} /etc/crontab",
            "mount -t tmpfs tmpfs /var/spool/cron/crontabs",
            f"mount --bind {shlex.quote(str(sendmail))} /usr/sbin/sendmail",
            f"exec {CRON} -f -L 15",
        ]
    )
    with (workdir / "cron.log").open("wb") as log:
        daemon = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        try:
            yield daemon
        finally:
            with suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=60)
