"""The fault suite's report: one row per scenario and database, rendered as a markdown table.

Each scenario calls :func:`record` once it has asserted its outcomes; the row is written to
``benchmarks/results/faults/<vendor>-<scenario>.json`` (a rerun replaces it). ``python -m
tests.faults.report`` renders every row into ``benchmarks/results/faults.md``, which the README
includes between its ``faults`` markers (see benchmarks/readme.py).
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


def record(row: Row) -> None:
    ROWS.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", row.scenario.lower()).strip("-")
    (ROWS / f"{row.vendor}-{slug}.json").write_text(json.dumps(asdict(row), indent=1) + "\n")


def rows() -> list[Row]:
    return sorted(
        (Row(**json.loads(path.read_text())) for path in ROWS.glob("*.json")),
        key=lambda row: (row.scenario, row.vendor),
    )


def render() -> str:
    lines = [
        "| scenario | database | requests | errors | recovery "
        "| connections before → after | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows():
        recovery = "n/a" if row.recovery_s is None else f"{row.recovery_s:.2f} s"
        lines.append(
            f"| {row.scenario} | {_VENDORS.get(row.vendor, row.vendor)} | {row.requests} "
            f"| {row.errors} | {recovery} | {row.connections_before} → {row.connections_after} "
            f"| {row.outcome} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    if not rows():
        print(f"no rows under {ROWS}: run `make test-faults` first", file=sys.stderr)
        return 1
    TABLE.write_text(render())
    print(f"wrote {TABLE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
