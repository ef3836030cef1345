"""A third-party transport installed as a package, found through its entry point, used by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "postroom-filefax"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the example into a private directory (never into the test environment itself)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
    )
    return target


def postroom(site: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "postroom", "--profile", str(profile), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_entry_point_transport_sends_a_fax(site: Path, tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    assert postroom(site, profile, "init", str(profile)).returncode == 0
    added = postroom(site, profile, "service", "add", "filefax", "fax", "--set", "spool=faxes")
    assert added.returncode == 0, added.stderr
    adrtypes = postroom(site, profile, "--json", "adrtypes")
    assert "FAX" in json.loads(adrtypes.stdout)
    sent = postroom(site, profile, "send", "--to", "Reception <FAX:+15551234>", "--subject", "Cover", "--body", "Hello")
    assert sent.returncode == 0, sent.stderr
    (page,) = (profile / "faxes").iterdir()
    assert page.name.startswith("+15551234.")
    assert "Subject: Cover" in page.read_text() and "Hello" in page.read_text()
    refused = postroom(site, profile, "send", "--to", "FAX:not-a-number", "--subject", "x", "--body", "y")
    assert refused.returncode == 1
    assert "not a fax number" in refused.stdout + refused.stderr


def test_unknown_option_of_the_transport_is_refused(site: Path, tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    postroom(site, profile, "init", str(profile))
    result = postroom(site, profile, "service", "add", "filefax", "fax", "--set", "colour=yes")
    assert result.returncode != 0
    assert "colour" in result.stderr and "Traceback" not in result.stderr
