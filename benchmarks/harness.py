"""What the HTTP benchmarks need around the site: servers' counters, gunicorn, wrk, a client.

- :class:`ServerCounters` reads what the database server itself counts: statements, new
  connections and (sampled) connections open, so every contender is measured the same way.
- :func:`serve` runs ``benchsite`` under gunicorn (2 workers x 8 gthread threads), or
  under uvicorn (2 workers, ASGI).
- :func:`wrk` drives it and returns wrk's own summary.
- :func:`exact_requests` sends a known number of requests and waits for every answer, so
  that server-side counts can be divided by it exactly.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tools.dbservers import POSTGRES_LOG_VAR, free_port  # noqa: E402
from tools.processes import stop_gracefully  # noqa: E402

#: Rows of ``bench_item`` (the site reads one at random per request).
ROWS = 1000
#: Sampling period of the server-side connection count.
SAMPLE_EVERY = 0.02
#: Connections per process for every pool.
POOL_SIZE = 4
#: gunicorn threads per worker (benchsite/gunicorn.conf.py), as many as ``request_cpu.py`` runs.
THREADS = 8
#: Not contenders of their own, each a site of another contender's kind:
#: - "dbpool_threads": django_dbpool with MAX_SIZE equal to the threads, so that no thread
#:   ever waits for a connection. Set against "dbpool" (MAX_SIZE 4, like every pool), it
#:   separates what the bound of 4 costs from what a checkout costs.
#: - "bound" (a site kind of its own, see benchsite.bounded): persistent connections, with at
#:   most POOL_SIZE threads of a worker using theirs at a time. Nothing is checked out, so it
#:   shows what the bound of 4 costs by itself, to set beside "dbpool" and "dbpool_threads".
#: - "persistent_aa": a second site with persistent connections, identical to the first but
#:   for its database. Its ratio to "persistent" (an A/A comparison: no difference to find)
#:   is how far two runs of the same thing come apart on this machine, the measurement's
#:   resolution, which the report sets beside each throughput target.
DIAGNOSTIC = {"dbpool_threads": ("dbpool", THREADS), "persistent_aa": ("persistent", POOL_SIZE)}


def vendor_of(url: str) -> str:
    return "postgresql" if url.startswith(("postgres://", "postgresql://")) else "mysql"


def raw_connect(url: str, database: str | None = None) -> Any:
    """A driver connection (autocommit) to ``url``'s server, on ``database`` if given."""
    parts = urlsplit(url)
    name = database or parts.path.lstrip("/")
    if vendor_of(url) == "postgresql":
        import psycopg

        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        return psycopg.connect(
            host=parts.hostname,
            port=parts.port,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            dbname=name,
            autocommit=True,
            **query,
        )
    import MySQLdb

    conn = MySQLdb.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=name,
    )
    conn.autocommit(True)
    return conn


def contender_database(url: str, contender: str) -> str:
    """A database of ``contender``'s own on ``url``'s server, (re)created with
    ``bench_item``; its URL. With every contender on a database of its own, the server's
    per-database counts (sessions, statements, connects) tell the contenders apart while
    all of their sites are up at once."""
    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/')}_{contender}"
    conn = raw_connect(url, database="postgres" if vendor_of(url) == "postgresql" else None)
    try:
        cursor = conn.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    own = urlunsplit(parts._replace(path=f"/{name}"))
    create_table(own)
    return own


def create_table(url: str) -> None:
    """``bench_item`` with :data:`ROWS` rows, read by primary key."""
    conn = raw_connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("DROP TABLE IF EXISTS bench_item")
        cursor.execute(
            "CREATE TABLE bench_item (id integer PRIMARY KEY, value varchar(64) NOT NULL)"
        )
        cursor.executemany(
            "INSERT INTO bench_item (id, value) VALUES (%s, %s)",
            [(n, f"item {n}") for n in range(1, ROWS + 1)],
        )
    finally:
        conn.close()


class ServerCounters:
    """The server's own view of the application's database, read from a session of its own
    (on PostgreSQL in another database, so it never counts itself)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.vendor = vendor_of(url)
        self.database = urlsplit(url).path.lstrip("/")
        self._conn = raw_connect(url, database="postgres" if self.vendor == "postgresql" else None)
        self._cursor = self._conn.cursor()
        self._lock = threading.Lock()
        self._peak = 0
        self._sampling: threading.Event | None = None
        self._sampler: threading.Thread | None = None
        if self.vendor == "postgresql":
            self._query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            # Every new session is logged: an exact, immediate count of connects.
            self._query("ALTER SYSTEM SET log_connections = on")
            self._query("SELECT pg_reload_conf()")
            self._log = Path(os.environ[POSTGRES_LOG_VAR])
            # The reload is asynchronous: wait until a new session is seen in the log.
            before = self._log_connects_all()
            for _ in range(100):
                raw_connect(url).close()
                if self._log_connects_all() > before:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError("log_connections did not take effect")
        else:
            # What reading Questions costs by itself, measured so that it can be subtracted.
            first = self._questions()
            self._questions_overhead = self._questions() - first

    def close(self) -> None:
        self.stop_sampling()
        self._conn.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            self._cursor.execute(sql, params)
            return list(self._cursor.fetchall()) if self._cursor.description else []

    # Connections open now, and the peak seen by sampling.

    def open_connections(self) -> int:
        if self.vendor == "postgresql":
            sql = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND backend_type = 'client backend'"
            )
            return int(self._query(sql, (self.database,))[0][0])
        sql = (
            "SELECT COUNT(*) FROM information_schema.processlist"
            " WHERE db = %s AND id <> CONNECTION_ID()"
        )
        return int(self._query(sql, (self.database,))[0][0])

    def start_sampling(self) -> None:
        self.stop_sampling()
        self._peak = 0
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, args=(self._sampling,), daemon=True)
        self._sampler.start()

    def _sample(self, stop: threading.Event) -> None:
        while not stop.wait(SAMPLE_EVERY):
            self._peak = max(self._peak, self.open_connections())

    def stop_sampling(self) -> int:
        """Stop sampling; the peak seen since :meth:`start_sampling`."""
        if self._sampling is not None and self._sampler is not None:
            self._sampling.set()
            self._sampler.join()
            self._sampling = self._sampler = None
        return self._peak

    def settle(self, limit: float = 30) -> None:
        """Wait until the application runs no more statements: requests a load generator left
        in flight when it stopped are finished."""
        deadline = time.monotonic() + limit
        self.reset_statements()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if self.statements() == 0:
                return
            self.reset_statements()
        raise RuntimeError(f"the application was still running statements after {limit:g} s")

    # Connects.

    def _log_connects_all(self) -> int:
        return self._log.read_text(errors="replace").count("connection authorized")

    def connects(self) -> int:
        """New sessions on the application's database so far (a running total)."""
        if self.vendor == "postgresql":
            text = self._log.read_text(errors="replace")
            return len(
                re.findall(rf"connection authorized: user=\S+ database={self.database}\b", text)
            )
        return int(self._query("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])

    # Statements.

    def reset_statements(self) -> None:
        if self.vendor == "postgresql":
            self._query("SELECT pg_stat_statements_reset()")
        else:
            self._questions_start = self._questions()

    def statements(self) -> int:
        """Statements the application ran since :meth:`reset_statements`."""
        if self.vendor == "postgresql":
            sql = (
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)"
            )
            return int(self._query(sql, (self.database,))[0][0])
        return self._questions() - self._questions_start - self._questions_overhead

    def _questions(self) -> int:
        return int(self._query("SHOW GLOBAL STATUS LIKE 'Questions'")[0][1])


#: Clock ticks per second, the unit of /proc's CPU times.
TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> dict[str, int]:
    """The whole machine's CPU time so far, in clock ticks: ``busy`` (every process and the
    kernel: the workers, the database server, wrk), ``idle`` (with I/O wait) and ``steal``
    (taken by the host for other guests); and ``switches``, its context switches so far."""
    lines = Path("/proc/stat").read_text().splitlines()
    fields = [int(v) for v in lines[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    (switches,) = (int(line.split()[1]) for line in lines if line.startswith("ctxt "))
    return {
        "busy": user + nice + system + irq + softirq,
        "idle": idle + iowait,
        "steal": steal,
        "switches": switches,
    }


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


@dataclass
class Site:
    base: str
    master: subprocess.Popen[bytes]

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.master.pid}/task/{self.master.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()]
        # uvicorn's workers are started by multiprocessing, whose resource tracker is a
        # child of the master too, and no worker.
        return [pid for pid in pids if b"resource_tracker" not in _cmdline(pid)]

    def workers_cpu(self) -> list[int]:
        """CPU time each worker has used so far (user + system), in clock ticks."""
        ticks = []
        for pid in self.worker_pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks.append(int(fields[11]) + int(fields[12]))
        return ticks

    def workers_switches(self) -> int:
        """Context switches of every thread of the workers so far, voluntary (a thread
        that blocks: on I/O, a lock, the GIL) and not (preempted)."""
        total = 0
        for pid in self.worker_pids():
            for task in Path(f"/proc/{pid}/task").iterdir():
                # A thread may end while it is read (ASGI runs a thread per request).
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    for line in (task / "status").read_text().splitlines():
                        if "ctxt_switches:" in line:
                            total += int(line.split()[1])
        return total

    def workers_rss(self) -> int:
        """Resident memory of the workers, in bytes."""
        total = 0
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total


def site_environment(
    database_url: str,
    contender: str,
    pool_size: int,
    stats_dir: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a process that runs ``benchsite`` for ``contender``; ``extra``:
    more of the site's settings (``BENCH_LEASE``, ``BENCH_MIN_SIZE``, see its settings)."""
    return {
        **os.environ,
        "BENCH_DATABASE_URL": database_url,
        "BENCH_CONTENDER": contender,
        "BENCH_POOL_SIZE": str(pool_size),
        "BENCH_STATS_DIR": stats_dir,
        "DJANGO_SETTINGS_MODULE": "benchsite.settings",
        "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}",
        **(extra or {}),
    }


def run_site_script(
    script: str,
    flag: str,
    database_url: str,
    contender: str,
    pool_size: int,
    timeout: float,
    extra: Mapping[str, str] | None = None,
) -> Any:
    """Run ``script flag`` in a fresh process with ``benchsite``'s settings for ``contender``
    (:func:`site_environment`, with a throwaway stats directory) and return what the JSON
    on its last line of output holds. ``RuntimeError`` with the end of its standard error if
    it fails."""
    stats_dir = tempfile.mkdtemp(prefix="bench-stats-")
    try:
        result = subprocess.run(
            [sys.executable, script, flag],
            env=site_environment(database_url, contender, pool_size, stats_dir, extra),
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        shutil.rmtree(stats_dir, ignore_errors=True)
    if result.returncode:
        raise RuntimeError(f"{script} {flag} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


#: uvicorn's workers for the ASGI site, as many as gunicorn's.
ASGI_WORKERS = 2


def server_command(port: int, asgi: bool) -> list[str]:
    """The command that serves ``benchsite`` on ``port``: gunicorn (2 workers x 8 gthread
    threads) or, with ``asgi``, :data:`ASGI_WORKERS` uvicorn workers, each on a socket of its
    own (``uvicorn_workers.py``; Django does not speak ASGI's lifespan protocol: off). uvicorn
    runs its pure-Python event loop and HTTP parser whatever else is installed, so that the
    figures do not depend on it (uvloop and httptools raised no contender's throughput here:
    Django's async path costs far more per request than HTTP does)."""
    if asgi:
        return [
            sys.executable,
            str(HERE / "uvicorn_workers.py"),
            str(port),
            str(ASGI_WORKERS),
            "--",
            "benchsite.asgi:application",
            "--loop",
            "asyncio",
            "--http",
            "h11",
            "--lifespan",
            "off",
            "--no-access-log",
            "--log-level",
            "warning",
            "--timeout-keep-alive",
            "30",
        ]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "benchsite.wsgi",
        "--config",
        str(HERE / "benchsite" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--no-control-socket",
    ]


@contextmanager
def serve(
    database_url: str,
    contender: str,
    pool_size: int = 4,
    *,
    asgi: bool = False,
    extra: Mapping[str, str] | None = None,
) -> Iterator[Site]:
    """``benchsite`` under gunicorn (or, with ``asgi``, uvicorn) for ``contender``, on a free
    port, stopped on exit; ``extra``: see :func:`site_environment`."""
    stats_dir = tempfile.mkdtemp(prefix="bench-stats-")
    port = free_port()
    env = site_environment(database_url, contender, pool_size, stats_dir, extra)
    master = subprocess.Popen(server_command(port, asgi), env=env, cwd=HERE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/ping", timeout=5).close()
                break
            except OSError:
                if master.poll() is not None:
                    raise RuntimeError(f"the server exited with {master.returncode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not answer in 60 s") from None
                time.sleep(0.1)
        yield Site(base, master)
    finally:
        stop_gracefully(master)
        shutil.rmtree(stats_dir, ignore_errors=True)


_WRK_SCRIPT = HERE / "wrk_summary.lua"


def wrk(base: str, path: str, connections: int, seconds: float) -> dict[str, int]:
    """wrk's summary of ``seconds`` of load at ``connections`` keep-alive connections."""
    result = subprocess.run(
        [
            "wrk",
            "--threads",
            "1",
            "--connections",
            str(connections),
            "--duration",
            f"{seconds:g}s",
            "--timeout",
            "30s",
            "--script",
            str(_WRK_SCRIPT),
            f"{base}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 120,
    )
    for line in result.stdout.splitlines():
        if line.startswith("WRK_SUMMARY "):
            summary: dict[str, int] = json.loads(line.removeprefix("WRK_SUMMARY "))
            return summary
    raise RuntimeError(f"no summary from wrk:\n{result.stdout}\n{result.stderr}")


def exact_requests(base: str, path: str, clients: int, total: int) -> int:
    """Send ``total`` requests from ``clients`` keep-alive clients and wait for every answer;
    the number that did not come back 200."""
    host, port = base.removeprefix("http://").split(":")
    failures = [0] * clients
    share = [total // clients + (1 if n < total % clients else 0) for n in range(clients)]

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            for _ in range(share[n]):
                try:
                    conn.request("GET", path)
                    response = conn.getresponse()
                    response.read()
                    failures[n] += response.status != 200
                except (OSError, http.client.HTTPException):
                    failures[n] += 1
                    conn.close()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return sum(failures)


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed; run: python tools/dbservers.py ensure (as root)")
