"""What the fault scenarios share: a private database server with the example project's
schema, the example project under gunicorn in front of it, and the server-side view of its
sessions.

Scenarios run a short version by default (part of ``make test``) and the full version
(longer load, repeated faults) when ``DBPOOL_FAULTS=full`` (``make test-faults``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings

from tests.dbservers import private_server
from tests.faults import report
from tests.processes import MANAGE, gunicorn, project_env

#: ``make test-faults`` sets DBPOOL_FAULTS=full: longer load and repeated faults.
FULL = os.environ.get("DBPOOL_FAULTS", "") == "full"

#: Added to every bound a scenario asserts on request durations. It is a hang guard, not a
#: speed claim: large enough that a loaded 2-core machine never reaches it, small enough
#: that a request blocked until a fault ends (tens of seconds) is caught.
GRACE = 10.0

_SCHEMES = {"postgresql": "pgpool", "mysql": "mysqlpool"}


def record(row: report.Row) -> None:
    """Write the scenario's report row, in the full run only: the short runs of `make test`
    must not replace the rows the README's table is rendered from."""
    if FULL:
        report.record(row)


class Database:
    """A private server of the suite's vendor, which the scenario may stop, restart and
    kill sessions of; its sessions are counted from a connection of the test's own."""

    def __init__(self, server: Any, vendor: str) -> None:
        self.server = server
        self.vendor = vendor

    def app_url(self, port: int | None = None, **pool: object) -> str:
        """The example project's DATABASE_URL: this server (or ``port`` on loopback, a proxy
        in front of it) through the pooled ENGINE, with ``pool_<name>`` query parameters."""
        url = self.server.url
        rest = url.split("://", 1)[1]
        if port is not None:
            rest = rest.replace(f"127.0.0.1:{self.server.port}/", f"127.0.0.1:{port}/", 1)
        query = "&".join(f"pool_{name}={value}" for name, value in pool.items())
        if query:
            rest += ("&" if "?" in rest else "?") + query
        return f"{_SCHEMES[self.vendor]}://{rest}"

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A driver connection of the test's own (autocommit), closed on exit."""
        if self.vendor == "postgresql":
            import psycopg

            conn: Any = psycopg.connect(self.server.url, autocommit=True, connect_timeout=10)
        else:
            import MySQLdb

            parts = urlsplit(self.server.url)
            conn = MySQLdb.connect(
                host="127.0.0.1",
                port=parts.port,
                user=unquote(parts.username or ""),
                password=unquote(parts.password or ""),
                database=parts.path.lstrip("/"),
                connect_timeout=10,
            )
            conn.autocommit(True)
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(sql, params or None)
            return list(cursor.fetchall()) if cursor.description else []

    def session_ids(self, conn: Any) -> list[int]:
        """The other sessions on the project's database, seen through ``conn``."""
        if self.vendor == "postgresql":
            sql = (
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        else:
            sql = (
                "SELECT id FROM information_schema.processlist"
                " WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
        cursor = conn.cursor()
        cursor.execute(sql)
        return [int(row[0]) for row in cursor.fetchall()]

    def sessions(self) -> int:
        """App sessions on the server now (every session on the database but ours)."""
        with self.connect() as conn:
            return len(self.session_ids(conn))

    def kill_sessions(self) -> int:
        """Terminate every app session (PostgreSQL: pg_terminate_backend; MariaDB: KILL);
        returns once they are gone. Returns how many were killed."""
        with self.connect() as conn:
            ids = self.session_ids(conn)
            cursor = conn.cursor()
            if self.vendor == "postgresql":
                # One statement: every backend gets its signal at once.
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (ids,)
                )
                cursor.fetchall()
            for session in ids if self.vendor == "mysql" else ():
                # Synchronous: the session's socket is shut down when KILL returns.
                try:
                    cursor.execute(f"KILL CONNECTION {session}")
                except Exception as exc:  # 1094: the session ended by itself meanwhile
                    if getattr(exc, "args", (None,))[0] != 1094:
                        raise
            deadline = time.monotonic() + 30
            while set(ids) & set(self.session_ids(conn)):
                assert time.monotonic() < deadline, "killed sessions still listed after 30 s"
                time.sleep(0.01)
        return len(ids)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        """Start the stopped server again (same data and port); returns once it accepts
        connections."""
        self.server.restart()


@contextmanager
def private_database() -> Iterator[Database]:
    """A private server of the suite's vendor with the example project migrated and its
    demo data loaded; removed afterwards."""
    vendor = settings.DATABASE_VENDOR
    with private_server(vendor) as server:
        database = Database(server, vendor)
        manage(database.app_url(), "migrate", "--noinput", "-v", "0")
        manage(database.app_url(), "demo_data")
        yield database


def manage(database_url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, MANAGE, *args],
        env=project_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    """GET ``url``: (status, body), whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class App:
    """The example project under gunicorn (2 gthread workers)."""

    master: subprocess.Popen[bytes]
    base: str
    stats_dir: Path

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.master.pid}/task/{self.master.pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def pool_counters(self) -> dict[str, int]:
        """The ``default`` pools' counters summed over the workers, from the snapshots they
        publish about once a second (so up to a second old)."""
        total: dict[str, int] = {}
        for path in self.stats_dir.glob("*.json"):
            try:
                document = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            pool = document.get("pools", {}).get("default")
            if pool is None:
                continue
            for name, value in pool["stats"]["counters"].items():
                if isinstance(value, int):
                    total[name] = total.get(name, 0) + value
        return total

    def settled_pool_counters(self, limit: float = 30) -> dict[str, int]:
        """Counters once two snapshots a publishing interval apart agree (load has ended)."""
        deadline = time.monotonic() + limit
        previous = self.pool_counters()
        while True:
            time.sleep(1.2)
            current = self.pool_counters()
            if current == previous and current:
                return current
            assert time.monotonic() < deadline, "pool stats did not settle"
            previous = current


@contextmanager
def serving(database_url: str, threads: int | None = None, **env: str) -> Iterator[App]:
    """The example project under gunicorn on ``database_url``, publishing its pool stats
    to a directory of its own; ``threads`` per worker (default: the project's 4)."""
    with tempfile.TemporaryDirectory(prefix="dbpool-faults-stats-") as stats:
        if threads is not None:
            env["GUNICORN_CMD_ARGS"] = f"--threads {threads}"
        with gunicorn(database_url, DBPOOL_STATS_DIR=stats, **env) as (master, base):
            yield App(master, base, Path(stats))


class SessionSampler:
    """Samples the app's sessions on the server from a connection of its own, as fast as
    the server answers, until stopped; ``peak`` is the most seen at once. On MariaDB it
    also reads the server's own count, Max_used_connections (reset when sampling starts),
    which no sampling interval can miss."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="session-sampler")
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            with self.database.connect() as conn:
                mysql = self.database.vendor == "mysql"
                if mysql:
                    conn.cursor().execute("FLUSH STATUS")
                deadline = time.monotonic() + 600
                while not self._stop.is_set() and time.monotonic() < deadline:
                    self.peak = max(self.peak, len(self.database.session_ids(conn)))
                    self.samples += 1
                    time.sleep(0.005)
                if mysql:
                    cursor = conn.cursor()
                    cursor.execute("SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
                    # Every connection counts there, this one too.
                    self.peak = max(self.peak, int(cursor.fetchone()[1]) - 1)
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def __enter__(self) -> SessionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise self._error
