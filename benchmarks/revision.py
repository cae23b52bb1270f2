"""Which code a benchmark measured: recorded in every results file's ``environment``, so
that a report put together from runs made at different times says so."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What a benchmark's figures depend on: the package and the benchmarks' own code (not the
#: results, which a run rewrites as it goes).
MEASURED = ("django_dbpool", "benchmarks/*.py", "benchmarks/benchsite")


def revision() -> str:
    """The commit checked out, abbreviated, with ``+changes`` when the measured code differs
    from it; ``unknown`` outside a git checkout (an unpacked sdist, say)."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        changed = _git("status", "--porcelain", "--", *MEASURED)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed else "")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
