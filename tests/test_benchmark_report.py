"""The README's benchmark sections (the report and the pool's overhead) and fault table are
what benchmarks/report.py and tests/faults/report.py render from the committed results: no
number is typed by hand."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


def _benchmark_module(name: str) -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _report() -> Any:
    return _benchmark_module("report")


def test_jitter_table_leaves_out_unbalanced_runs_but_counts_their_errors() -> None:
    report = _report()

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


def test_throughput_target_sets_each_miss_against_the_a_a_pair() -> None:
    report = _report()

    def rows(contender: str, concurrency: int, rps: list[float]) -> list[dict[str, Any]]:
        return [
            {"contender": contender, "round": rnd, "concurrency": concurrency, "rps": value}
            for rnd, value in enumerate(rps, 1)
        ]

    timed = [
        *rows("persistent", 16, [1000, 1000, 1000]),
        *rows("persistent_aa", 16, [900, 950, 1000]),
        *rows("dbpool", 16, [940, 960, 950]),
        *rows("persistent", 64, [1000, 1000, 1000]),
        *rows("persistent_aa", 64, [1010, 990, 1020]),
        *rows("dbpool", 64, [900, 850, 880]),
    ]
    medians = [0.95, 0.88]
    aa = report.level_ratios(timed, "persistent_aa", "persistent", [16, 64])
    text = report.aa_comparison(aa, [16, 64], medians, 0.97)
    assert "same rounds: 0.95x / 1.01x (single rounds 0.90x-1.02x)" in text
    # 0.02 short of 0.97 where the identical sites came 0.05 apart; 0.09 short where 0.01.
    assert "at 16 clients short by 0.02, no more than the A/A pair's 0.05 from 1" in text
    assert "at 64 clients short by 0.09, more than the A/A pair's 0.01 from 1" in text
    # A run without the A/A site says nothing about it.
    without = [row for row in timed if row["contender"] != "persistent_aa"]
    assert report.level_ratios(without, "persistent_aa", "persistent", [16, 64]) is None
    assert report.aa_comparison(None, [16, 64], medians, 0.97) == ""


def test_persistent_target_gives_the_diagnostic_rows_and_says_where_the_bound_misses() -> None:
    report = _report()
    rps = {
        "persistent": {16: [1000, 1000, 1000], 64: [1000, 1000, 1000]},
        "dbpool_threads": {16: [990, 1010, 950], 64: [960, 940, 980]},
        # The bound alone: above 0.97 at 16 clients, below at 64.
        "bound": {16: [1000, 980, 1020], 64: [950, 900, 930]},
    }
    timed = [
        {"contender": contender, "round": rnd, "concurrency": concurrency, "rps": value}
        for contender, levels in rps.items()
        for concurrency, values in levels.items()
        for rnd, value in enumerate(values, 1)
    ]
    text = report.diagnostics_over_http(timed, [16, 64], 0.97)
    assert f"{report.NAMES['dbpool_threads']} 0.99x / 0.96x;" in text
    assert f"{report.NAMES['bound']} 1.00x / 0.93x, below 0.97x at 64 clients:" in text
    # Where the bound meets the floor everywhere, nothing is said of a miss.
    assert "below" not in report.diagnostics_over_http(timed, [16, 64], 0.9)
    # A run without the diagnostics says nothing about them.
    plain = [row for row in timed if row["contender"] != "bound"]
    assert report.diagnostics_over_http(plain, [16, 64], 0.97) == ""


def test_cpu_breakdown_sets_the_diagnostics_beside_django_dbpool_round_by_round() -> None:
    report = _report()
    cpu = {
        "persistent": [700.0, 720.0, 690.0],
        "dbpool": [760.0, 770.0, 750.0],
        "dbpool_threads": [740.0, 760.0, 720.0],
        "bound": [705.0, 700.0, 700.0],
    }
    rows = [
        {"contender": contender, "round": rnd, "cpu_us": value}
        for contender, values in cpu.items()
        for rnd, value in enumerate(values, 1)
    ]
    text = report.cpu_breakdown(rows)
    # Differences taken within each round (60, 50, 60 for django_dbpool), then the median.
    assert "django_dbpool +60;" in text
    assert "no thread waiting +40;" in text
    assert "no pool +5" in text  # 5, -20, 10
    # A run without the diagnostics says nothing about them.
    plain = [row for row in rows if row["contender"] in ("persistent", "dbpool")]
    assert report.cpu_breakdown(plain) == ""


def test_cpu_ratios_of_the_lease_benchmark_are_taken_block_by_block() -> None:
    leases_report = _benchmark_module("leases_report")
    # The machine slows down over the run: every contender's figures double. Block by block,
    # transaction leases cost 1.10x, 1.02x, 1.06x, 1.04x request leases.
    cpu = {
        "transaction_4": [1100.0, 1530.0, 2120.0, 2600.0],
        "request_4": [1000.0, 1500.0, 2000.0, 2500.0],
    }
    rows = [
        {"contender": contender, "round": block, "cpu_us": value}
        for contender, values in cpu.items()
        for block, value in enumerate(values, 1)
    ]
    ratio = leases_report.block_ratio(rows, "transaction_4", "request_4")
    assert ratio is not None
    value, blocks = ratio
    assert value == pytest.approx(1.05)  # the median of the blocks' ratios
    assert blocks == pytest.approx([1.10, 1.02, 1.06, 1.04])
    text = leases_report.block_text(ratio)
    assert text == "1.050x (middle half of 4 blocks: 1.04x-1.06x)"
    # The ratio of the medians would have been 1825 / 1750 = 1.043x: not what is reported.
    assert leases_report.block_ratio(rows, "transaction_4", "request_8") is None
    assert leases_report.block_text(None) == "n/a"


def test_provenance_names_each_results_file_s_commit_or_says_it_was_not_recorded() -> None:
    report = _report()
    old = {"environment": {"date": "2026-12-01"}}
    new = {"environment": {"date": "2026-12-03", "revision": "0123456789ab+changes"}}
    text = report.provenance({"HTTP load": old, "CPU time per request": new, "cycle": None})
    assert "HTTP load at a commit not recorded, CPU time per request at 0123456789ab+changes." in (
        text
    )
    assert "cycle" not in text
    assert "Together" not in text  # the old file does not say how long it ran
    # Results from before revisions were recorded: nothing to say.
    assert report.provenance({"HTTP load": old, "cycle": None}) == ""


def test_provenance_gives_each_part_s_run_time_and_their_sum() -> None:
    report = _report()

    def results(seconds: int) -> dict[str, Any]:
        return {"environment": {"revision": "0123456789ab", "elapsed_s": seconds}}

    text = report.provenance(
        {"HTTP load": results(4_380), "latency scenario": results(45), "cycle": results(150)}
    )
    assert "HTTP load at 0123456789ab (1 h 13 min)" in text
    assert "latency scenario at 0123456789ab (45 s)" in text
    assert "cycle at 0123456789ab (3 min)" in text  # whole minutes, half a minute up
    assert "Together 1 h 16 min, without starting the servers." in text
    assert [report.duration(s) for s in (0, 59, 60, 89, 3_540, 3_570, 3_929)] == [
        "0 s",
        "59 s",
        "1 min",
        "1 min",
        "59 min",
        "1 h 00 min",
        "1 h 05 min",
    ]


def test_pool_overhead_target_judges_the_table_ratio_and_gives_the_runs_spread() -> None:
    report = _report()

    def data(ours: list[float], theirs: list[float]) -> dict[str, Any]:
        def row(single: list[float]) -> dict[str, Any]:
            return {"single_s": single, "rate": [1.0], "fairness": [1.0]}

        return {"rows": {"django_dbpool": row(ours), "psycopg_pool": row(theirs)}}

    # Medians 2.0 over 4.0: 0.50x, a pass, though one run alone came out at 0.90x.
    met = report.pool_overhead_target(data([1.0, 2.0, 2.7], [4.0, 5.0, 3.0]))
    assert met.passed
    assert met.measured == "0.50x (single runs 0.25x-0.90x)"
    # Medians 2.5 over 4.0: 0.62x, a miss by 0.02.
    missed = report.pool_overhead_target(data([2.5, 2.5, 2.5], [4.0, 4.0, 4.0]))
    assert not missed.passed
    assert missed.measured.startswith("0.62x")
