from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import recording


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test ever touches the real user's default profile."""
    monkeypatch.delenv("POSTROOM_PROFILE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def calls() -> Iterator[list[tuple[str, str, object]]]:
    recording.CALLS.clear()
    recording.MARKS.clear()
    recording.LOGON_FAILS.clear()
    recording.INBOUND.clear()
    yield recording.CALLS
    recording.CALLS.clear()
    recording.MARKS.clear()
    recording.LOGON_FAILS.clear()
    recording.INBOUND.clear()
