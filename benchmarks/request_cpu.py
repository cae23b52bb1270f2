"""CPU time per request through Django's WSGI handler, without HTTP.

The benchmark site's one-query view, called through Django's own WSGI handler (so
``request_started`` and ``request_finished`` run as under gunicorn, and with them the
checkout and the return) by 8 threads in one process, as in one gunicorn worker; for each
contender, on a database of its own, in a fresh process per run: the process's CPU time
per request. There is no gunicorn, wrk or client socket, so what is left to differ between
contenders is what Django does around the query: persistent connections check nothing out,
a pool checks a connection out and gives it back once per request. The HTTP runs measure
the same thing through far more noise (scheduling of workers, wrk and the server on 2 CPUs).
Two diagnostics, as in ``web.py``, split what django_dbpool adds into the checkout and the
wait for one of its connections (see :data:`DIAGNOSTIC`).

Contenders take turns in each round, the order reversed every other round; figures are
medians over the rounds, and differences against persistent connections are taken round by
round. Connect per request is left out: its cost is the connect, which the HTTP table
already shows.

Run by ``make bench``; by hand: ``python tools/dbservers.py -- python
benchmarks/request_cpu.py``. Environment: ``BENCH_ROUNDS`` (7), ``BENCH_REQUESTS`` (8000 per
run). Writes ``results/request_cpu.json``.
"""

from __future__ import annotations

import gc
import io
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import harness
from revision import revision

from tools.dbservers import MYSQL_URL_VAR, POSTGRES_URL_VAR

CONTENDERS = {
    "postgresql": ("persistent", "native", "dbcp", "dbpool", "dbpool_threads", "bound"),
    "mysql": ("persistent", "dbcp", "dbpool", "dbpool_threads", "bound"),
}
THREADS = harness.THREADS
POOL_SIZE = harness.POOL_SIZE
#: web.py's diagnostics, by the same names (see ``harness.DIAGNOSTIC``): set beside
#: "dbpool", they split what it adds over persistent connections into the checkout and the
#: wait for one of POOL_SIZE connections.
DIAGNOSTIC = harness.DIAGNOSTIC
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "8000"))
#: Requests per thread before the measurement: opens the pool and warms the code paths.
WARMUP = 100
#: A run that takes longer than this is a hang, not a measurement.
RUN_TIMEOUT = 600


def request_environ(path: str = "/item", query: str = "") -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }


def caller(path: str) -> Callable[[str], bool]:
    """A function that makes one request for ``path`` (with the query string it is given)
    through Django's WSGI handler, whose settings come from the environment
    (``harness.site_environment``), and tells whether it answered 200."""
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()

    def call(query: str) -> bool:
        statuses: list[str] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            statuses.append(status)
            return lambda data: None

        body = app(request_environ(path, query), start_response)
        try:
            b"".join(body)
        finally:
            body.close()  # request_finished: Django gives the connection back here
        return statuses[0].startswith("200 ")

    return call


def run_in_this_process(
    path: str = "/item", requests: int = REQUESTS, warmup: int = WARMUP
) -> dict[str, Any]:
    """One run: :data:`THREADS` threads call ``path`` through Django's WSGI handler,
    ``warmup`` times each, then ``requests`` times in all; the process's CPU time per measured
    request."""
    call = caller(path)
    errors = [0] * THREADS
    start = threading.Barrier(THREADS + 1)

    def worker(i: int) -> None:
        for _ in range(warmup):
            call("")
        start.wait()
        for _ in range(requests // THREADS):
            if not call(""):
                errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    start.wait()  # every thread has warmed up: the measured requests start now
    cpu, wall = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.join()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    total = (requests // THREADS) * THREADS
    return {"cpu_us": cpu / total * 1e6, "wall_us": wall / total * 1e6, "errors": sum(errors)}


def run_interleaved(
    path: str, aliases: list[str], blocks: int, per_thread: int, warmup: int
) -> dict[str, Any]:
    """Contenders that are database aliases of this process take turns in short phases:
    in each of ``blocks`` blocks, for each alias (the order reversed every other block),
    :data:`THREADS` threads call ``path?using=<alias>`` ``per_thread`` times each; the
    process's CPU time per request of each phase and its failed requests, by alias
    (``cpu_us`` and ``errors``, one figure per block). Phases a second apart see the same
    machine: the ratio of two aliases' figures in one block measures the code, not the
    machine's drift between runs. Each alias serves ``warmup`` requests per thread first,
    uncounted."""
    call = caller(path)
    phase: dict[str, Any] = {"alias": None, "count": 0, "block": -1}
    failed: list[tuple[str, int]] = []  # (alias, block) of each failed request
    start = threading.Barrier(THREADS + 1)
    done = threading.Barrier(THREADS + 1)

    def worker() -> None:
        try:
            while True:
                start.wait()
                alias, count, block = phase["alias"], phase["count"], phase["block"]
                if alias is None:
                    return
                query = f"using={alias}"
                for _ in range(count):
                    if not call(query):
                        failed.append((alias, block))
                done.wait()
        except BaseException:
            # The other threads and the main one stop waiting for this one.
            start.abort()
            done.abort()
            raise

    def run_phase(alias: str | None, count: int, block: int = -1) -> float:
        phase["alias"], phase["count"], phase["block"] = alias, count, block
        gc.collect()  # the garbage of one phase is not collected in the next one's time
        cpu = time.process_time()
        start.wait()
        if alias is not None:
            done.wait()
        return time.process_time() - cpu

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for alias in aliases:
        run_phase(alias, warmup)
    cpu: dict[str, list[float]] = {alias: [] for alias in aliases}
    for block in range(blocks):
        for alias in aliases if block % 2 == 0 else aliases[::-1]:
            spent = run_phase(alias, per_thread, block)
            cpu[alias].append(spent / (per_thread * THREADS) * 1e6)
    run_phase(None, 0)
    for thread in threads:
        thread.join()
    errors = {alias: [failed.count((alias, block)) for block in range(blocks)] for alias in aliases}
    return {"cpu_us": cpu, "errors": errors}


def measure(url: str, contender: str) -> dict[str, Any]:
    """One run of ``contender`` on ``url`` in a fresh process."""
    site_contender, pool_size = DIAGNOSTIC.get(contender, (contender, POOL_SIZE))
    try:
        row: dict[str, Any] = harness.run_site_script(
            __file__, "--run", url, site_contender, pool_size, RUN_TIMEOUT
        )
    except RuntimeError as exc:
        raise SystemExit(f"{contender}: {exc}") from None
    return row


def run_all(urls: dict[str, str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for vendor, url in urls.items():
        own = {c: harness.contender_database(url, c) for c in CONTENDERS[vendor]}
        rows = []
        for rnd in range(1, ROUNDS + 1):
            order = CONTENDERS[vendor] if rnd % 2 else CONTENDERS[vendor][::-1]
            for contender in order:
                row = {"contender": contender, "round": rnd, **measure(own[contender], contender)}
                rows.append(row)
                print(
                    f"  {vendor} round {rnd}: {contender:>14} {row['cpu_us']:6.1f} µs CPU"
                    f" per request, errors {row['errors']}",
                    flush=True,
                )
        results[vendor] = {"rows": rows}
    return results


def main() -> int:
    if sys.argv[1:] == ["--run"]:
        print(json.dumps(run_in_this_process()))
        return 0
    urls = {
        vendor: os.environ[variable]
        for vendor, variable in (("postgresql", POSTGRES_URL_VAR), ("mysql", MYSQL_URL_VAR))
        if os.environ.get(variable)
    }
    if not urls:
        raise SystemExit(
            f"set {POSTGRES_URL_VAR} or {MYSQL_URL_VAR} (run through tools/dbservers.py)"
        )
    import django

    started = time.monotonic()
    databases = run_all(urls)
    data = {
        "environment": {
            "date": time.strftime("%Y-%m-%d"),
            "revision": revision(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "django": django.get_version(),
            "threads": THREADS,
            "pool_size": POOL_SIZE,
            "rounds": ROUNDS,
            "requests": REQUESTS,
            "elapsed_s": round(time.monotonic() - started),
        },
        "databases": databases,
    }
    out = harness.HERE / "results" / "request_cpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out.relative_to(harness.ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
