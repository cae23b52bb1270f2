"""Per-statement cost of connection tagging, against Django's own cursor wrapper.

Run ``python benchmarks/tagging.py`` (no server needed). Executes one parameterised
statement through:

* Django's ``CursorWrapper`` (what the stock backends use);
* django_dbpool's tagging wrapper outside any tag context (tagging off);
* the same inside a request-like context (``route`` and ``view``: tagging on);
* the cursor of a connection with transaction leases, outside any tag context: tagging off
  plus the safety net's prefix test on each statement (``backends/leasing.py``);

over a no-op DB-API cursor, so only the Python cost is measured. Runs alternate between the
four (A B C D A B C D ...); medians of 7. A PostgreSQL round trip is 20-35 µs on loopback.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import django
from django.conf import settings

settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "django_dbpool.backends.postgresql",
            "NAME": "bench",
            "HOST": "127.0.0.1",
        }
    },
    INSTALLED_APPS=["django_dbpool"],
    USE_TZ=True,
)
django.setup()

from django.db import connections  # noqa: E402
from django.db.backends.utils import CursorWrapper  # noqa: E402

from django_dbpool.backends.cursors import TaggingCursorMixin, tagging_cursor_class  # noqa: E402
from django_dbpool.backends.leasing import lease_cursor_mixin  # noqa: E402
from django_dbpool.tagging import tag  # noqa: E402

SQL = 'SELECT "bank_account"."id" FROM "bank_account" WHERE "bank_account"."id" = %s'
STATEMENTS = 100_000
ROUNDS = 7


class NoOpCursor:
    def execute(self, sql: str, params: object = None) -> None:
        pass

    def close(self) -> None:
        pass


def run(wrapper: CursorWrapper) -> float:
    execute = wrapper.execute
    params = (42,)
    start = time.perf_counter()
    for _ in range(STATEMENTS):
        execute(SQL, params)
    return (time.perf_counter() - start) / STATEMENTS * 1e6


def main() -> None:
    db = connections["default"]
    tagged = tagging_cursor_class(CursorWrapper)
    leased = tagging_cursor_class(CursorWrapper, lease_cursor_mixin(TaggingCursorMixin))
    # A logical connection with transaction leases, outside any transaction or pin: what
    # the safety net checks each statement for (no connection is needed for that).
    db._dbpool_transaction = True
    results: dict[str, list[float]] = {
        "Django CursorWrapper": [],
        "tagging off": [],
        "tagging on": [],
        "transaction leases, tagging off": [],
    }
    for _ in range(ROUNDS):
        results["Django CursorWrapper"].append(run(CursorWrapper(NoOpCursor(), db)))
        results["tagging off"].append(run(tagged(NoOpCursor(), db)))
        with tag(route="accounts/<int:pk>/", view="bank:account"):
            results["tagging on"].append(run(tagged(NoOpCursor(), db)))
        results["transaction leases, tagging off"].append(run(leased(NoOpCursor(), db)))
    base = statistics.median(results["Django CursorWrapper"])
    print(
        f"Python {sys.version.split()[0]}, {STATEMENTS:,} statements per run, medians of {ROUNDS}"
    )
    print()
    print("| cursor | µs per statement | added vs Django's | spread (min-max) |")
    print("|---|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.2f} | {median - base:+.2f} | "
            f"{min(values):.2f}-{max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
