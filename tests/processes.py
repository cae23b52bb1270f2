"""Run the example project in real processes against the suite's database server."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings

from tools.dbservers import MYSQL_URL_VAR, POSTGRES_LOG_VAR, POSTGRES_URL_VAR, free_port
from tools.processes import stop_gracefully

ROOT = Path(__file__).resolve().parent.parent
MANAGE = str(ROOT / "example_project" / "manage.py")


def database_url() -> str:
    """The suite's server, through django_dbpool's ENGINE, on its real (non-test) database."""
    if settings.DATABASE_VENDOR == "postgresql":
        return "pgpool://" + os.environ[POSTGRES_URL_VAR].split("://", 1)[1]
    return "mysqlpool://" + os.environ[MYSQL_URL_VAR].split("://", 1)[1]


def children_stats_dir() -> str:
    """Where the example project's processes started by tests publish their stats."""
    return f"{settings.DBPOOL_STATS_DIR}-children"


def project_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DBPOOL_STATS_DIR": children_stats_dir(),
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def manage(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, MANAGE, *args],
        env=project_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        **kwargs,
    )


def raw_query(sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the real database in a driver connection of its own."""
    from tests.backends.test_pooling import raw_connection

    with raw_connection(database="real") as conn:
        cursor = conn.cursor()
        cursor.execute(sql)
        return list(cursor.fetchall())


def app_sessions_sql(sleeping: bool = False) -> str:
    """The query that counts the client sessions on the real database other than the one
    asking (on PostgreSQL an autovacuum worker shows there too while it works on it); with
    ``sleeping``, only those running a sleep (the example project's slow report): a request
    that is in its view, not just connected."""
    if settings.DATABASE_VENDOR == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        if sleeping:
            sql += " AND state = 'active' AND query ILIKE '%pg_sleep(%'"
    else:
        sql = (
            "SELECT COUNT(*) FROM information_schema.processlist"
            " WHERE db = DATABASE() AND id <> CONNECTION_ID()"
        )
        if sleeping:
            sql += " AND info LIKE '%SLEEP(%'"
    return sql


def app_sessions(sleeping: bool = False) -> int:
    """Sessions on the real database other than the one asking (see
    :func:`app_sessions_sql`)."""
    return int(raw_query(app_sessions_sql(sleeping))[0][0])


def wait_for_no_app_sessions(limit: float = 30) -> int:
    deadline = time.monotonic() + limit
    while (count := app_sessions()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


class UncleanDisconnects:
    """Counts the server's reports of clients that went away without closing properly:
    on PostgreSQL, the real database's sessions_abandoned and the 'unexpected EOF' /
    'could not receive data' log lines; on MariaDB, Aborted_clients."""

    def __init__(self) -> None:
        self.start = self._count()

    def _count(self) -> int:
        if settings.DATABASE_VENDOR == "postgresql":
            log = Path(os.environ[POSTGRES_LOG_VAR]).read_text(errors="replace")
            abandoned = raw_query(
                "SELECT sessions_abandoned FROM pg_stat_database WHERE datname = current_database()"
            )[0][0]
            return (
                int(abandoned)
                + log.count("unexpected EOF on client connection")
                + log.count("could not receive data from client")
            )
        return int(raw_query("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")[0][1])

    def since(self) -> int:
        return self._count() - self.start


def wait_until_serving(server: subprocess.Popen[Any], base: str, limit: float = 60) -> None:
    """Wait until ``base``/health/live answers; fail if ``server`` exits or ``limit`` passes."""
    deadline = time.monotonic() + limit
    while True:
        try:
            urllib.request.urlopen(f"{base}/health/live", timeout=5).close()
            return
        except OSError:
            assert server.poll() is None, f"the server exited with {server.returncode}"
            assert time.monotonic() < deadline, f"nothing answered at {base} in {limit:g} s"
            time.sleep(0.1)


@contextmanager
def serving(
    process: subprocess.Popen[bytes], port: int
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``process`` and its base URL once it answers on ``port``; stopped with
    :func:`stop_gracefully` afterwards if still running."""
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, base)
        yield process, base
    finally:
        stop_gracefully(process)


@contextmanager
def gunicorn(database_url: str, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The example project under gunicorn (2 gthread workers) on a free port: yields the
    master process and the base URL; killed afterwards if still running."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "example_project.wsgi",
            "--config",
            str(ROOT / "example_project" / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(ROOT),
            "--no-control-socket",
            "--graceful-timeout",
            "60",
        ],
        env=project_env(DATABASE_URL=database_url, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with serving(server, port) as served:
        yield served


# -- the ASGI test site (tests/asgisite) under real ASGI servers ------------------------------

#: The ASGI servers the tests start: uvicorn's own process manager, gunicorn with uvicorn
#: workers, daphne (one process).
ASGI_SERVERS = ("uvicorn", "gunicorn", "daphne")


def asgisite_env(
    database_url: str, stats_dir: str | os.PathLike[str], **extra: str
) -> dict[str, str]:
    """The environment of a process of the ASGI test site."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DBPOOL_STATS_DIR": str(stats_dir),
        "DJANGO_SETTINGS_MODULE": "tests.asgisite.settings",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def asgisite_django(database_url: str, stats_dir: str | os.PathLike[str], *args: str) -> None:
    """``django-admin ARGS`` for the ASGI test site (``migrate --run-syncdb``, say)."""
    subprocess.run(
        [sys.executable, "-m", "django", *args],
        env=asgisite_env(database_url, stats_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


def asgi_command(server: str, port: int, workers: int = 2) -> list[str]:
    """The command line that serves the ASGI test site with ``server`` (one of
    :data:`ASGI_SERVERS`) on 127.0.0.1:``port``; daphne runs one process whatever
    ``workers`` says."""
    app = "tests.asgisite.asgi:application"
    if server == "uvicorn":
        return [
            *(sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", str(workers), "--no-access-log", "--timeout-graceful-shutdown", "60"),
        ]
    if server == "gunicorn":
        return [
            *(sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}"),
            *("--worker-class", "uvicorn_worker.UvicornWorker", "--workers", str(workers)),
            *("--chdir", str(ROOT), "--no-control-socket", "--graceful-timeout", "60"),
        ]
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]
    raise ValueError(f"unknown ASGI server {server!r}, not one of {ASGI_SERVERS}")


@contextmanager
def asgi_server(
    server: str,
    database_url: str,
    stats_dir: str | os.PathLike[str],
    workers: int = 2,
    log: str | os.PathLike[str] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The ASGI test site under ``server`` (see :func:`asgi_command`) on a free port: yields
    the server's main process and the base URL once ``/health/live`` answers; stopped with
    :func:`stop_gracefully` afterwards if still running. Its output goes to ``log``."""
    port = free_port()
    with open(log or os.devnull, "ab") as output:
        process = subprocess.Popen(
            asgi_command(server, port, workers),
            env=asgisite_env(database_url, stats_dir),
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    with serving(process, port) as served:
        yield served


def pool_snapshots(stats_dir: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """The live processes' pool stats snapshots in ``stats_dir``, by pid (see
    ``django_dbpool.snapshots``)."""
    from django_dbpool.snapshots import read_snapshots

    return {int(s["pid"]): s for s in read_snapshots(Path(stats_dir))}


def wait_for_pools_at_rest(
    stats_dir: str | os.PathLike[str], pids: set[int], after: float, limit: float = 30
) -> dict[int, dict[str, Any]]:
    """Wait until each of ``pids`` has published a snapshot since ``after`` (a
    ``time.time()``) in which no pool has a connection in use, or ``limit`` seconds pass:
    the last snapshots of ``pids`` (those missing are left out)."""
    deadline = time.monotonic() + limit
    while True:
        snapshots = {p: s for p, s in pool_snapshots(stats_dir).items() if p in pids}
        at_rest = len(snapshots) == len(pids) and all(
            s["updated_at"] > after
            and all(pool["stats"]["gauges"]["in_use"] == 0 for pool in s["pools"].values())
            for s in snapshots.values()
        )
        if at_rest or time.monotonic() >= deadline:
            return snapshots
        time.sleep(0.1)


class SessionSampler:
    """Samples the real database's session count (see :func:`app_sessions`) every
    ``interval`` seconds on a thread of its own, through one connection kept open, from
    :meth:`start` to :meth:`stop`: ``samples`` and ``peak``."""

    def __init__(self, interval: float = 0.02) -> None:
        import threading

        self.interval = interval
        self.samples: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session sampler", daemon=True)

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)

    def _run(self) -> None:
        from tests.backends.test_pooling import raw_connection

        sql = app_sessions_sql()
        try:
            with raw_connection(database="real") as conn:
                cursor = conn.cursor()
                self._ready.set()
                while not self._stop.is_set():
                    cursor.execute(sql)
                    self.samples.append(int(cursor.fetchone()[0]))
                    self._stop.wait(self.interval)
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self._ready.set()

    def start(self) -> SessionSampler:
        self._thread.start()
        self._ready.wait(30)
        return self

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(30)
        assert self.error is None, f"sampling the sessions failed: {self.error!r}"
        assert self.samples, "no session count was sampled"
        return self.samples
