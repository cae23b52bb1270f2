"""What the fault scenarios share: a private database server with the example project's
schema, the example project under gunicorn in front of it, and the server-side view of its
sessions.

Scenarios run a short version by default (part of ``make test``) and the full version
(longer load, repeated faults) when ``DBPOOL_FAULTS=full`` (``make test-faults``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings

from tests.faults import report
from tests.faults.load import NUMBER_HEADER, Result
from tests.processes import MANAGE, gunicorn, project_env
from tools.dbservers import private_server

#: ``make test-faults`` sets DBPOOL_FAULTS=full: longer load and repeated faults.
FULL = os.environ.get("DBPOOL_FAULTS", "") == "full"

#: Added to every bound a scenario asserts on request durations. It is a hang guard, not a
#: speed claim: large enough that a loaded 2-core machine never reaches it, small enough
#: that a request blocked until a fault ends (tens of seconds) is caught.
GRACE = 10.0

_SCHEMES = {"postgresql": "pgpool", "mysql": "mysqlpool"}

# gunicorn's access log line, with serving(record_workers=True): the worker's pid, the load's
# request number (tests.faults.load.NUMBER_HEADER; "-" for other clients) and the status.
_ACCESS_LOG_FORMAT = f"%(p)s %({{{NUMBER_HEADER.lower()}}}i)s %(s)s"
_ACCESS_LINE = re.compile(r"^<(?P<pid>\d+)> (?P<number>\d+) \d+$", re.MULTILINE)


def record(row: report.Row) -> None:
    """Write the scenario's report row, in the full run only: the short runs of `make test`
    must not replace the rows the README's table is rendered from."""
    if FULL:
        report.record(row)


@dataclass
class StandIn:
    """What :meth:`Database.stand_in` saw: connects made to the stopped server's port."""

    #: ``time.monotonic()`` when it began listening, and when it stopped (None: still does).
    since: float
    until: float | None = None
    connects: int = 0


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
            # A PostgreSQL backend leaves pg_stat_activity before it closes its socket (its
            # shared-memory exit hooks run first): until its process is gone, the app's
            # connection to it may still look open. Its id is the process's pid.
            while self.vendor == "postgresql" and any(_running(pid) for pid in ids):
                assert time.monotonic() < deadline, "killed backends still running after 30 s"
                time.sleep(0.01)
        return len(ids)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        """Start the stopped server again (same data and port); returns once it accepts
        connections."""
        self.server.restart()

    @contextmanager
    def stand_in(self) -> Iterator[StandIn]:
        """While the server is stopped, listen on its port in its place and count the
        connects that reach it: each is reset at once, as the closed port would have
        refused it, so the app sees the database down either way. The port is free again
        on exit, for :meth:`start`."""
        listener = socket.socket()
        # The stopped server's sessions may have left the port's connections in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.server.port))
        listener.listen(128)
        listener.settimeout(0.05)  # to notice the end of the block
        seen = StandIn(time.monotonic())
        done = threading.Event()

        def serve() -> None:
            while not done.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                seen.connects += 1
                # SO_LINGER 0: close() sends a reset, as a closed port answers a connect.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

        thread = threading.Thread(target=serve, daemon=True, name="stand-in")
        thread.start()
        try:
            yield seen
        finally:
            done.set()
            thread.join(30)
            listener.close()
            seen.until = time.monotonic()

    def start_timed(self) -> float:
        """:meth:`start`, returning the moment (``time.monotonic()``) the server accepted
        connections again: when the first of the connects a thread of the test's own tries
        every 10 ms while it starts began. The launcher notices later (it checks every
        0.1 s)."""
        accepted: list[float] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                attempt = time.monotonic()
                try:
                    with self.connect():
                        accepted.append(attempt)
                        return
                except Exception:  # refused, or still starting: try again
                    time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True, name="start-watcher")
        watcher.start()
        try:
            self.start()
            # It accepts connections now: the watcher's next connect gets through.
            watcher.join(30)
        finally:
            done.set()
        assert accepted, "the server accepted no connection of the test's own after starting"
        return accepted[0]


def _running(pid: int) -> bool:
    # Whether process ``pid`` exists and has not exited (a zombie has closed its files).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


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
    #: gunicorn's access log, with ``serving(record_workers=True)``.
    access_log: Path | None = None

    def with_workers(self, results: list[Result], limit: float = 10) -> list[Result]:
        """``results`` with ``worker`` set on each answered request: the pid of the worker
        that answered it, from the access log (``serving(record_workers=True)``). A worker
        writes its line just after the response: waits up to ``limit`` seconds for the
        line of every answered request."""
        assert self.access_log is not None, "serving(record_workers=True) keeps the access log"
        deadline = time.monotonic() + limit
        while True:
            text = self.access_log.read_text() if self.access_log.exists() else ""
            workers = {int(m["number"]): int(m["pid"]) for m in _ACCESS_LINE.finditer(text)}
            missing = [r for r in results if r.status is not None and r.number not in workers]
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        assert not missing, f"{len(missing)} answered requests not in the access log: {missing[0]}"
        return [replace(r, worker=workers.get(r.number)) for r in results]

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
def serving(
    database_url: str, threads: int | None = None, *, record_workers: bool = False, **env: str
) -> Iterator[App]:
    """The example project under gunicorn on ``database_url``, publishing its pool stats
    to a directory of its own; ``threads`` per worker (default: the project's 4). With
    ``record_workers``, gunicorn's access log records which worker answered each request
    (see :meth:`App.with_workers`)."""
    with (
        tempfile.TemporaryDirectory(prefix="dbpool-faults-stats-") as stats,
        tempfile.TemporaryDirectory(prefix="dbpool-faults-log-") as logs,
    ):
        arguments = []
        if threads is not None:
            arguments.append(f"--threads {threads}")
        access_log = Path(logs) / "access.log" if record_workers else None
        if access_log is not None:
            arguments.append(
                f"--access-logfile {access_log} --access-logformat '{_ACCESS_LOG_FORMAT}'"
            )
        if arguments:
            env["GUNICORN_CMD_ARGS"] = " ".join(arguments)
        with gunicorn(database_url, DBPOOL_STATS_DIR=stats, **env) as (master, base):
            yield App(master, base, Path(stats), access_log)


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
