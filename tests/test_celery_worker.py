"""A real Celery worker (``celery worker``, prefork and threads pools) with a real broker
(Redis, started by ``tools/dbservers.py --redis``) running tasks that use the ORM,
``atomic()`` and raw cursors against the suite's database (tests/celeryapp/).

Sessions are counted on the server: those open now (sampled while tasks run), and those ever
opened (PostgreSQL: ``pg_stat_database.sessions``; MariaDB: the ``Connections`` status), read
through one connection of the test's own opened before the first count. Each task reports
the worker process and the sessions it ran on.

Short runs by default; ``DBPOOL_SERVERS=full`` runs more tasks.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.conf import settings

from tests import processes
from tools.dbservers import POSTGRES_URL_VAR, REDIS_URL_VAR

FULL = os.environ.get("DBPOOL_SERVERS") == "full"
TASK = "tests.celeryapp.tasks.orm_work"
MAX_SIZE = 2
START_LIMIT = 60.0
RESULT_LIMIT = 120.0


def redis_url() -> str:
    url = os.environ.get(REDIS_URL_VAR)
    if not url:
        pytest.fail(
            f"{REDIS_URL_VAR} is not set: these tests need a Redis broker. Run them with "
            "`make test`, or under `python tools/dbservers.py --postgres --mysql --redis -- ...`."
        )
    return url


def pooled_url(**pool: object) -> str:
    """The suite's real database through django_dbpool's ENGINE, with ``pool_*`` options."""
    url = processes.database_url()
    query = urlencode({f"pool_{key}": value for key, value in pool.items()})
    return f"{url}{'&' if '?' in url else '?'}{query}"


def worker_env(database_url: str, **extra: str) -> dict[str, str]:
    return processes.project_env(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="tests.celeryapp.settings",
        DBPOOL_TEST_REDIS_URL=redis_url(),
        **extra,
    )


@pytest.fixture(scope="module", autouse=True)
def migrated() -> None:
    redis_url()
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        env=worker_env(pooled_url()),
        cwd=processes.ROOT,
        check=True,
        timeout=120,
    )


@pytest.fixture
def client() -> Iterator[Any]:
    """A Celery client of the worker's broker and result backend, without Django."""
    from celery import Celery

    app = Celery("tests-client", broker=redis_url(), backend=redis_url(), fixups=())
    app.conf.broker_connection_retry_on_startup = True
    try:
        yield app
    finally:
        app.close()


# --- the server's view ------------------------------------------------------------------------


class Monitor:
    """One driver connection of the test's own to the real database: the counts it reads
    never include it, and it opens no other session meanwhile."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.postgres = settings.DATABASE_VENDOR == "postgresql"

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self.lock:
            cursor = self.conn.cursor()
            cursor.execute(sql)
            return list(cursor.fetchall())

    def sessions(self) -> int:
        """Sessions open on the real database, other than this one."""
        return int(self._rows(processes.app_sessions_sql())[0][0])

    def sessions_opened(self) -> int:
        """Sessions ever opened: on PostgreSQL, to the real database, as reported by sessions
        that have ended or flushed their statistics; on MariaDB, to the whole server."""
        if self.postgres:
            sql = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            return int(self._rows(sql)[0][0])
        return int(self._rows("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])

    def sleeping_statements(self) -> list[str]:
        """The text of the statements sleeping right now (a task's sleep query)."""
        if self.postgres:
            sql = (
                "SELECT query FROM pg_stat_activity WHERE state = 'active'"
                " AND query LIKE '%pg_sleep(%' AND pid <> pg_backend_pid()"
            )
        else:
            sql = (
                "SELECT info FROM information_schema.processlist"
                " WHERE info LIKE '%SLEEP(%' AND id <> CONNECTION_ID()"
            )
        return [str(row[0]) for row in self._rows(sql)]

    def wait_for_sessions(self, at_most: int, limit: float = 30.0) -> int:
        deadline = time.monotonic() + limit
        while (count := self.sessions()) > at_most and time.monotonic() < deadline:
            time.sleep(0.05)
        return count

    def wait_for_sleepers(self, count: int, limit: float = 60.0) -> list[str]:
        deadline = time.monotonic() + limit
        while len(seen := self.sleeping_statements()) < count:
            assert time.monotonic() < deadline, f"{count} sleeping tasks never showed: {seen}"
            time.sleep(0.05)
        return seen


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    from tests.backends.test_pooling import raw_connection

    with raw_connection(database="real") as conn:
        yield Monitor(conn)


@contextmanager
def sampling(monitor: Monitor) -> Iterator[list[int]]:
    """Samples the open sessions every 20 ms while the block runs; yields the samples."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        deadline = time.monotonic() + 600
        while not stop.is_set() and time.monotonic() < deadline:
            samples.append(monitor.sessions())
            stop.wait(0.02)

    thread = threading.Thread(target=sample, name="session sampler", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(30)


# --- the worker -------------------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    queue: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, limit: float = 60.0) -> int:
        """Signal the worker's main process and wait for it to exit; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(limit)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit within {limit:g} s:\n{self.output()[-3000:]}")


@contextmanager
def celery_worker(
    database_url: str,
    *,
    pool: str = "prefork",
    concurrency: int = 2,
    max_tasks_per_child: int | None = None,
    **env: str,
) -> Iterator[Worker]:
    """``celery worker`` for the test app on a queue of its own, started and ready; stopped
    (warm shutdown, then SIGKILL to its process group) if still running afterwards."""
    queue = f"dbpool-{secrets.token_hex(4)}"
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.celeryapp.worker",
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--queues",
        queue,
        "--hostname",
        f"{queue}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "INFO",
    ]
    if max_tasks_per_child is not None:
        args += ["--max-tasks-per-child", str(max_tasks_per_child)]
    fd, name = tempfile.mkstemp(prefix="dbpool-celery-", suffix=".log")
    log = Path(name)
    process = subprocess.Popen(
        args,
        cwd=processes.ROOT,
        env=worker_env(database_url, **env),
        stdout=fd,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    os.close(fd)
    worker = Worker(process, queue, log)
    try:
        deadline = time.monotonic() + START_LIMIT
        while " ready." not in worker.output():
            assert process.poll() is None, f"the worker exited:\n{worker.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no worker ready:\n{worker.output()[-3000:]}"
            time.sleep(0.05)
        yield worker
    except BaseException:
        # The worker's side of a failure, in the test's captured output.
        print(f"celery worker log:\n{worker.output()[-8000:]}")
        raise
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.unlink(missing_ok=True)


@dataclass
class Outcome:
    results: list[dict[str, Any]]
    samples: list[int] = field(default_factory=list)

    @property
    def children(self) -> set[int]:
        return {result["pid"] for result in self.results}

    def sessions_by_child(self) -> dict[int, set[int]]:
        by_child: dict[int, set[int]] = {}
        for result in self.results:
            by_child.setdefault(result["pid"], set()).update(result["sessions"])
        return by_child

    @property
    def sessions(self) -> set[int]:
        return {session for result in self.results for session in result["sessions"]}


def run_tasks(client: Any, worker: Worker, monitor: Monitor, count: int, **kwargs: Any) -> Outcome:
    """``count`` tasks through the worker, the open sessions sampled meanwhile; every task
    must succeed."""
    with sampling(monitor) as samples:
        pending = [client.send_task(TASK, kwargs=kwargs, queue=worker.queue) for _ in range(count)]
        results = [result.get(timeout=RESULT_LIMIT) for result in pending]
    assert all(result["finished"] for result in results)
    return Outcome(results, samples)


def report(label: str, tasks: int, opened: int, outcome: Outcome) -> None:
    print(
        f"\n{label}: {tasks} tasks in {len(outcome.children)} worker processes, "
        f"{opened} new sessions ({opened / tasks:.2f} per task), "
        f"at most {max(outcome.samples, default=0)} open at once"
    )


# --- prefork ------------------------------------------------------------------------------------


@pytest.mark.parametrize("lease", ["request", "transaction"])
@pytest.mark.parametrize("max_tasks_per_child", [1, 100])
def test_prefork_children_open_one_session_each_and_leave_none_behind(
    client: Any, monitor: Monitor, max_tasks_per_child: int, lease: str
) -> None:
    tasks = (40 if FULL else 6) if max_tasks_per_child == 1 else (200 if FULL else 20)
    concurrency = 2
    unclean = processes.UncleanDisconnects()
    assert monitor.wait_for_sessions(0) == 0
    before = monitor.sessions_opened()
    url = pooled_url(max_size=MAX_SIZE, timeout=30, lease=lease)
    with celery_worker(
        url, concurrency=concurrency, max_tasks_per_child=max_tasks_per_child
    ) as worker:
        outcome = run_tasks(client, worker, monitor, tasks)
        if max_tasks_per_child == 1:
            # Every child that ran a task has exited; its replacement has not connected.
            assert monitor.wait_for_sessions(0) == 0, "an exited child left a session behind"
        assert worker.stop() == 0
    assert monitor.wait_for_sessions(0) == 0
    opened = monitor.sessions_opened() - before
    report(
        f"prefork, max_tasks_per_child {max_tasks_per_child}, {lease} leases",
        tasks,
        opened,
        outcome,
    )

    assert len(outcome.results) == tasks
    per_child = Counter(result["pid"] for result in outcome.results)
    # A child runs at most max_tasks_per_child tasks, and only a child that did is replaced.
    assert max(per_child.values()) <= max_tasks_per_child
    assert len(per_child) <= concurrency + tasks // max_tasks_per_child
    if max_tasks_per_child == 1:
        assert len(per_child) == tasks
    # One session per child for all its tasks, in and out of atomic(): the pool is not rebuilt
    # around each task, though Celery closes every connection before and after each.
    assert all(len(sessions) == 1 for sessions in outcome.sessions_by_child().values())
    assert len(outcome.sessions) <= opened <= len(outcome.children)
    assert max(outcome.samples) <= concurrency * MAX_SIZE
    assert unclean.since() == 0


def test_children_forked_after_the_main_process_used_the_database_start_clean(
    client: Any, monitor: Monitor
) -> None:
    # The main process queries once the worker is ready, with transaction leases: the children
    # that replace exiting ones inherit a wrapper between two leases, whose connection Celery's
    # fixup reads (to close its descriptor) as each child starts.
    tasks = 20 if FULL else 6
    unclean = processes.UncleanDisconnects()
    assert monitor.wait_for_sessions(0) == 0
    before = monitor.sessions_opened()
    url = pooled_url(max_size=MAX_SIZE, timeout=30, lease="transaction")
    with celery_worker(url, max_tasks_per_child=1, DBPOOL_PARENT_QUERY="1") as worker:
        deadline = time.monotonic() + START_LIMIT
        while "parent query done" not in worker.output():
            assert time.monotonic() < deadline, worker.output()[-3000:]
            time.sleep(0.05)
        outcome = run_tasks(client, worker, monitor, tasks)
        # Only the main process's own idle connection is left.
        assert monitor.wait_for_sessions(1) == 1
        assert worker.stop() == 0
    assert monitor.wait_for_sessions(0) == 0
    opened = monitor.sessions_opened() - before
    report("prefork after a query in the main process", tasks, opened, outcome)
    assert all(len(sessions) == 1 for sessions in outcome.sessions_by_child().values())
    assert opened == 1 + len(outcome.sessions)
    assert unclean.since() == 0


@pytest.mark.django_db(transaction=True, databases=["default", "lease"])
def test_the_fixups_read_of_a_connection_between_leases_takes_none() -> None:
    # What the test above shows in a real worker, in one process: the read Celery's fixup
    # makes in each new child (to close an inherited descriptor) neither leases a connection
    # nor pins the transaction lease, as user code reading it would.
    from django.db import connections

    wrapper = connections["lease"]
    wrapper.close()
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
        pool = wrapper.pool
        assert pool.stats().in_use == 0  # between two leases
        fixup_globals = {"__name__": "celery.fixups.django", "wrapper": wrapper}
        assert eval("wrapper.connection", fixup_globals) is None
        assert pool.stats().in_use == 0
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
        assert pool.stats().in_use == 0  # not pinned: given back at the release point
        # User code's read, by contrast, takes a lease and keeps it.
        assert wrapper.connection is not None
        assert pool.stats().in_use == 1
    finally:
        wrapper.close()


# --- threads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("lease", ["request", "transaction"])
def test_eight_threads_share_max_size_connections(
    client: Any, monitor: Monitor, lease: str
) -> None:
    tasks = 400 if FULL else 32
    unclean = processes.UncleanDisconnects()
    assert monitor.wait_for_sessions(0) == 0
    before = monitor.sessions_opened()
    url = pooled_url(max_size=MAX_SIZE, timeout=60, lease=lease)
    with celery_worker(url, pool="threads", concurrency=8) as worker:
        outcome = run_tasks(client, worker, monitor, tasks, sleep=0.02)
        assert worker.stop() == 0
    assert monitor.wait_for_sessions(0) == 0
    opened = monitor.sessions_opened() - before
    report(f"threads, concurrency 8, {lease} leases", tasks, opened, outcome)

    assert len(outcome.children) == 1
    threads = {result["thread"] for result in outcome.results}
    assert len(threads) > 1
    assert len(outcome.sessions) <= opened <= MAX_SIZE
    assert max(outcome.samples) <= MAX_SIZE
    assert unclean.since() == 0


# --- shutdown -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_warm_shutdown_finishes_running_tasks_and_drains_the_pools(
    client: Any, monitor: Monitor, pool: str
) -> None:
    unclean = processes.UncleanDisconnects()
    assert monitor.wait_for_sessions(0) == 0
    with celery_worker(pooled_url(max_size=MAX_SIZE, timeout=30), pool=pool) as worker:
        running = [
            client.send_task(TASK, kwargs={"sleep": 2}, queue=worker.queue) for _ in range(2)
        ]
        monitor.wait_for_sleepers(2)
        assert worker.stop(signal.SIGTERM) == 0
        assert "Warm shutdown" in worker.output()
    assert [result.get(timeout=RESULT_LIMIT)["finished"] for result in running] == [True, True]
    assert monitor.wait_for_sessions(0) == 0
    assert unclean.since() == 0


def test_cold_shutdown_cuts_running_tasks_off_and_still_closes_their_sessions(
    client: Any, monitor: Monitor
) -> None:
    """SIGQUIT is Celery's cold shutdown: the main process cancels the running tasks by
    sending their children SIGTERM, requeues them (state RETRY) and exits. In each child,
    SIGTERM's default action is under django_dbpool's handler, which cancels the statement in
    flight and closes the pool's connections cleanly before the child dies of the signal: the
    server reports no unclean disconnect. (SIGKILL, which nothing can catch, would leave the
    server to find the dead clients itself.)"""
    unclean = processes.UncleanDisconnects()
    assert monitor.wait_for_sessions(0) == 0
    with celery_worker(pooled_url(max_size=MAX_SIZE, timeout=30)) as worker:
        running = [
            client.send_task(TASK, kwargs={"sleep": 5}, queue=worker.queue) for _ in range(2)
        ]
        monitor.wait_for_sleepers(2)
        status = worker.stop(signal.SIGQUIT)
        assert "Cold shutdown" in worker.output()
    states = [result.state for result in running]
    assert monitor.wait_for_sessions(0) == 0
    print(
        f"\ncold shutdown: worker exit status {status}, task states {states}, "
        f"unclean disconnects {unclean.since()}"
    )
    assert "SUCCESS" not in states
    assert unclean.since() == 0


# --- tagging ------------------------------------------------------------------------------------


def test_task_statements_carry_the_task_name(client: Any, monitor: Monitor) -> None:
    with celery_worker(pooled_url(max_size=MAX_SIZE, timeout=30), concurrency=1) as worker:
        result = client.send_task(TASK, kwargs={"sleep": 1.5}, queue=worker.queue)
        (statement,) = monitor.wait_for_sleepers(1)
        assert result.get(timeout=RESULT_LIMIT)["finished"]
    assert f"task='{TASK}'" in statement, statement
    assert "app='" in statement, statement


# --- Django's native pool -----------------------------------------------------------------------


@pytest.mark.skipif(
    settings.DATABASE_VENDOR != "postgresql",
    reason="Django's native pool exists for PostgreSQL only",
)
def test_native_pool_against_ours_under_prefork(client: Any, monitor: Monitor) -> None:
    """The same tasks through the same worker (prefork, concurrency 2, max_tasks_per_child
    100): Django's native pool (``OPTIONS["pool"]``, min_size 0, max_size 2), which Celery's
    fixup closes around every prefork task, against ours (MAX_SIZE 2)."""
    tasks = 200 if FULL else 20
    native_url = "postgres://" + os.environ[POSTGRES_URL_VAR].split("://", 1)[1]
    runs = {
        "django_dbpool": (pooled_url(max_size=MAX_SIZE, timeout=30), {}),
        "native": (native_url, {"DBPOOL_NATIVE_POOL_SIZE": str(MAX_SIZE)}),
    }
    opened: dict[str, int] = {}
    outcomes: dict[str, Outcome] = {}
    for name, (url, env) in runs.items():
        assert monitor.wait_for_sessions(0) == 0
        before = monitor.sessions_opened()
        with celery_worker(url, max_tasks_per_child=100, **env) as worker:
            outcomes[name] = run_tasks(client, worker, monitor, tasks)
            assert worker.stop() == 0
        assert monitor.wait_for_sessions(0) == 0
        opened[name] = monitor.sessions_opened() - before
        report(f"prefork, {name} pool", tasks, opened[name], outcomes[name])
    print(
        f"\nnew sessions per task: django_dbpool {opened['django_dbpool'] / tasks:.2f}, "
        f"native {opened['native'] / tasks:.2f}"
    )
    assert opened["django_dbpool"] <= len(outcomes["django_dbpool"].children)
    assert opened["django_dbpool"] <= opened["native"]
