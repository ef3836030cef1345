"""Fixtures the integration tests share: the real Postfix and Dovecot on loopback (peers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import PASSWORD_ENV, Peers, running_peers

from support.cli import ok, postroom


@pytest.fixture(scope="session")
def peers() -> Iterator[Peers]:
    """One Postfix and one Dovecot for the whole session, started by the first test that asks."""
    yield from running_peers()


@pytest.fixture(autouse=True)
def _peer_password(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers' password in the environment, for `password_env` (only for tests using them)."""
    if "peers" in request.fixturenames:
        peers: Peers = request.getfixturevalue("peers")
        monkeypatch.setenv(PASSWORD_ENV, peers.password)


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    """A fresh profile made by `postroom init`: the default `local` transport, online."""
    directory = tmp_path / "profile"
    ok(postroom("init", directory))
    return directory
