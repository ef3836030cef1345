"""The benchmark scripts keep working: `python benchmarks/run.py --quick` runs every figure once, tiny."""

from __future__ import annotations

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
