"""Transaction leases (``POOL["LEASE"] = "transaction"``) against request leases, persistent
connections, Django's native pool and django-pg-real-pool.

Run by ``make bench-leases`` (which starts the database servers); by hand:

    python tools/dbservers.py --postgres --mysql -- python benchmarks/leases.py

Scenarios (``SCENARIOS``; each contender's site on a database of its own, so that the server's
count of sessions tells them apart; in each round the contenders of a group of sites take
turns, the order reversed every other round):

1. gunicorn (2 workers x 8 gthread threads), the one-query view ``/item``: transaction leases
   with ``MAX_SIZE`` 2 per worker against persistent connections (16 sessions).
2. uvicorn (2 workers), the async views ``/wait_async`` (a query, 50 ms of
   ``asyncio.sleep``, a query) and ``/item_async`` (one query): transaction leases against
   request leases (``MAX_SIZE`` 4 and 64), Django's native pool and django-pg-real-pool
   (``max_size`` 4); and the waiting view as a sync view (``/wait``, ``time.sleep``) under
   gunicorn, transaction against request leases. PostgreSQL only.
3. CPU time per request without HTTP: the ten-query view ``/ten`` through Django's WSGI
   handler, 8 threads in one process, transaction against request leases, with ``MAX_SIZE``
   4 (threads share connections) and 8 (one per thread). The contenders are database aliases
   of that one process and take turns in blocks of short phases
   (``request_cpu.run_interleaved``): on a shared machine the CPU's speed drifts between two
   runs in fresh processes by more than the 5 % the target allows, while two phases a second
   apart see the same machine.

Each scenario has an A/A pair: transaction leases twice, two identical sites (or aliases), whose
ratio is how far two measurements of the same thing come apart on this machine.
The peak of server sessions is sampled during every HTTP measurement (warm-up included).
MariaDB runs scenarios 1 and 3 when its URL is set.

Before the first round, every site serves each of its views for ``SITE_WARMUP`` seconds,
uncounted: its pool opens the connections the load needs (request leases with ``MAX_SIZE`` 64
start with 4), so that no contender pays for it in a measured round.

Environment: ``BENCH_ROUNDS`` (4), ``BENCH_SECONDS`` (5, per measurement), ``BENCH_WARMUP``
(1, before each measurement), ``BENCH_CPU_BLOCKS`` (40), ``BENCH_SCENARIOS`` (all; a
comma-separated subset of the scenarios' keys and ``cpu``, for a quick look, not for the
report), ``BENCH_OUT`` (``leases.json``: the file written in ``results/``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import harness
import request_cpu
import web
from revision import revision

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "1"))
CPU_BLOCKS = int(os.environ.get("BENCH_CPU_BLOCKS", "40"))
#: Seconds each site serves each of its views before the first round (see above).
SITE_WARMUP = 2.0
ONLY = [key for key in os.environ.get("BENCH_SCENARIOS", "").split(",") if key]
CLIENTS = 64
#: A measurement in which one worker used less than this share of the workers' CPU time (wrk's
#: connections nearly all on the other worker) is made again, up to BALANCE_ATTEMPTS in all.
MIN_WORKER_SHARE = web.MIN_WORKER_SHARE
BALANCE_ATTEMPTS = 3
#: Threads of the CPU run, as in one gunicorn worker; requests per thread and contender in
#: a block, and before the first block.
THREADS = harness.THREADS
CPU_PER_THREAD = 6
CPU_WARMUP = 40
#: A CPU run that takes longer than this is a hang, not a measurement.
RUN_TIMEOUT = 900
T = TypeVar("T")


@dataclass(frozen=True)
class Contender:
    label: str
    #: benchsite's BENCH_CONTENDER, connections per process, django_dbpool's LEASE, MIN_SIZE,
    #: the "bound" site's BENCH_BOUND_SCOPE.
    site: str
    pool_size: int
    lease: str = ""
    min_size: int | None = None
    bound_scope: str = ""

    def extra(self) -> dict[str, str]:
        extra = {"BENCH_LEASE": self.lease} if self.lease else {}
        if self.min_size is not None:
            extra["BENCH_MIN_SIZE"] = str(self.min_size)
        if self.bound_scope:
            extra["BENCH_BOUND_SCOPE"] = self.bound_scope
        return extra


CONTENDERS = {
    "persistent": Contender("persistent connections (CONN_MAX_AGE=None)", "persistent", 4),
    "transaction_2": Contender(
        "django_dbpool, transaction leases, MAX_SIZE 2", "dbpool", 2, "transaction"
    ),
    "transaction_2_aa": Contender(
        "django_dbpool, transaction leases, MAX_SIZE 2, again (A/A)", "dbpool", 2, "transaction"
    ),
    "transaction_4": Contender(
        "django_dbpool, transaction leases, MAX_SIZE 4", "dbpool", 4, "transaction"
    ),
    "transaction_4_aa": Contender(
        "django_dbpool, transaction leases, MAX_SIZE 4, again (A/A)", "dbpool", 4, "transaction"
    ),
    "request_4": Contender("django_dbpool, request leases, MAX_SIZE 4", "dbpool", 4, "request"),
    # As many connections as the CPU scenario's threads: no caller waits, so what remains is
    # the cost of a lease per statement.
    "transaction_8": Contender(
        "django_dbpool, transaction leases, MAX_SIZE 8", "dbpool", 8, "transaction"
    ),
    "request_8": Contender("django_dbpool, request leases, MAX_SIZE 8", "dbpool", 8, "request"),
    # Opens 4 at the start, like the others, and grows with the load.
    "request_64": Contender(
        "django_dbpool, request leases, MAX_SIZE 64", "dbpool", 64, "request", min_size=4
    ),
    # No pool: persistent connections, and a semaphore of 2 places per process that a thread
    # holds from each cursor's opening to its closing (benchsite.bounded). The least that a
    # lease per statement with 2 connections can cost: waiting and waking, nothing else.
    "bound_statement_2": Contender(
        "no pool: persistent connections, 2 statements at a time per process (floor)",
        "bound",
        2,
        bound_scope="statement",
    ),
    "native_4": Contender("Django's native pool, max_size 4", "native", 4),
    "realpool_4": Contender("django-pg-real-pool 1.1.0, max_size 4", "realpool", 4),
}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    #: Scenarios of one group share their sites and take turns within each round.
    group: str
    asgi: bool
    path: str
    #: The order of odd rounds (reversed in even ones). The A/A pair's two sites sit on
    #: either side of a contender they are compared with, as close to it in time as each other.
    contenders: tuple[str, ...]
    vendors: tuple[str, ...] = ("postgresql",)


SCENARIOS = (
    Scenario(
        "item_wsgi",
        "gunicorn 2 x 8 gthread threads, one query (/item)",
        "gunicorn_item",
        False,
        "/item",
        ("transaction_2_aa", "persistent", "transaction_2", "bound_statement_2"),
        ("postgresql", "mysql"),
    ),
    Scenario(
        "wait_asgi",
        "uvicorn 2 workers, async view: query, asyncio.sleep(0.05), query (/wait_async)",
        "uvicorn",
        True,
        "/wait_async",
        (
            "request_4",
            "transaction_4_aa",
            "realpool_4",
            "transaction_4",
            "native_4",
            "request_64",
        ),
    ),
    Scenario(
        "item_asgi",
        "uvicorn 2 workers, async view: one query (/item_async)",
        "uvicorn",
        True,
        "/item_async",
        ("request_4", "transaction_4_aa", "realpool_4", "transaction_4", "native_4"),
    ),
    Scenario(
        "wait_wsgi",
        "gunicorn 2 x 8 gthread threads, sync view: query, time.sleep(0.05), query (/wait)",
        "gunicorn_wait",
        False,
        "/wait",
        ("transaction_4_aa", "request_4", "transaction_4"),
    ),
)
#: Scenario 3: CPU time per request without HTTP.
CPU_PATH = "/ten"
#: MAX_SIZE 4: 8 threads share 4 connections (every statement may hand one to another
#: thread); MAX_SIZE 8: one per thread, no caller waits.
CPU_CONTENDERS = ("transaction_4_aa", "request_4", "transaction_4", "request_8", "transaction_8")


def chosen(vendor: str) -> tuple[list[Scenario], bool]:
    """The HTTP scenarios to run on ``vendor``, and whether to run the CPU one."""
    scenarios = [s for s in SCENARIOS if vendor in s.vendors and (not ONLY or s.key in ONLY)]
    return scenarios, not ONLY or "cpu" in ONLY


def measure(
    site: harness.Site, counters: harness.ServerCounters, name: str, rnd: int, path: str
) -> dict[str, Any]:
    """One row: ``name``'s site under :data:`CLIENTS` clients on ``path``; the peak of its
    server sessions over the warm-up and the measurement."""
    counters.start_sampling()
    errors = web.wrk_errors(harness.wrk(site.base, path, CLIENTS, WARMUP))
    attempts = 0
    while True:
        attempts += 1
        main, share, cpu = web.with_cpu(
            site, lambda: harness.wrk(site.base, path, CLIENTS, SECONDS)
        )
        errors += web.wrk_errors(main)
        if share >= MIN_WORKER_SHARE or attempts == BALANCE_ATTEMPTS:
            break
        print(f"  {name:>16} one worker idle: again", flush=True)
    peak = counters.stop_sampling()
    # Requests left in flight by wrk finish before the next contender's turn.
    counters.settle()
    row = {
        "contender": name,
        "round": rnd,
        "rps": main["requests"] / (main["duration_us"] / 1e6),
        "p50_ms": main["p50_us"] / 1000,
        "p99_ms": main["p99_us"] / 1000,
        "requests": main["requests"],
        **web.cpu_figures(cpu, main["requests"]),
        "errors": errors,
        "peak_sessions": peak,
        "attempts": attempts,
        "worker_share": share,
    }
    print(
        f"  {name:>16} {row['rps']:8.0f} rps  p99 {row['p99_ms']:7.1f} ms  errors {errors}"
        f"  peak sessions {peak}  worker share {share:.2f}",
        flush=True,
    )
    return row


def run_group(url: str, vendor: str, scenarios: list[Scenario]) -> dict[str, list[Any]]:
    """The rows of each of ``scenarios`` (one group: one site per contender, up for the whole
    group), by scenario key."""
    names = list(dict.fromkeys(name for s in scenarios for name in s.contenders))
    rows: dict[str, list[Any]] = {s.key: [] for s in scenarios}
    with contextlib.ExitStack() as stack:
        sites, counters = {}, {}
        for name in names:
            contender = CONTENDERS[name]
            own = harness.contender_database(url, name)
            counters[name] = harness.ServerCounters(own)
            stack.callback(counters[name].close)
            sites[name] = stack.enter_context(
                harness.serve(
                    own,
                    contender.site,
                    contender.pool_size,
                    asgi=scenarios[0].asgi,
                    extra=contender.extra(),
                )
            )
        for scenario in scenarios:
            for name in scenario.contenders:
                harness.wrk(sites[name].base, scenario.path, CLIENTS, SITE_WARMUP)
                counters[name].settle()
        for rnd in range(1, ROUNDS + 1):
            for scenario in scenarios:
                print(f"{vendor} {scenario.key}: round {rnd} of {ROUNDS}", flush=True)
                order = scenario.contenders if rnd % 2 else scenario.contenders[::-1]
                for name in order:
                    row = measure(sites[name], counters[name], name, rnd, scenario.path)
                    rows[scenario.key].append(row)
    return rows


def run_cpu(url: str, vendor: str) -> list[dict[str, Any]]:
    """Scenario 3 in one process whose database aliases are the contenders, on one database
    (see ``request_cpu.run_interleaved``): a row per contender and block."""
    aliases = ",".join(
        f"{name}:{CONTENDERS[name].lease}:{CONTENDERS[name].pool_size}" for name in CPU_CONTENDERS
    )
    found: dict[str, Any] = harness.run_site_script(
        __file__,
        "--cpu-run",
        harness.contender_database(url, "cpu"),
        "dbpool",
        harness.POOL_SIZE,
        RUN_TIMEOUT,
        {"BENCH_ALIASES": aliases},
    )
    rows = []
    for name in CPU_CONTENDERS:
        figures, errors = found["cpu_us"][name], found["errors"][name]
        for block, (cpu_us, failed) in enumerate(zip(figures, errors, strict=True), 1):
            rows.append({"contender": name, "round": block, "cpu_us": cpu_us, "errors": failed})
        print(
            f"  {vendor} cpu: {name:>16} {statistics.median(figures):7.0f} µs CPU per request"
            f" (median of {len(figures)} blocks), errors {sum(errors)}",
            flush=True,
        )
    return rows


def budget_s(urls: dict[str, str]) -> float:
    """A rough estimate of the run's length: every HTTP measurement (with about 1.5 s to
    settle and start wrk) and the sites' warm-ups, the CPU runs (about 5 ms per request, on
    one CPU for the GIL, and 1.5 s to start) and the sites' starts (3 s each)."""
    http = sites = cpu = 0.0
    for vendor in urls:
        scenarios, with_cpu = chosen(vendor)
        measurements = sum(len(s.contenders) for s in scenarios)
        http += measurements * (ROUNDS * (WARMUP + SECONDS + 1.5) + SITE_WARMUP + 0.5)
        sites += 3 * len({(s.group, name) for s in scenarios for name in s.contenders})
        requests = (CPU_BLOCKS * CPU_PER_THREAD + CPU_WARMUP) * THREADS
        cpu += (5 + len(CPU_CONTENDERS) * requests * 5e-3) * with_cpu
    return http + sites + cpu


def environment(elapsed_s: int) -> dict[str, Any]:
    import django
    import gunicorn
    import uvicorn

    return {
        "date": time.strftime("%Y-%m-%d"),
        "revision": revision(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "gunicorn": gunicorn.__version__,
        "uvicorn": uvicorn.__version__,
        "workers": 2,
        "threads": THREADS,
        "clients": CLIENTS,
        "rounds": ROUNDS,
        "seconds": SECONDS,
        "warmup": WARMUP,
        "site_warmup": SITE_WARMUP,
        "cpu_blocks": CPU_BLOCKS,
        "cpu_per_thread": CPU_PER_THREAD,
        "min_worker_share": MIN_WORKER_SHARE,
        "balance_attempts": BALANCE_ATTEMPTS,
        "elapsed_s": elapsed_s,
    }


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--cpu-run"]:
        # Django is set up by the WSGI handler run_interleaved makes.
        found = request_cpu.run_interleaved(
            CPU_PATH, list(CPU_CONTENDERS), CPU_BLOCKS, CPU_PER_THREAD, CPU_WARMUP
        )
        print(json.dumps(found))
        return 0
    harness.require_wrk()
    urls = web.database_urls()
    started = time.monotonic()
    print(f"leases: about {budget_s(urls) / 60:.0f} min estimated", flush=True)
    scenarios: dict[str, Any] = {
        s.key: {
            "title": s.title,
            "server": "uvicorn" if s.asgi else "gunicorn",
            "path": s.path,
            "databases": {},
        }
        for s in SCENARIOS
    }
    cpu: dict[str, Any] = {"path": CPU_PATH, "threads": THREADS, "databases": {}}
    failures: list[dict[str, str]] = []

    def attempt(vendor: str, name: str, run: Callable[[], T]) -> T | None:
        # A part that fails (a site that does not start, say) is recorded and reported as a
        # miss, and the other parts still run.
        try:
            return run()
        except Exception as exc:
            traceback.print_exc()
            failures.append({"database": vendor, "part": name, "error": str(exc)[-2000:]})
            return None
        finally:
            print(f"{vendor} {name} done at {time.monotonic() - started:.0f} s", flush=True)

    for vendor, url in urls.items():
        version = web.server_version(url)
        chosen_scenarios, with_cpu = chosen(vendor)
        for group in dict.fromkeys(s.group for s in chosen_scenarios):
            members = [s for s in chosen_scenarios if s.group == group]
            label = ", ".join(s.key for s in members)
            found = attempt(vendor, label, functools.partial(run_group, url, vendor, members))
            for key, rows in (found or {}).items():
                scenarios[key]["databases"][vendor] = {"server": version, "rows": rows}
        if with_cpu:
            cpu_rows = attempt(vendor, "cpu", functools.partial(run_cpu, url, vendor))
            if cpu_rows is not None:
                cpu["databases"][vendor] = {"server": version, "rows": cpu_rows}
    elapsed_s = round(time.monotonic() - started)
    data = {
        "environment": environment(elapsed_s),
        "contenders": {name: c.label for name, c in CONTENDERS.items()},
        "scenarios": scenarios,
        "cpu": cpu,
        "failures": failures,
    }
    out = web.RESULTS / os.environ.get("BENCH_OUT", "leases.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    shown = out.relative_to(harness.ROOT) if out.is_relative_to(harness.ROOT) else out
    print(f"wrote {shown}; elapsed {elapsed_s} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
