"""The benchmark scripts keep working: `python benchmarks/run.py --quick` runs every figure once, tiny;
`python benchmarks/soak.py --quick` runs the soak small."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIGURES = [1, 2, 3, 4, 5, 6, 9]  # benchmarks/run.py FIGURES (figure 7 needs PostgreSQL and runs alone)


def test_quick_benchmark_run_prints_every_figure(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path / "json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    figures = re.findall(r"^== Figure (\d): ", proc.stdout, flags=re.MULTILINE)
    assert figures == [str(n) for n in FIGURES], proc.stdout
    assert "FAILED" not in proc.stdout
    for n in FIGURES:
        assert (tmp_path / "json" / f"fig{n}.json").is_file()


def test_quick_soak_loses_nothing_and_explains_every_duplicate(tmp_path: Path) -> None:
    """`benchmarks/soak.py --quick`: 1,000 messages over four transports, daemons SIGKILLed, the
    PostgreSQL server restarted (a private cluster; SQLite where PostgreSQL is not installed).
    Its exit status judges correctness only; the latency figures are printed, not asserted."""
    store = "postgresql" if list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) else "sqlite"
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--quick", "--store", store, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    result = json.loads(out.read_text())
    assert result["messages"] == 1000 and result["kills"] >= 1, proc.stdout
    assert result["lost"] == 0 and result["left"] == 0 and result["ndrs"] == 0, proc.stdout
    assert result["duplicates"] == result["unknown_duplicates"], proc.stdout
    assert result["pg_restarts"] == (1 if store == "postgresql" else 0), proc.stdout
