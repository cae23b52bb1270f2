"""The README's benchmark section and fault table are what benchmarks/report.py and
tests/faults/report.py render from the committed results: no number is typed by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_benchmark_section_matches_the_committed_results() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_readme_fault_table_matches_the_committed_rows() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.faults.report", "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
