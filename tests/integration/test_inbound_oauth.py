"""OAuth2 for the imap and pop3 transports, against a Dovecot whose `oauth2` passdb asks a
token-introspection server the test runs (oauth_peer.py).

IMAP logs in with AUTHENTICATE XOAUTH2 / OAUTHBEARER, POP3 with AUTH and the initial response
(RFC 5034); the token comes from `token_command` or `token_file`. A refused token is fetched
again once (it has most likely expired); refused again, the service's status row says so, naming
the user and never the token.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from oauth_peer import OAuthDovecot, running_oauth_dovecot
from peers import Peers

from postroom.mapi.codes import MAPIError
from postroom.mapi.flags import StatusCode
from postroom.transports.imap import IMAPProvider
from postroom.transports.oauth import Mechanism, initial_response
from postroom.transports.options import Secret
from postroom.transports.pop3 import POP3Provider

from support.cli import as_json, ok
from support.cli import postroom as run
from support.inbound import session_for, status_row, subjects
from support.oauth import token_command

pytestmark = pytest.mark.integration

KINDS = ("imap", "pop3")


@pytest.fixture(scope="module")
def dovecot(peers: Peers) -> Iterator[OAuthDovecot]:
    yield from running_oauth_dovecot(peers)


def message(subject: str, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "sam@sender.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hello.\n")
    return msg.as_bytes(policy=SMTP)


def options(dovecot: OAuthDovecot, kind: str, user: str, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": dovecot.port(kind), "security": "none", "username": user, "timeout": 10,
            **extra}  # fmt: skip


def fresh_token(dovecot: OAuthDovecot, user: str) -> str:
    """A token the introspection server takes for `user`."""
    token = f"ya29.{secrets.token_urlsafe(24)}"
    dovecot.introspection.grant(token, user)
    return token


def user_with_message(peers: Peers, subject: str) -> str:
    """A new mailbox user with one message, `subject`, waiting on the server."""
    user = peers.new_user()
    peers.put_message(user, message(subject, user))
    return user


def receives_it(profile: Path, kind: str, opts: dict[str, Any], subject: str) -> None:
    """One receive brings the message `subject`, and the service's status row shows no failure."""
    with session_for(profile, (kind, "in", opts)) as session:
        assert session.receive() == 1
        assert subjects(session) == [subject]
        assert StatusCode.FAILURE not in status_row(session, "in").status_code


@pytest.mark.parametrize("kind", KINDS)
def test_xoauth2_with_a_token_from_the_token_command_receives(
    peers: Peers, dovecot: OAuthDovecot, tmp_path: Path, kind: str
) -> None:
    user = user_with_message(peers, "over oauth")
    token = fresh_token(dovecot, user)
    opts = options(dovecot, kind, user, token_command=json.loads(token_command(tmp_path, token)))
    receives_it(tmp_path / "p", kind, opts, "over oauth")
    assert dovecot.introspection.asked_about(token) == [token]


@pytest.mark.parametrize("kind", KINDS)
def test_oauthbearer_with_the_token_file_receives(
    peers: Peers, dovecot: OAuthDovecot, tmp_path: Path, kind: str
) -> None:
    user = user_with_message(peers, "bearer")
    token = fresh_token(dovecot, user)
    profile = tmp_path / "p"
    profile.mkdir()
    (profile / "token").write_text(token + "\n", encoding="utf-8")
    opts = options(dovecot, kind, user, token_file="token", oauth_mechanism="oauthbearer")
    receives_it(profile, kind, opts, "bearer")
    assert dovecot.introspection.asked_about(token) == [token]


@pytest.mark.parametrize("kind", KINDS)
def test_an_expired_token_is_fetched_again_once_and_the_fresh_one_works(
    peers: Peers, dovecot: OAuthDovecot, tmp_path: Path, kind: str
) -> None:
    user = user_with_message(peers, "after refresh")
    expired = f"expired-{secrets.token_hex(8)}"  # never granted: the server says inactive
    token = fresh_token(dovecot, user)
    opts = options(dovecot, kind, user, token_command=json.loads(token_command(tmp_path, expired, token)))
    receives_it(tmp_path / "p", kind, opts, "after refresh")
    assert dovecot.introspection.asked_about(expired, token) == [expired, token]


@pytest.mark.parametrize("kind", KINDS)
def test_a_token_refused_every_time_fails_the_service_clearly_and_never_shows_the_token(
    peers: Peers, dovecot: OAuthDovecot, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = user_with_message(peers, "never fetched")
    revoked = f"revoked-{secrets.token_hex(8)}"
    dovecot.introspection.grant(revoked, "someone-else@example.test")  # active, but not this user's
    opts = options(dovecot, kind, user, token_command=json.loads(token_command(tmp_path, revoked)))
    with session_for(tmp_path / "p", (kind, "in", opts)) as session:
        assert session.receive() == 0
        row = status_row(session, "in")
        shown = repr([vars(r) for r in session.status()])
    assert StatusCode.FAILURE in row.status_code
    assert f"OAuth2 login (XOAUTH2) as {user} at 127.0.0.1:{dovecot.port(kind)} failed" in row.last_error
    assert "a freshly fetched token was refused too" in row.last_error
    assert dovecot.introspection.asked_about(revoked) == [revoked, revoked]  # fetched again once, no more
    sent = initial_response(Mechanism.XOAUTH2, user, Secret(revoked), "127.0.0.1", dovecot.port(kind)).decode()
    for secret in (revoked, sent):  # neither the token nor what carried it (base64)
        assert secret not in shown and secret not in caplog.text
    for state_file in (tmp_path / "p").glob(".*.json"):
        assert revoked not in state_file.read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", KINDS)
def test_a_token_command_that_fails_says_why_in_the_status_row(
    peers: Peers, dovecot: OAuthDovecot, tmp_path: Path, kind: str
) -> None:
    user = peers.new_user()
    failing = ["python3", "-c", "import sys; sys.exit('refresh token revoked')"]
    with session_for(tmp_path / "p", (kind, "in", options(dovecot, kind, user, token_command=failing))) as session:
        assert session.receive() == 0
        row = status_row(session, "in")
    assert StatusCode.FAILURE in row.status_code
    assert f"no OAuth2 access token for {user}" in row.last_error and "refresh token revoked" in row.last_error


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_that_cannot_check_the_token_now_is_not_taken_for_a_refusal(
    peers: Peers, dovecot: OAuthDovecot, tmp_path: Path, kind: str
) -> None:
    user = peers.new_user()
    token = fresh_token(dovecot, user)
    dovecot.introspection.failing.add(token)  # the identity provider is down
    opts = options(dovecot, kind, user, token_command=json.loads(token_command(tmp_path, token)))
    with session_for(tmp_path / "p", (kind, "in", opts)) as session:
        assert session.receive() == 0
        row = status_row(session, "in")
    assert StatusCode.FAILURE in row.status_code
    assert f"127.0.0.1:{dovecot.port(kind)} could not check the access token now" in row.last_error
    assert dovecot.introspection.asked_about(token) == [token]  # not fetched and sent again


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_without_the_mechanism_is_told_apart_from_a_refused_token(
    peers: Peers, tmp_path: Path, kind: str
) -> None:
    user = peers.new_user()
    port = peers.imap_port if kind == "imap" else peers.pop3_port  # the password-only Dovecot
    calls = tmp_path / "token-calls"
    opts = {"host": "127.0.0.1", "port": port, "security": "none", "username": user, "timeout": 10,
            "token_command": json.loads(token_command(tmp_path, "never-sent"))}  # fmt: skip
    with session_for(tmp_path / "p", (kind, "in", opts)) as session:
        assert session.receive() == 0
        row = status_row(session, "in")
    verb = "AUTHENTICATE" if kind == "imap" else "AUTH"
    assert StatusCode.FAILURE in row.status_code
    assert f"{kind.upper()} server 127.0.0.1:{port} does not offer {verb} XOAUTH2" in row.last_error
    assert not calls.exists()  # no token was fetched for a server that cannot take it


@pytest.mark.parametrize("provider", [IMAPProvider, POP3Provider])
@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"token_file": "t", "password_env": "X"}, "exclude each other"),
        ({"token_file": "t", "token_command": ["x"]}, "exclude each other"),
        ({"token_file": "t", "oauth_mechanism": "plain"}, "'xoauth2' or 'oauthbearer'"),
        ({}, "or 'token_command' or 'token_file' for OAuth2"),
    ],
)
def test_contradictory_or_missing_credentials_are_refused_with_a_clear_message(
    provider: type[IMAPProvider | POP3Provider], extra: dict[str, Any], why: str
) -> None:
    with pytest.raises(MAPIError) as raised:
        provider.validate_options({"host": "127.0.0.1", "username": "ada@example.test", **extra})
    assert why in raised.value.message


def test_the_cli_receives_with_an_oauth2_account_and_a_revoked_token_fails_the_receive_clearly(
    peers: Peers, dovecot: OAuthDovecot, tmp_path: Path
) -> None:
    kind = "imap"  # the CLI path is the same for pop3 (covered above through the face); CLI runs are slow
    user = user_with_message(peers, "through the cli")
    token = fresh_token(dovecot, user)
    profile = tmp_path / "p"
    ok(run("init", "--empty", profile))
    ok(run("service", "add", kind, "in", "--set", "host=127.0.0.1", "--set", f"port={dovecot.port(kind)}",
           "--set", "security=none", "--set", f"username={user}",
           "--set", f"token_command={token_command(tmp_path, token)}", profile=profile))  # fmt: skip
    received = as_json(ok(run("--json", "receive", profile=profile)))
    assert received["received"] == 1 and received["errors"] == []
    listed = as_json(ok(run("--json", "list", "Inbox", profile=profile)))
    assert [row["subject"] for row in listed] == ["through the cli"]
    # The token was revoked meanwhile: the receive fails with the reason, and no token anywhere.
    peers.put_message(user, message("after revocation", user))
    dovecot.introspection.granted.pop(token)
    failed = run("--json", "receive", profile=profile)
    assert failed.returncode == 1
    [error] = as_json(failed)["errors"]
    assert error.startswith(f"in: OAuth2 login (XOAUTH2) as {user} at 127.0.0.1:{dovecot.port(kind)} failed")
    assert token not in failed.stdout + failed.stderr
    status = run("--json", "status", "--here", profile=profile)
    assert token not in status.stdout + status.stderr
