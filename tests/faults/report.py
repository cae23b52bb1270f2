"""The fault suite's report: one row per scenario and database, rendered as a markdown table.

Each scenario calls :func:`record` once it has asserted its outcomes; the row is written to
``benchmarks/results/faults/<vendor>-<scenario>.json`` (a rerun replaces it). ``python -m
tests.faults.report`` renders every row into ``benchmarks/results/faults.md`` and into the
README between its ``fault-report`` markers; with ``--check`` it only fails if the README
differs from the committed rows (the suite runs that).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
ROWS = ROOT / "benchmarks" / "results" / "faults"
TABLE = ROOT / "benchmarks" / "results" / "faults.md"
README = ROOT / "README.rst"
START = ".. fault-report-start"
END = ".. fault-report-end"
HEADERS = [
    "scenario",
    "database",
    "requests",
    "errors",
    "500s",
    "recovery",
    "recovery per worker",
    "connections before → after",
    "outcome",
]

_VENDORS = {"postgresql": "PostgreSQL", "mysql": "MariaDB"}


@dataclass(frozen=True)
class Row:
    #: Short title; also names the row's file.
    scenario: str
    #: ``postgresql`` or ``mysql``.
    vendor: str
    #: Requests (or units of work) sent during the scenario.
    requests: int
    #: Requests that failed, with what the scenario allows (e.g. "12 (503 while down)").
    errors: str
    #: Seconds from the fault's end to the first success; None where there is no recovery.
    recovery_s: float | None
    #: App sessions on the server before the fault and at the end.
    connections_before: int
    connections_after: int
    #: One line: what was asserted.
    outcome: str
    #: Requests answered with a 500 (an error no middleware made a 503 of); None where the
    #: scenario does not count them.
    server_errors: int | None = None
    #: Per worker process, seconds from the fault's end to its own first success (the
    #: slowest of the rounds); None where the scenario does not tell workers apart.
    worker_recovery_s: list[float] | None = None


def record(row: Row) -> None:
    ROWS.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", row.scenario.lower()).strip("-")
    (ROWS / f"{row.vendor}-{slug}.json").write_text(json.dumps(asdict(row), indent=1) + "\n")


def rows() -> list[Row]:
    return sorted(
        (Row(**json.loads(path.read_text())) for path in ROWS.glob("*.json")),
        key=lambda row: (row.scenario, row.vendor),
    )


def _cells(row: Row) -> list[str]:
    recovery = "n/a" if row.recovery_s is None else f"{row.recovery_s:.2f} s"
    per_worker = (
        "n/a"
        if row.worker_recovery_s is None
        else ", ".join(f"{seconds:.2f} s" for seconds in sorted(row.worker_recovery_s))
    )
    return [
        row.scenario,
        _VENDORS.get(row.vendor, row.vendor),
        str(row.requests),
        row.errors,
        "n/a" if row.server_errors is None else str(row.server_errors),
        recovery,
        per_worker,
        f"{row.connections_before} → {row.connections_after}",
        row.outcome,
    ]


def render() -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows()]
    return "\n".join(lines) + "\n"


def render_rst() -> str:
    lines = [".. list-table:: Fault suite (``make test-faults``)", "   :header-rows: 1", ""]
    for cells in [HEADERS, *(_cells(row) for row in rows())]:
        lines.append(f"   * - {cells[0]}")
        lines += [f"     - {cell}" for cell in cells[1:]]
    return "\n".join(lines) + "\n"


def readme_with_table(text: str) -> str:
    head, found, rest = text.partition(START + "\n")
    if not found or END not in rest:
        raise SystemExit(f"README.rst has no {START} ... {END} markers")
    return head + START + "\n\n" + render_rst() + "\n" + rest[rest.index(END) :]


def main(argv: list[str]) -> int:
    if not rows():
        print(f"no rows under {ROWS}: run `make test-faults` first", file=sys.stderr)
        return 1
    readme = README.read_text()
    updated = readme_with_table(readme)
    if "--check" in argv:
        if updated != readme:
            print(
                "README.rst's fault table differs from benchmarks/results/faults: "
                "run `python -m tests.faults.report`",
                file=sys.stderr,
            )
            return 1
        return 0
    TABLE.write_text(render())
    README.write_text(updated)
    print(f"wrote {TABLE.relative_to(ROOT)} and README.rst's fault table")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
