"""The status page as the tests use it: `postroom serve http` (or `spooler --http`) as a real
process on loopback, plain HTTP requests to it, and a headless Chromium driven by selenium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .prerequisites import unavailable
from .smtp_sink import free_port


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} is not installed (.ci/install-system-packages installs chromium and chromium-driver)"
    return None


def http(url: str, *, data: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET (or POST a form when `data`) and return (status, body), errors included."""
    body = None if data is None else urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def make_profile(directory: Path, *, offline: bool = False) -> Path:
    """What `postroom init` makes (the `local` maildir transport), made in this process (cheaper)."""
    import postroom
    from postroom.profile import Profile

    profile = Profile.create(directory)
    if offline:
        with postroom.logon(profile) as session:
            session.set_mode("offline")
    return directory


def new_token(profile: Path) -> str:
    """`postroom serve http --new-token` (its own test runs the command; the others make one here)."""
    from postroom.web.auth import new_token as make

    return make(profile)


def new_token_by_command(profile: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "postroom", "--profile", str(profile), "--json", "serve", "http", "--new-token"],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(out.stdout)["token"])


@contextmanager
def served(
    profile: Path, *, spooler: bool = False, extra: Sequence[str] = (), socket_path: Path | None = None
) -> Iterator[str]:
    """`postroom serve http` (or the spooler daemon with --http) on a free loopback port; its URL.
    `socket_path`: it listens on that Unix socket instead (wait until the socket is there, private)."""
    port = free_port()
    where = f"127.0.0.1:{port}"
    # One spooler process: with --workers N each worker publishes the status rows of its own
    # transports, and a row shows the worker that wrote it last (a known limit, README).
    command = ["spooler", "--workers", "1", "--http", where] if spooler else ["serve", "http", "--listen", where]
    if socket_path is not None:
        command += ["--socket", str(socket_path)]
    log = profile.parent / f"{'spooler' if spooler else 'page'}-{port}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "postroom", "--profile", str(profile), *command, *extra],
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://{where}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the page did not start: {log.read_text()}")
            if socket_path is not None:
                if socket_path.exists() and socket_path.stat().st_mode & 0o077 == 0:
                    break
            else:
                try:
                    if http(url + "/healthz")[0] == 200:
                        break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"the page did not answer in 30 s: {log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (one per test module: starting one costs a second or two)."""
    reason = chromium_missing()
    if reason:
        unavailable(reason)  # a skip here, a failure under CI
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
