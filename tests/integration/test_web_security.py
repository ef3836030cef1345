"""Who may act on the status page, where it may listen, and what it never shows (plain HTTP to a
real `postroom serve http`; the browser tests are in test_web_browser.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import postroom
from postroom.profile import Profile

from support.cli import one_line_error
from support.cli import postroom as run_postroom
from support.prerequisites import unavailable
from support.smtp_sink import free_port
from support.web import http, make_profile, new_token, new_token_by_command, served

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Pa55word-value"


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    return make_profile(tmp_path / "p", offline=True)


def queued(profile: Path) -> int:
    with postroom.logon(Profile.load(profile)) as session:
        return session.create_message("waits", "b").to("someone@localhost").submit()


def state_of(profile: Path, mid: int) -> str:
    with postroom.logon(Profile.load(profile)) as session:
        entry = session.queue_entry(mid)
        return "gone" if entry is None else str(entry.state)


def test_actions_are_refused_without_the_operator_token(profile: Path) -> None:
    mid = queued(profile)
    new_token(profile)
    with served(profile) as url:
        status, body = http(url + "/action/hold", data={"message": str(mid)})
        assert status == 403 and json.loads(body)["code"] == "MAPI_E_NO_ACCESS"
        status, body = http(url + "/action/hold", data={"message": str(mid)}, headers={"Authorization": "Bearer wrong"})
        assert status == 403
    assert state_of(profile, mid) == "queued"


def test_a_browser_action_with_the_cookie_but_without_the_csrf_token_is_refused(profile: Path) -> None:
    mid = queued(profile)
    token = new_token(profile)
    cookie = {"Cookie": f"postroom_operator={token}"}
    with served(profile) as url:
        status, body = http(url + "/action/hold", data={"message": str(mid)}, headers=cookie)
        assert status == 403 and "CSRF" in json.loads(body)["message"]
        status, body = http(url + "/action/hold", data={"message": str(mid), "csrf": "0" * 64}, headers=cookie)
        assert status == 403
        # The page the operator is served carries the right one, and with it the action goes through.
        status, page = http(url + "/queue", headers=cookie)
        csrf = page.split('name="postroom-csrf" content="', 1)[1].split('"', 1)[0]
        status, body = http(
            url + "/action/hold",
            data={"message": str(mid), "csrf": csrf},
            headers={**cookie, "Accept": "application/json"},
        )
        assert status == 200 and json.loads(body)["ok"] is True
    assert state_of(profile, mid) == "held"


def test_the_operator_token_as_a_bearer_holds_releases_and_goes_online(profile: Path) -> None:
    mid = queued(profile)
    token = new_token(profile)
    auth = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    with served(profile) as url:
        assert http(url + "/action/hold", data={"message": str(mid)}, headers=auth)[0] == 200
        assert state_of(profile, mid) == "held"
        assert http(url + "/action/release", data={"message": str(mid)}, headers=auth)[0] == 200
        assert state_of(profile, mid) == "queued"
        status, body = http(url + "/action/hold", data={"message": "999999"}, headers=auth)
        assert status == 400 and json.loads(body)["code"] == "MAPI_E_NOT_FOUND"
        assert http(url + "/action/mode", data={"mode": "online"}, headers=auth)[0] == 200
    with postroom.logon(Profile.load(profile)) as session:
        assert session.mode == "online"


def test_the_token_file_is_private_and_holds_only_a_hash(profile: Path) -> None:
    token = new_token_by_command(profile)
    path = profile / "http-token.sha256"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in path.read_text()


def test_a_bind_beyond_loopback_is_refused_without_tls_and_a_token(profile: Path) -> None:
    result = run_postroom("--profile", profile, "serve", "http", "--listen", f"0.0.0.0:{free_port()}", timeout=30)
    assert result.returncode != 0
    one_line_error(result, "MAPI_E_NO_ACCESS", "TLS", code=result.returncode)


def test_the_unix_socket_makes_whoever_opens_it_the_operator(profile: Path, tmp_path: Path) -> None:
    mid = queued(profile)
    path = Path("/tmp") / f"postroom-web-{os.getpid()}-{free_port()}.sock"  # short: sun_path holds 108 bytes
    with served(profile, socket_path=path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        body = f"message={mid}".encode()
        request = (
            b"POST /action/hold HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(request)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
    assert state_of(profile, mid) == "held"


def test_no_password_or_token_appears_in_any_page_or_metric(profile: Path) -> None:
    (profile / "smtp.pass").write_text(SECRET)
    (profile / "smtp.pass").chmod(0o600)
    with postroom.logon(Profile.load(profile)) as session:
        options = {"host": "127.0.0.1", "port": free_port(), "security": "none", "username": "me"}
        session.add_service("smtp", "mta", {**options, "password_file": "smtp.pass", "domains": ["sink.test"]})
    with postroom.logon(Profile.load(profile)) as session:
        mid = session.create_message("hello", "b").to("someone@sink.test").submit()
    token = new_token(profile)
    with served(profile) as url:
        for path in ("/", "/queue", f"/message/{mid}", "/routing?address=someone@sink.test", "/metrics", "/healthz"):
            for headers in ({}, {"Authorization": f"Bearer {token}"}):
                status, body = http(url + path, headers=headers)
                assert status == 200, (path, body)
                assert SECRET not in body and token not in body, path


def test_an_address_in_use_is_one_line_with_its_mapi_code(profile: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_postroom("--profile", profile, "serve", "http", "--listen", f"127.0.0.1:{port}", timeout=60)
    one_line_error(result, "MAPI_E_NETWORK_ERROR", f"127.0.0.1:{port}")


def test_the_page_is_served_over_tls_when_given_a_certificate_and_key(profile: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        unavailable("openssl is not installed (.ci/install-system-packages installs it)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "postroom", "--profile", str(profile), "serve", "http", "--listen", f"127.0.0.1:{port}",
         "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "https://127.0.0.1" in proc.stdout.readline()  # said once it listens
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=30) as answer:
            assert json.loads(answer.read())["ok"] is True
    finally:
        proc.terminate()
        proc.wait(20)
