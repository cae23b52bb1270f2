"""The README's benchmark sections (the report and the pool's overhead) and fault table are
what benchmarks/report.py and tests/faults/report.py render from the committed results: no
number is typed by hand."""

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


def test_jitter_table_leaves_out_unbalanced_runs_but_counts_their_errors() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def row(rnd: int, rps: float, growth: float, share: float, errors: int) -> dict[str, object]:
        return {
            "contender": "dbpool",
            "round": rnd,
            "rps": rps,
            "p50_ms": 10.0,
            "p99_ms": 20.0,
            "errors": errors,
            "reuse": 1.0,
            "rss_mib": 100.0,
            "rss_growth_kib_per_1000": growth,
            "round_trip_added_ms": 3.0,
            "worker_share": share,
        }

    jitter = {
        "environment": {"min_worker_share": 0.25},
        "jitter_ms": [1.0, 0.5],
        # The third run measured one worker: the other opened its pool during it.
        "rows": [row(1, 1000, 30, 0.5, 0), row(2, 1100, 40, 0.45, 0), row(3, 500, 1300, 0.0, 2)],
    }
    (cells,) = report.jitter_table(jitter).rows
    assert cells[1] == "1,050 (1,000-1,100)"
    assert cells[4] == "2"
    assert cells[7] == "35.0"
