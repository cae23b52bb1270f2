"""Scenario 5, fork: a pool used before the process forks never shares a connection.

gunicorn ``--preload``, whose workers are replaced (SIGHUP) between rounds of load, a bare
``os.fork()``, and Django's parallel test runner: every process gets sessions of its own, no
request fails, and the parent's sessions outlive its children (a child that used, closed or
finalized an inherited connection would end or corrupt the parent's session).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, connections

from django_dbpool.pool import _fork
from django_dbpool.registry import take_all_pools
from tests import processes
from tests.faults.harness import record
from tests.faults.report import Row
from tests.pool.test_fork import run_in_child
from tests.views import SESSION_ID_SQL
from tools.dbservers import free_port

FULL = os.environ.get("DBPOOL_FAULTS") == "full"
ROUNDS = 6 if FULL else 3  # generations of workers, each forked from the same master
CLIENTS = 8
REQUESTS_PER_CLIENT = 50 if FULL else 25
#: MIN_SIZE = MAX_SIZE = gunicorn's threads: each process opens exactly this many
#: connections, all at its first use, so the sessions on the server can be counted.
POOL_SIZE = 4
LOAD_LIMIT = 120.0


def server_sessions() -> set[str]:
    """Every session on the server, named as tests.views.SESSION_KEY_SQL names them."""
    if settings.DATABASE_VENDOR == "postgresql":
        sql = (
            "SELECT pid || '@' || backend_start FROM pg_stat_activity"
            " WHERE backend_start IS NOT NULL"
        )
    else:
        sql = "SELECT ID FROM information_schema.PROCESSLIST"
    return {str(row[0]) for row in processes.raw_query(sql)}


def drive(port: int, path: str) -> list[dict[str, Any] | str]:
    """CLIENTS threads, REQUESTS_PER_CLIENT requests each, one TCP connection per request:
    the JSON answer of each, or a description of its failure. Hang guard: no request is
    begun after LOAD_LIMIT seconds."""
    results: list[dict[str, Any] | str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + LOAD_LIMIT

    def client() -> None:
        for _ in range(REQUESTS_PER_CLIENT):
            if time.monotonic() > deadline:
                return
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                outcome: dict[str, Any] | str = (
                    json.loads(body)
                    if response.status == 200
                    else f"{response.status}: {body[:300]!r}"
                )
            except Exception as exc:  # every failure is reported by the test
                outcome = f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline + 60 - time.monotonic(), 0))
    with lock:
        return list(results)


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {limit:g} s"
        time.sleep(0.05)


def exited(pids: set[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


@contextmanager
def preloaded_gunicorn(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """gunicorn --preload on tests/faults/fork_wsgi.py (2 gthread workers of 4 threads, as
    the example project's configuration says): yields the master, its port and its log."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    url = processes.database_url()
    url += ("&" if "?" in url else "?") + f"pool_min_size={POOL_SIZE}&pool_max_size={POOL_SIZE}"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "tests.faults.fork_wsgi:application",
                "--config",
                str(processes.ROOT / "example_project" / "gunicorn.conf.py"),
                "--preload",
                "--bind",
                f"127.0.0.1:{port}",
                "--chdir",
                str(processes.ROOT),
                "--no-control-socket",
            ],
            env=processes.project_env(
                DATABASE_URL=url,
                DJANGO_SETTINGS_MODULE="tests.faults.fork_settings",
                DBPOOL_FORK_PRELOAD_FILE=str(tmp_path / "preload.json"),
            ),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        processes.wait_until_serving(server, f"http://127.0.0.1:{port}")
        yield server, port, log
    finally:
        processes.stop_gracefully(server)


def test_gunicorn_preload_workers_never_share_the_masters_connections(tmp_path: Path) -> None:
    unclean = processes.UncleanDisconnects()
    before = processes.app_sessions()
    results: list[dict[str, Any] | str] = []
    generations: list[set[int]] = []
    with preloaded_gunicorn(tmp_path) as (server, port, log):
        preload = json.loads((tmp_path / "preload.json").read_text())
        master_sessions = set(preload["sessions"])
        for round_ in range(ROUNDS):
            if round_:
                # New workers forked from the same master; the old ones exit (and finalize
                # their inherited copies of the master's connections).
                server.send_signal(signal.SIGHUP)
                wait_for(lambda: exited(generations[-1]), "the old workers exit")
                wait_for(
                    lambda: processes.app_sessions() == before + POOL_SIZE, "only the master's"
                )
            answers = drive(port, "/probe/process-session/")
            results += answers
            workers = {a["pid"] for a in answers if isinstance(a, dict)}
            generations.append(workers)
            # Each process that served holds exactly its own POOL_SIZE sessions: nothing
            # was lost, nothing opened twice.
            expected = before + POOL_SIZE * (1 + len(workers))
            wait_for(lambda n=expected: processes.app_sessions() == n, f"{expected} sessions")
        alive_at_the_end = server_sessions()
        server.terminate()
        assert server.wait(60) == 0
    server_log = log.read_text(errors="replace")
    failures = [r for r in results if isinstance(r, str)]
    # The server's own account of a failure: the 503 middleware and the pool log one line
    # each (a page's body alone does not say which error it stands for).
    causes = [line for line in server_log.splitlines() if "503 for" in line or "pool '" in line]
    assert failures == [], (failures[:2], causes[:20], server_log[-2000:])
    answers = [r for r in results if isinstance(r, dict)]
    assert len(answers) == ROUNDS * CLIENTS * REQUESTS_PER_CLIENT

    workers_by_session: dict[str, set[int]] = defaultdict(set)
    for answer in answers:
        workers_by_session[answer["session"]].add(answer["pid"])
    workers = {answer["pid"] for answer in answers}
    assert len(workers) > 2, generations  # several generations of workers served
    assert preload["pid"] not in workers
    assert len(master_sessions) == 2
    # No session ever served two processes, and none of the master's served a worker.
    shared = {s: pids for s, pids in workers_by_session.items() if len(pids) > 1}
    assert shared == {}
    assert master_sessions.isdisjoint(workers_by_session)
    # The master's sessions outlived every worker that exited (each inherited them).
    assert master_sessions <= alive_at_the_end, (master_sessions, alive_at_the_end)
    # Every session ended cleanly: each process closed its own, the master its own.
    wait_for(lambda: processes.app_sessions() == before, "every session closed")
    after = processes.app_sessions()
    assert unclean.since() == 0, server_log[-5000:]
    assert "Traceback" not in server_log, server_log[-3000:]
    record(
        Row(
            scenario="5. Fork: gunicorn --preload",
            vendor=settings.DATABASE_VENDOR,
            requests=len(results),
            errors="0",
            recovery_s=None,
            connections_before=before,
            connections_after=after,
            outcome=(
                f"{len(workers)} workers in {ROUNDS} generations forked from a master "
                f"holding live connections used {len(workers_by_session)} sessions, none "
                "shared, none the master's; the master's sessions outlived every worker; "
                "no unclean disconnect"
            ),
        )
    )


def session_id() -> int:
    with connection.cursor() as cursor:
        cursor.execute(SESSION_ID_SQL[connection.vendor])
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_a_forked_child_queries_on_a_session_of_its_own_and_never_ends_the_parents() -> None:
    unclean = processes.UncleanDisconnects()
    # Fresh pools: what earlier tests left idle would be inherited too.
    connections.close_all()
    for pool in take_all_pools().values():
        pool.close(timeout=5)
    idle: list[int] = []

    def use_and_return() -> None:
        idle.append(session_id())
        connection.close()

    # This thread, which forks, keeps its connection checked out across the fork, as a
    # process does that queries before it starts multiprocessing workers; another thread
    # leaves one idle in the pool.
    parent = session_id()
    thread = threading.Thread(target=use_and_return)
    thread.start()
    thread.join(30)
    assert len(idle) == 1
    assert idle[0] != parent

    def child() -> dict[str, Any]:
        own = session_id()
        again = session_id()
        inherited = len(_fork._inherited)
        # What the drivers' finalizers do when a child exits normally: closing the
        # inherited connections must not reach the parent's sessions.
        for conn in _fork._inherited:
            conn.close()  # type: ignore[attr-defined]
        from django_dbpool import close_all_pools

        close_all_pools(timeout=5)  # the child's own session ends cleanly
        return {"own": own, "again": again, "inherited": inherited}

    report = run_in_child(child)
    assert "error" not in report, report
    assert report["own"] not in (parent, idle[0])
    assert report["again"] == report["own"]
    assert report["inherited"] == 2
    # The parent's sessions are intact and still its own: the one this thread holds, and
    # the idle one, which the next thread to check out gets.
    assert session_id() == parent
    thread = threading.Thread(target=use_and_return)
    thread.start()
    thread.join(30)
    assert idle == [idle[0], idle[0]]
    assert unclean.since() == 0


@pytest.mark.django_db(transaction=True)
def test_a_forked_child_publishes_its_own_stats_and_tags_with_its_own_pid() -> None:
    # What a process renders or starts once (the stats publisher, the process tag with its
    # pid) is done again in a forked child, which neither inherits the parent's publisher
    # thread nor may report under the parent's pid.
    from django_dbpool import snapshots

    session_id()  # a checkout: this process publishes
    assert snapshots._publishing
    assert f":{os.getpid()}:" in connection.dbpool_app_tag()

    def child() -> dict[str, Any]:
        publishing_at_fork = snapshots._publishing
        session_id()
        from django_dbpool import close_all_pools

        report = {
            "pid": os.getpid(),
            "publishing_at_fork": publishing_at_fork,
            "publishing": snapshots._publishing,
            "publisher_pid": snapshots._publisher_pid,
            "tag": connection.dbpool_app_tag(),
        }
        close_all_pools(timeout=5)
        return report

    report = run_in_child(child)
    assert "error" not in report, report
    assert report["publishing_at_fork"] is False
    assert report["publishing"] is True
    assert report["publisher_pid"] == report["pid"] != os.getpid()
    assert f":{report['pid']}:" in report["tag"]
    assert f":{os.getpid()}:" in connection.dbpool_app_tag()  # the parent's is unchanged


def test_djangos_parallel_test_runner_gives_each_worker_sessions_of_its_own(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [
            sys.executable,
            processes.MANAGE,
            "test",
            "tests.faults.fork_runner",
            "--parallel",
            "2",
            "--noinput",
            "-v",
            "2",
        ],
        env=processes.project_env(
            DJANGO_SETTINGS_MODULE="tests.faults.fork_settings",
            DBPOOL_FORK_RECORDS=str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    assert "Ran 4 tests" in output, output[-5000:]
    assert "Traceback" not in output, output[-5000:]

    parent_before = json.loads((tmp_path / "parent-before.json").read_text())
    parent_after = json.loads((tmp_path / "parent-after.json").read_text())
    tests = [json.loads(p.read_text()) for p in tmp_path.glob("test-*.json")]
    parent_pid = parent_before[0]["pid"]
    workers = {t["pid"] for t in tests}
    assert len(tests) == 4
    assert len(workers) == 2
    assert parent_pid not in workers
    # The pool was in use when the runner forked: two sessions, one held across the fork.
    assert len({p["session"] for p in parent_before}) == 2
    assert parent_after == parent_before
    # Each worker's sessions are its own (on its own clone of the test database).
    workers_by_session: dict[str, set[int]] = defaultdict(set)
    for t in tests:
        workers_by_session[t["session"]].add(t["pid"])
    assert all(len(pids) == 1 for pids in workers_by_session.values()), workers_by_session
    assert {p["session"] for p in parent_before}.isdisjoint(workers_by_session)
    assert len({t["database"] for t in tests}) == 2
    record(
        Row(
            scenario="5. Fork: test --parallel 2",
            vendor=settings.DATABASE_VENDOR,
            requests=len(tests),
            errors="0",
            recovery_s=None,
            connections_before=len(parent_before),
            connections_after=len(parent_after),
            outcome=(
                f"pool in use when the runner forked; {len(workers)} workers used "
                f"{len(workers_by_session)} sessions of their own; the parent's held session "
                "survived the workers"
            ),
        )
    )
