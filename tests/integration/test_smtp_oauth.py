"""OAuth2 for the smtp transport: XOAUTH2 and OAUTHBEARER with the access token from `token_command`
or `token_file`, against an aiosmtpd server on loopback whose authenticator checks the token.

A refused token is fetched again once (it has most likely expired); refused again, the message
waits and the status row says so, without the token.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult

from support.cli import as_json, ok
from support.cli import postroom as run
from support.oauth import token_command
from support.smtp_sink import free_port

pytestmark = pytest.mark.integration

USER = "ada@example.test"


class TokenChecker:
    """Accepts mail only after AUTH XOAUTH2 or OAUTHBEARER with one of `good` tokens for USER."""

    def __init__(self, good: set[str]) -> None:
        self.good = good
        self.seen: list[tuple[str, str]] = []  # (mechanism, token) of every attempt
        self.messages: list[bytes] = []

    def _check(self, mechanism: str, fields: dict[str, str], user: str) -> bool:
        token = fields.get("auth", "").removeprefix("Bearer ")
        self.seen.append((mechanism, token))
        return user == USER and token in self.good

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        raw = base64.b64decode(args[1]).decode()
        fields = dict(part.split("=", 1) for part in raw.split("\x01") if "=" in part)
        if self._check("XOAUTH2", fields, fields.get("user", "")):
            return AuthResult(success=True)
        # As Gmail does: a 334 error challenge first, the failure after the client's empty answer.
        await server.challenge_auth(json.dumps({"status": "401", "schemes": "Bearer"}))
        return AuthResult(success=False, handled=False)

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        raw = base64.b64decode(args[1]).decode()
        gs2, _, rest = raw.partition("\x01")
        user = gs2.split(",")[1].removeprefix("a=")
        fields = dict(part.split("=", 1) for part in rest.split("\x01") if "=" in part)
        return AuthResult(success=self._check("OAUTHBEARER", fields, user))

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.messages.append(bytes(envelope.original_content or b""))
        return "250 2.0.0 Ok"


@pytest.fixture
def server() -> Iterator[tuple[TokenChecker, int]]:
    checker = TokenChecker(good={"fresh-token"})
    port = free_port()
    controller = Controller(checker, hostname="127.0.0.1", port=port, auth_require_tls=False)
    controller.start()
    yield checker, port
    controller.stop()


def add_service(profile: Path, port: int, *extra: str) -> None:
    ok(run("service", "add", "smtp", "gmail", "--set", "host=127.0.0.1", "--set", f"port={port}",
           "--set", "security=none", "--set", f"username={USER}", *extra, profile=profile))  # fmt: skip


def send(profile: Path) -> dict[str, Any]:
    sent = run("send", "--to", "bob@example.org", "--subject", "via oauth", "-b", "x", "--json", profile=profile)
    (row,) = as_json(sent)["recipients"]
    return dict(row)


@pytest.mark.parametrize(
    "printed",  # what the token command prints, one token each time it runs: the server sees each
    [["fresh-token"], ["expired-token", "fresh-token"]],
    ids=["the token the command prints is sent", "a refused token is fetched again once and the fresh one used"],
)
def test_xoauth2_sends_the_token_the_token_command_prints_and_fetches_a_refused_one_again_once(
    profile: Path, server: tuple[TokenChecker, int], tmp_path: Path, printed: list[str]
) -> None:
    checker, port = server
    add_service(profile, port, "--set", f"token_command={token_command(tmp_path, *printed)}")
    assert send(profile)["state"] == "delivered"
    assert checker.seen == [("XOAUTH2", token) for token in printed] and len(checker.messages) == 1


def test_oauthbearer_sends_the_token_from_the_token_file(profile: Path, server: tuple[TokenChecker, int]) -> None:
    checker, port = server
    (profile / "token").write_text("fresh-token\n")
    add_service(profile, port, "--set", "token_file=token", "--set", "oauth_mechanism=oauthbearer")
    assert send(profile)["state"] == "delivered"
    assert checker.seen == [("OAUTHBEARER", "fresh-token")]


def test_a_token_refused_twice_leaves_the_message_waiting_and_never_shows_the_token(
    profile: Path, server: tuple[TokenChecker, int], tmp_path: Path
) -> None:
    checker, port = server
    add_service(profile, port, "--set", f"token_command={token_command(tmp_path, 'revoked-token')}")
    row = send(profile)
    assert row["state"] == "waiting" and "authentication as ada@example.test" in row["why"]
    assert checker.seen == [("XOAUTH2", "revoked-token")] * 2 and checker.messages == []
    status = run("status", "--here", "--json", profile=profile)
    assert "revoked-token" not in status.stdout + status.stderr + json.dumps(row)


def test_a_token_command_that_fails_says_why_and_the_message_waits(
    profile: Path, server: tuple[TokenChecker, int]
) -> None:
    _, port = server
    failing = json.dumps([sys.executable, "-c", "import sys; sys.exit('refresh token revoked')"])
    add_service(profile, port, "--set", f"token_command={failing}")
    row = send(profile)
    assert row["state"] == "waiting" and "refresh token revoked" in row["why"]


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (["--set", "token_file=t", "--set", "password_env=X"], "exclude each other"),
        (["--set", "token_file=t", "--set", 'token_command=["x"]'], "exclude each other"),
        (["--set", "oauth_mechanism=plain", "--set", "token_file=t"], "'xoauth2' or 'oauthbearer'"),
    ],
)
def test_contradictory_oauth_options_are_refused(profile: Path, options: list[str], why: str) -> None:
    added = run("service", "add", "smtp", "gmail", "--set", "host=127.0.0.1", "--set", f"username={USER}",
                *options, profile=profile)  # fmt: skip
    assert added.returncode == 2 and why in added.stderr
