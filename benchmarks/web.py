"""HTTP benchmarks: the same one-query view under gunicorn, each contender in turn.

Run by ``make bench`` (which starts the database servers); by hand:

    python tools/dbservers.py -- python benchmarks/web.py [load|jitter]

``load``: every contender that exists for a database, its site up for the whole run on a
database of its own; at each concurrency the contenders take turns, round after round in
alternating order; writes ``results/web.json``. ``jitter``: connect per request,
Django's native pool and django_dbpool behind a proxy that adds latency with jitter each way
(PostgreSQL); writes ``results/jitter.json``. Without an argument, both.

Environment: ``BENCH_ROUNDS`` (8), ``BENCH_SECONDS`` (5, per measurement), ``BENCH_WARMUP`` (2),
``BENCH_CONTENDERS`` (all; a comma-separated subset for a quick look, not for the report).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import harness
from revision import revision

from tools.dbservers import MYSQL_URL_VAR, POSTGRES_URL_VAR
from tools.tcpproxy import tcp_proxy

RESULTS = harness.HERE / "results"
CONCURRENCY = (16, 64, 256)
POOL_SIZE = harness.POOL_SIZE
#: The order of each round (reversed every other round). django_dbpool runs next to
#: persistent connections and next to the other pool it is compared with; "persistent_aa"
#: runs on persistent's other side, as close to it in time as django_dbpool is.
CONTENDERS = {
    "postgresql": (
        "connect",
        "persistent_aa",
        "persistent",
        "dbpool",
        "native",
        "dbcp",
        "dbpool_threads",
        "bound",
    ),
    "mysql": (
        "connect",
        "persistent_aa",
        "persistent",
        "dbpool",
        "dbcp",
        "dbpool_threads",
        "bound",
    ),
}
THREADS = harness.THREADS
DIAGNOSTIC = harness.DIAGNOSTIC
JITTER_CONTENDERS = ("connect", "native", "dbpool")
#: One way: mean and spread, seconds.
JITTER = (0.001, 0.0005)
JITTER_CONCURRENCY = 16
T = TypeVar("T")

#: gunicorn's workers share one listening socket, and wrk opens its keep-alive connections
#: all at once: now and then one worker accepts nearly all of them and the other idles, which
#: measures one worker, not two, whatever the contender. A measurement in which a worker used
#: less than this share of the workers' CPU time is made again, up to BALANCE_ATTEMPTS times
#: in all; each row records its attempts and the share.
MIN_WORKER_SHARE = 0.25
BALANCE_ATTEMPTS = 4

#: Even, so that each of the two orders a round can run in is run as often: a contender
#: that runs just before another in one order runs just after it in the other.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "8"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "2"))
#: For a quick look by hand: only these contenders (comma-separated names).
ONLY = [name for name in os.environ.get("BENCH_CONTENDERS", "").split(",") if name]


def database_urls() -> dict[str, str]:
    urls = {}
    for vendor, variable in (("postgresql", POSTGRES_URL_VAR), ("mysql", MYSQL_URL_VAR)):
        if os.environ.get(variable):
            urls[vendor] = os.environ[variable]
    if not urls:
        raise SystemExit(
            f"neither {POSTGRES_URL_VAR} nor {MYSQL_URL_VAR} is set: run through "
            "`python tools/dbservers.py -- ...` or `make bench`"
        )
    return urls


def wrk_errors(summary: dict[str, int]) -> int:
    return sum(summary[key] for key in ("connect", "read", "write", "status", "timeout"))


def exact_pass_size(concurrency: int) -> int:
    return max(1024, concurrency * 4)


def wrk_figures(summary: dict[str, int], connects: int) -> dict[str, Any]:
    """Throughput, latency and reuse of one wrk run during which the server saw
    ``connects`` new connections."""
    return {
        "rps": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "requests": summary["requests"],
        "connects": connects,
        # Requests still in flight when wrk stops are not in its count, but may have
        # connected: connect per request can come out below 0.
        "reuse": max(0.0, 1 - connects / summary["requests"]),
    }


def with_cpu(site: harness.Site, run: Callable[[], T]) -> tuple[T, float, dict[str, int]]:
    """What ``run()`` returns; the smallest share of the workers' CPU time that one gunicorn
    worker used while it ran; and what was used meanwhile (see :func:`cpu_figures`): the
    workers' CPU time and the whole machine's busy, idle and stolen time in clock ticks, the
    workers' and the machine's context switches."""
    workers, machine, switches = site.workers_cpu(), harness.machine_cpu(), site.workers_switches()
    result = run()
    cpu = [a - b for a, b in zip(site.workers_cpu(), workers, strict=True)]
    used = {key: value - machine[key] for key, value in harness.machine_cpu().items()}
    used["workers"] = sum(cpu)
    used["workers_switches"] = site.workers_switches() - switches
    return result, min(cpu) / max(1, sum(cpu)), used


def cpu_figures(used: dict[str, int], requests: int) -> dict[str, float]:
    """Per request: the CPU time (µs) of the workers and of the whole machine, and their
    context switches; the shares of the machine's time left idle and stolen by the host."""
    requests = max(1, requests)
    us_per_tick = 1e6 / harness.TICKS
    total = max(1, used["busy"] + used["idle"] + used["steal"])
    return {
        "workers_cpu_us": used["workers"] * us_per_tick / requests,
        "machine_cpu_us": used["busy"] * us_per_tick / requests,
        "idle_share": used["idle"] / total,
        "steal_share": used["steal"] / total,
        "workers_switches": used["workers_switches"] / requests,
        "machine_switches": used["switches"] / requests,
    }


def measure_load(
    site: harness.Site,
    counters: harness.ServerCounters,
    contender: str,
    rnd: int,
    concurrency: int,
) -> dict[str, Any]:
    """One row: ``contender``'s site at ``concurrency`` clients."""
    # The server-side counters run no query of their own while settling.
    counters.start_sampling()
    warm = harness.wrk(site.base, "/item", concurrency, WARMUP)
    peak = counters.stop_sampling()
    errors = wrk_errors(warm)
    attempts = 0
    while True:
        attempts += 1
        counters.settle()
        connects_before = counters.connects()
        counters.start_sampling()
        main, share, cpu = with_cpu(
            site, lambda: harness.wrk(site.base, "/item", concurrency, SECONDS)
        )
        peak = max(peak, counters.stop_sampling())
        errors += wrk_errors(main)
        if share >= MIN_WORKER_SHARE or attempts == BALANCE_ATTEMPTS:
            break
        print(f"  {contender:>14} c={concurrency:<3} one worker idle: again", flush=True)
    counters.settle()
    connects = counters.connects() - connects_before
    # Statements per request over a pass whose every request is answered. It follows the
    # pause the settling took: an uncounted pass of the same size first brings the pool's
    # connections back into use, so that a connection left idle longer than VALIDATE_AFTER
    # by the measurement's own pause is not counted as a request's statement.
    exact = exact_pass_size(concurrency)
    errors += harness.exact_requests(site.base, "/item", concurrency, exact)
    counters.reset_statements()
    errors += harness.exact_requests(site.base, "/item", concurrency, exact)
    statements = counters.statements()
    row = {
        "contender": contender,
        "round": rnd,
        "concurrency": concurrency,
        **wrk_figures(main, connects),
        **cpu_figures(cpu, main["requests"]),
        "errors": errors,
        "peak_connections": peak,
        "statements_per_request": statements / exact,
        "attempts": attempts,
        "worker_share": share,
    }
    print(
        f"  {contender:>14} c={concurrency:<3} {row['rps']:8.0f} rps"
        f"  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}"
        f"  peak {peak}  stmts/req {row['statements_per_request']:.3f}"
        f"  reuse {row['reuse']:.5f}  worker share {share:.2f}"
        f"  CPU/req {row['machine_cpu_us']:.0f} us  idle {row['idle_share']:.0%}"
        f"  switches/req {row['workers_switches']:.1f}",
        flush=True,
    )
    return row


def run_load(urls: dict[str, str]) -> dict[str, Any]:
    """Every contender's site up at once, each on a database of its own; at each
    concurrency, the contenders take turns, round after round, in alternating order (A B C,
    C B A, ...), so that the runs compared are made close together in time."""
    results: dict[str, Any] = {"databases": {}}
    for vendor, url in urls.items():
        contenders = [c for c in CONTENDERS[vendor] if not ONLY or c in ONLY]
        rows: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            sites, counters = {}, {}
            for contender in contenders:
                own = harness.contender_database(url, contender)
                counters[contender] = harness.ServerCounters(own)
                stack.callback(counters[contender].close)
                site_contender, pool_size = DIAGNOSTIC.get(contender, (contender, POOL_SIZE))
                sites[contender] = stack.enter_context(
                    harness.serve(own, site_contender, pool_size)
                )
            for concurrency in CONCURRENCY:
                for rnd in range(1, ROUNDS + 1):
                    print(f"{vendor}: {concurrency} clients, round {rnd} of {ROUNDS}", flush=True)
                    order = contenders if rnd % 2 else contenders[::-1]
                    for contender in order:
                        row = measure_load(
                            sites[contender], counters[contender], contender, rnd, concurrency
                        )
                        rows.append(row)
        results["databases"][vendor] = {"server": server_version(url), "rows": rows}
    return results


def measure_jitter(
    url: str, counters: harness.ServerCounters, contender: str, rnd: int
) -> dict[str, Any]:
    parts = urlsplit(url)
    assert parts.hostname
    assert parts.port
    with tcp_proxy(parts.hostname, parts.port) as proxy:
        proxy.jitter(*JITTER)
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
        proxied = urlunsplit(parts._replace(netloc=netloc))
        with harness.serve(proxied, contender, POOL_SIZE) as site:
            # Warm until both workers have served (each has its pool open): a worker that
            # meets its first request during the measurement opens its connections then,
            # and their memory would count as the requests'.
            errors = 0

            def run(seconds: float) -> tuple[dict[str, int], float, dict[str, int]]:
                return with_cpu(
                    site, lambda: harness.wrk(site.base, "/item", JITTER_CONCURRENCY, seconds)
                )

            warm_attempts = 0
            while True:
                warm_attempts += 1
                warm, warm_share, _ = run(WARMUP)
                errors += wrk_errors(warm)
                if warm_share >= MIN_WORKER_SHARE or warm_attempts == BALANCE_ATTEMPTS:
                    break
            attempts = 0
            while True:
                attempts += 1
                rss_before = site.workers_rss()
                connects_before = proxy.connections
                main, share, cpu = run(SECONDS)
                rss_after = site.workers_rss()
                connects = proxy.connections - connects_before
                errors += wrk_errors(main)
                if share >= MIN_WORKER_SHARE or attempts == BALANCE_ATTEMPTS:
                    break
        added = round_trip_added(url, proxied)
    row = {
        "contender": contender,
        "round": rnd,
        **wrk_figures(main, connects),
        **cpu_figures(cpu, main["requests"]),
        "errors": errors,
        "rss_mib": rss_after / 2**20,
        "rss_growth_kib_per_1000": (rss_after - rss_before) / 1024 / (main["requests"] / 1000),
        "round_trip_added_ms": added,
        "warm_attempts": warm_attempts,
        "attempts": attempts,
        "worker_share": share,
    }
    print(
        f"  {contender:>10} {row['rps']:8.0f} rps  p99 {row['p99_ms']:7.1f} ms"
        f"  reuse {row['reuse']:.5f}  rss {row['rss_mib']:.1f} MiB  worker share {share:.2f}",
        flush=True,
    )
    return row


def round_trip_added(direct: str, proxied: str, samples: int = 200) -> float:
    """Median extra milliseconds of a ``SELECT 1`` round trip through the proxy."""
    times: dict[str, list[float]] = {direct: [], proxied: []}
    conns = {url: harness.raw_connect(url) for url in times}
    try:
        for _ in range(samples):
            for url, conn in conns.items():
                cursor = conn.cursor()
                start = time.perf_counter()
                cursor.execute("SELECT 1")
                cursor.fetchall()
                times[url].append(time.perf_counter() - start)
    finally:
        for conn in conns.values():
            conn.close()
    return (statistics.median(times[proxied]) - statistics.median(times[direct])) * 1000


def run_jitter(urls: dict[str, str]) -> dict[str, Any]:
    url = urls.get("postgresql")
    if url is None:
        raise SystemExit("the jitter scenario needs PostgreSQL (Django's native pool)")
    harness.create_table(url)
    counters = harness.ServerCounters(url)
    rows = []
    try:
        for rnd in range(1, ROUNDS + 1):
            print(f"jitter: round {rnd} of {ROUNDS}", flush=True)
            for contender in JITTER_CONTENDERS:
                rows.append(measure_jitter(url, counters, contender, rnd))
    finally:
        counters.close()
    return {"jitter_ms": [j * 1000 for j in JITTER], "rows": rows}


def server_version(url: str) -> str:
    conn = harness.raw_connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT version()")
        return str(cursor.fetchone()[0]).split(" on ")[0].split(",")[0]
    finally:
        conn.close()


def environment(elapsed_s: int) -> dict[str, Any]:
    import django
    import gunicorn

    return {
        "date": time.strftime("%Y-%m-%d"),
        "revision": revision(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "gunicorn": gunicorn.__version__,
        "workers": 2,
        "threads": THREADS,
        "pool_size": POOL_SIZE,
        "rounds": ROUNDS,
        "min_worker_share": MIN_WORKER_SHARE,
        "balance_attempts": BALANCE_ATTEMPTS,
        "seconds": SECONDS,
        "warmup": WARMUP,
        "elapsed_s": elapsed_s,
    }


def write(name: str, data: dict[str, Any], started: float) -> None:
    """Write ``results/name``, with the environment and the wall time since ``started``
    (``time.monotonic()``)."""
    elapsed_s = round(time.monotonic() - started)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps({"environment": environment(elapsed_s), **data}, indent=1) + "\n")
    print(f"wrote {path.relative_to(harness.ROOT)}")


def main(argv: list[str]) -> int:
    harness.require_wrk()
    which = argv[1:] or ["load", "jitter"]
    urls = database_urls()
    if "load" in which:
        started = time.monotonic()
        write("web.json", run_load(urls), started)
    if "jitter" in which:
        started = time.monotonic()
        write("jitter.json", run_jitter(urls), started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
