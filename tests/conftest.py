from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tests.store.pgutil import require_server

from support import recording


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.postgres`: skip (under CI: fail) unless a PostgreSQL server answers, before any fixture
    of the test runs. The first such test starts the session's test cluster (support.pgcluster)."""
    if item.get_closest_marker("postgres") is not None:
        require_server()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None, None, None]:
    """The last section before the closing line: how many tests skipped, and why. A suite whose
    real-server tests all skip would otherwise look as green as one that ran them."""
    yield
    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    total = sum(reasons.values())
    terminalreporter.section(f"{total} test{'' if total == 1 else 's'} skipped", sep="-")
    for reason, count in reasons.most_common():
        terminalreporter.line(f"{count:5d}  {reason}")


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
    recording.ON_SUBMIT.clear()
    yield recording.CALLS
    recording.CALLS.clear()
    recording.MARKS.clear()
    recording.LOGON_FAILS.clear()
    recording.INBOUND.clear()
    recording.ON_SUBMIT.clear()
