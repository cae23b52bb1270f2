"""Django-level checkout cost: ``connection.ensure_connection()`` + ``connection.close()``.

This is what Django does around every request: it opens the connection on the first query
and closes it at the end. Each pooled ENGINE is measured on a real server, with a pool of 4:

* 1 thread: microseconds per cycle (the pool's checkout and return, plus Django's own work);
* 16 threads on 4 connections, for a fixed time: cycles per second, and fairness as the most
  over the fewest cycles completed by one thread.

Runs alternate between contenders (A B C A B C ...); figures are medians over the rounds.
Environment: ``BENCH_ROUNDS`` (7), ``BENCH_CYCLES`` (20000 single-thread cycles per
measurement: about a fifth of a second for a pool, long enough that a burst of noise on a
shared machine does not decide the median), ``BENCH_CYCLE_SECONDS`` (2, per contended run).
Run by ``make bench``; by hand: ``python tools/dbservers.py -- python benchmarks/django_cycle.py``.
Writes ``results/cycle.json``.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import environ
from pool_cycle import run_contended
from revision import revision

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tools.dbservers import MYSQL_URL_VAR, POSTGRES_URL_VAR  # noqa: E402

POOL_SIZE = 4
THREADS = 16
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
CYCLES = int(os.environ.get("BENCH_CYCLES", "20000"))
SECONDS = float(os.environ.get("BENCH_CYCLE_SECONDS", "2"))
WARMUP = 0.5

#: (alias, vendor, contender) in the order runs alternate.
CONTENDERS = [
    ("pg_native", "postgresql", "native"),
    ("pg_dbcp", "postgresql", "dbcp"),
    ("pg_dbpool", "postgresql", "dbpool"),
    ("my_dbcp", "mysql", "dbcp"),
    ("my_dbpool", "mysql", "dbpool"),
]


def databases() -> dict[str, dict[str, Any]]:
    urls = {"postgresql": os.environ.get(POSTGRES_URL_VAR), "mysql": os.environ.get(MYSQL_URL_VAR)}
    result = {}
    for alias, vendor, contender in CONTENDERS:
        url = urls[vendor]
        if not url:
            continue
        config: dict[str, Any] = environ.Env.db_url_config(url)
        config["OPTIONS"] = dict(config.get("OPTIONS") or {})
        if contender == "native":
            config["OPTIONS"]["pool"] = {"min_size": POOL_SIZE, "max_size": POOL_SIZE}
        elif contender == "dbcp":
            config["ENGINE"] = f"dj_db_conn_pool.backends.{vendor}"
            config["POOL_OPTIONS"] = {"POOL_SIZE": POOL_SIZE, "MAX_OVERFLOW": 0}
        else:
            config["ENGINE"] = f"django_dbpool.backends.{vendor}"
            config["POOL"] = {"MIN_SIZE": POOL_SIZE, "MAX_SIZE": POOL_SIZE}
        result[alias] = config
    if not result:
        raise SystemExit(
            f"set {POSTGRES_URL_VAR} or {MYSQL_URL_VAR} (run through tools/dbservers.py)"
        )
    # Django wants a default alias; nothing uses it here.
    result["default"] = next(iter(result.values()))
    return result


def single(alias: str) -> float:
    """Seconds per ensure_connection + close, one thread.

    A whole run per contender, not turns of a few hundred cycles as in ``pool_cycle.py``:
    django-db-connection-pool makes round trips at every cycle, and in turns the servers'
    work left over from its chunk fell on the next contender's, making django_dbpool's and
    the native pool's cycles 30-50 % slower than run alone (gc disabled: the same).
    """
    from django.db import connections

    conn = connections[alias]
    for _ in range(100):
        conn.ensure_connection()
        conn.close()
    gc.collect()
    start = time.perf_counter()
    for _ in range(CYCLES):
        conn.ensure_connection()
        conn.close()
    return (time.perf_counter() - start) / CYCLES


def contended(alias: str) -> tuple[float, list[int]]:
    """Cycles per second of :data:`THREADS` threads, and each thread's count, in steady state."""
    from django.db import connections

    def checkout() -> Any:
        conn = connections[alias]  # this thread's wrapper
        conn.ensure_connection()
        return conn

    def give_back(conn: Any) -> None:
        conn.close()

    return run_contended((checkout, give_back), THREADS, SECONDS, WARMUP)


def main() -> int:
    import django
    from django.conf import settings

    settings.configure(
        DATABASES=databases(),
        INSTALLED_APPS=["django_dbpool"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        LOGGING_CONFIG=None,
    )
    django.setup()
    started = time.monotonic()
    aliases = [c for c in CONTENDERS if c[0] in settings.DATABASES]
    rows: dict[str, dict[str, Any]] = {
        alias: {
            "vendor": vendor,
            "contender": contender,
            "single_s": [],
            "rate": [],
            "fairness": [],
        }
        for alias, vendor, contender in aliases
    }
    for rnd in range(1, ROUNDS + 1):
        for alias, _, _ in aliases:
            rows[alias]["single_s"].append(single(alias))
        for alias, _, _ in aliases:
            rate, counts = contended(alias)
            rows[alias]["rate"].append(rate)
            rows[alias]["fairness"].append(max(counts) / min(counts) if min(counts) else None)
        print(f"cycle: round {rnd} of {ROUNDS} done", flush=True)
    for alias, row in rows.items():
        fair = [f for f in row["fairness"] if f is not None]
        print(
            f"  {alias:>10}: {statistics.median(row['single_s']) * 1e6:7.1f} µs/cycle"
            f"  {statistics.median(row['rate']):9.0f} cycles/s with {THREADS} threads"
            f"  fairness {statistics.median(fair) if fair else float('inf'):.2f}"
        )
    out = HERE / "results" / "cycle.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "environment": {
                    "date": time.strftime("%Y-%m-%d"),
                    "revision": revision(),
                    "cpus": os.cpu_count(),
                    "django": django.get_version(),
                    "pool_size": POOL_SIZE,
                    "threads": THREADS,
                    "cycles": CYCLES,
                    "seconds": SECONDS,
                    "rounds": ROUNDS,
                    "elapsed_s": round(time.monotonic() - started),
                },
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
