"""The systemd units in docs/systemd say what the daemon does: Type=notify with a watchdog, a
reload by SIGHUP, and the hardening options; `systemd-analyze verify` finds nothing else wrong."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[2] / "docs" / "systemd"


def settings(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("name", ["postroom.service", "postroom-user.service"])
def test_each_unit_is_type_notify_with_a_watchdog_and_reloads_with_sighup(name: str) -> None:
    unit = settings(UNITS / name)
    assert unit["Type"] == ["notify"]
    assert unit["WatchdogSec"] and unit["NotifyAccess"] == ["all"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "spooler --smtp 127.0.0.1:" in unit["ExecStart"][0]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]


def test_the_system_unit_runs_as_its_own_user_with_the_system_profile() -> None:
    unit = settings(UNITS / "postroom.service")
    assert unit["User"] == ["postroom"]
    assert unit["Environment"] == ["POSTROOM_PROFILE=/var/lib/postroom/profile"]
    assert unit["ReadWritePaths"] == ["/var/lib/postroom"]
    for option in ("ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID", "ProtectKernelTunables"):
        assert unit[option] == ["yes"], option


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_finds_nothing_wrong_but_the_missing_binary() -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(UNITS / "postroom.service")], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in done.stderr.splitlines() if line.strip() and "is not executable" not in line]
    assert problems == []
