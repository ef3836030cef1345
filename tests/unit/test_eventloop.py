"""Which event loop a session runs on: the daemon's is uvloop when installed, unless told otherwise."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

import postroom
from postroom.engine.eventloop import EventLoopKind, daemon_loop_kind, running_loop_kind
from postroom.mapi.codes import HResult, MAPIError

from support.profiles import make_profile

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop not installed (the [fast] extra)")


def test_the_daemon_takes_uvloop_when_installed_unless_told_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTROOM_EVENT_LOOP", raising=False)
    assert daemon_loop_kind() == (EventLoopKind.UVLOOP if HAS_UVLOOP else EventLoopKind.ASYNCIO)
    monkeypatch.setenv("POSTROOM_EVENT_LOOP", "asyncio")
    assert daemon_loop_kind() is EventLoopKind.ASYNCIO
    monkeypatch.setenv("POSTROOM_EVENT_LOOP", " UVLOOP ")
    if HAS_UVLOOP:
        assert daemon_loop_kind() is EventLoopKind.UVLOOP
    else:
        with pytest.raises(MAPIError, match=r"postroom\[fast\]") as info:
            daemon_loop_kind()
        assert info.value.code == HResult.MAPI_E_NO_SUPPORT


def test_an_unknown_event_loop_is_an_invalid_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTROOM_EVENT_LOOP", "tokio")
    with pytest.raises(MAPIError, match="'asyncio' or 'uvloop'") as info:
        daemon_loop_kind()
    assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER


async def _kind() -> EventLoopKind | None:
    return running_loop_kind()


def test_a_plain_session_runs_on_asyncio(tmp_path: Path) -> None:
    with postroom.logon(make_profile(tmp_path / "profile")) as session:
        assert session.event_loop is EventLoopKind.ASYNCIO
        assert session._run(_kind()) is EventLoopKind.ASYNCIO
    assert asyncio.run(_kind()) is EventLoopKind.ASYNCIO


@needs_uvloop
def test_the_daemon_session_runs_on_uvloop_and_its_status_row_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POSTROOM_EVENT_LOOP", raising=False)
    session = postroom.logon_when_usable(make_profile(tmp_path / "profile"), asyncio.Event())
    assert session is not None
    with session:
        assert session.event_loop is EventLoopKind.UVLOOP
        assert session._run(_kind()) is EventLoopKind.UVLOOP
        spooler = next(row for row in session.status() if row.display_name == "MAPI spooler")
        assert spooler.status_string.endswith("; event loop uvloop")


def test_insisting_on_uvloop_when_it_is_not_installed_is_no_support(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "uvloop" else real_find_spec(name))
    monkeypatch.delenv("POSTROOM_EVENT_LOOP", raising=False)
    assert daemon_loop_kind() is EventLoopKind.ASYNCIO  # not installed: plain asyncio, quietly
    monkeypatch.setenv("POSTROOM_EVENT_LOOP", "uvloop")
    with pytest.raises(MAPIError, match=r"not installed \(pip install 'postroom\[fast\]'\)") as info:
        daemon_loop_kind()
    assert info.value.code == HResult.MAPI_E_NO_SUPPORT
