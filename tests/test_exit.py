"""Exit paths that must neither hang nor break a connection under its user: a signal during a
query, executor threads at exit, a forced drain, a handler installed from C, a pool closed
by hand. Real processes and real servers."""

from __future__ import annotations

import signal
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import OperationalError, connections

from tests import processes
from tests.views import SESSION_ID_SQL

SLEEP_SQL = {"postgresql": "SELECT pg_sleep(%d)", "mysql": "SELECT SLEEP(%d)"}
# Longer than any wait below: a process or a session that outlives it was never cut off.
LONG_QUERY_SECONDS = 120


def sleep_sql(seconds: int) -> str:
    return SLEEP_SQL[settings.DATABASE_VENDOR] % seconds


def session_alive(session_id: int) -> bool:
    if settings.DATABASE_VENDOR == "postgresql":
        sql = f"SELECT count(*) FROM pg_stat_activity WHERE pid = {session_id}"
    else:
        sql = f"SELECT COUNT(*) FROM information_schema.processlist WHERE id = {session_id}"
    return int(processes.raw_query(sql)[0][0]) > 0


def wait_for_statement(session_id: int, limit: float = 30) -> None:
    if settings.DATABASE_VENDOR == "postgresql":
        sql = (
            f"SELECT count(*) FROM pg_stat_activity WHERE pid = {session_id}"
            " AND state = 'active' AND query ILIKE '%pg_sleep(%'"
        )
    else:
        sql = (
            f"SELECT COUNT(*) FROM information_schema.processlist WHERE id = {session_id}"
            " AND info LIKE '%SLEEP(%'"
        )
    deadline = time.monotonic() + limit
    while not int(processes.raw_query(sql)[0][0]):
        assert time.monotonic() < deadline, f"session {session_id} never ran its statement"
        time.sleep(0.05)


def wait_for_session_end(session_id: int, limit: float = 60) -> bool:
    deadline = time.monotonic() + limit
    while session_alive(session_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def abandoned_sessions() -> int:
    # Sessions of the real database that ended without a goodbye, one count each (the
    # server log that processes.UncleanDisconnects also reads may report one twice).
    if settings.DATABASE_VENDOR == "postgresql":
        sql = "SELECT sessions_abandoned FROM pg_stat_database WHERE datname = current_database()"
        return int(processes.raw_query(sql)[0][0])
    return int(processes.raw_query("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")[0][1])


def url_with(**params: str) -> str:
    url = processes.database_url()
    extra = "&".join(f"{key}={value}" for key, value in params.items())
    return url + ("&" if "?" in url else "?") + extra


def run_shell(code: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, processes.MANAGE, "shell", "--no-imports", "-c", textwrap.dedent(code)],
        env=processes.project_env(**env),
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_or_kill(child: subprocess.Popen[str], limit: float) -> int | None:
    try:
        return child.wait(limit)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return None


@pytest.mark.django_db(transaction=True)
def test_sigterm_during_a_query_exits_at_once_and_ends_every_session() -> None:
    # A management command (the default SIGTERM action under our handler) in the middle of a
    # long statement, with an idle connection in the pool beside it. The handler used to
    # drain in the main thread, which waited for the statement's own connection lock.
    abandoned = abandoned_sessions()
    child = run_shell(
        f"""
        import threading
        from django.db import connection
        mine = threading.Event()
        def idle():
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            mine.wait(30)
            connection.close()  # back to the pool, idle
        thread = threading.Thread(target=idle)
        thread.start()
        with connection.cursor() as cursor:
            cursor.execute({SESSION_ID_SQL[settings.DATABASE_VENDOR]!r})
            print(cursor.fetchone()[0], flush=True)
            mine.set()
            thread.join()
            cursor.execute({sleep_sql(LONG_QUERY_SECONDS)!r})
        print("the query ended", flush=True)
        """
    )
    try:
        assert child.stdout is not None
        session = int(child.stdout.readline())
        wait_for_statement(session)
        assert processes.app_sessions() >= 2  # the sleeping one and an idle one
        child.send_signal(signal.SIGTERM)
        # Well before the statement could end: it was cut off, not waited for.
        assert wait_or_kill(child, LONG_QUERY_SECONDS / 4) == -signal.SIGTERM
        assert "the query ended" not in child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert wait_for_session_end(session, LONG_QUERY_SECONDS / 4)
    assert processes.wait_for_no_app_sessions() == 0
    # Only the interrupted session went away without a goodbye: the idle one was closed.
    assert abandoned_sessions() - abandoned <= 1


@pytest.mark.django_db(transaction=True)
def test_exit_does_not_wait_for_connections_of_executor_threads() -> None:
    # Threads that never called connection.close() have exited by the time atexit runs:
    # their connections come back at once instead of after DRAIN_TIMEOUT (600 s here).
    unclean = processes.UncleanDisconnects()
    child = run_shell(
        """
        from concurrent.futures import ThreadPoolExecutor
        from django.db import connection
        def work(n):
            with connection.cursor() as cursor:
                cursor.execute("SELECT %s", [n])
                return cursor.fetchone()[0]
        with ThreadPoolExecutor(2) as executor:
            print(sum(executor.map(work, range(20))), flush=True)
        """,
        DATABASE_URL=url_with(pool_drain_timeout="600"),
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == str(sum(range(20)))
    assert wait_or_kill(child, 120) == 0
    assert processes.wait_for_no_app_sessions() == 0
    assert unclean.since() == 0


@pytest.mark.django_db(transaction=True, databases=["default", "small"])
def test_a_forced_drain_cuts_a_query_off_without_closing_the_driver_under_it() -> None:
    started = threading.Event()
    outcome: dict[str, object] = {}

    def holder() -> None:
        try:
            with connections["small"].cursor() as cursor:
                cursor.execute(SESSION_ID_SQL[settings.DATABASE_VENDOR])
                outcome["session"] = int(cursor.fetchone()[0])
                started.set()
                cursor.execute(sleep_sql(LONG_QUERY_SECONDS))
            outcome["result"] = "the query ended"
        except Exception as exc:
            outcome["error"] = exc
        finally:
            started.set()
            connections["small"].close()

    pool = connections["small"].pool
    thread = threading.Thread(target=holder)
    thread.start()
    assert started.wait(30)
    wait_for_statement(int(outcome["session"]))  # type: ignore[call-overload]
    result = pool.close(timeout=0)  # force: the drain timeout ran out
    assert result.force_closed == 1
    thread.join(LONG_QUERY_SECONDS / 4)
    assert not thread.is_alive()
    # The holder's own driver call failed cleanly with the driver's connection-lost error.
    assert isinstance(outcome.get("error"), OperationalError), outcome
    assert wait_for_session_end(int(outcome["session"]), LONG_QUERY_SECONDS / 4)  # type: ignore[call-overload]
    assert pool.stats().size == 0  # closed by its holder's release
    assert pool.stats().closed["shutdown"] == 1


@pytest.mark.django_db(transaction=True)
def test_a_pool_closed_by_hand_is_replaced_at_the_next_checkout() -> None:
    connection = connections["default"]
    connection.ensure_connection()
    connection.close()
    closed = connection.pool
    closed.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone()[0] == 1
    assert connection.pool is not closed
    assert not connection.pool.closed
    connection.close()


EMBEDDER = r"""
#include <Python.h>
#include <signal.h>

/* What an embedding server such as uWSGI does: its own handlers, then the interpreter. */
static void on_signal(int signum) { (void)signum; }

int main(int argc, char **argv) {
    signal(SIGTERM, on_signal);
    return Py_BytesMain(argc, argv);
}
"""


def test_handlers_installed_from_c_are_left_in_place(tmp_path: Path) -> None:
    source = tmp_path / "embed.c"
    source.write_text(EMBEDDER)
    binary = tmp_path / "embed"
    include, libdir = sysconfig.get_paths()["include"], sysconfig.get_config_var("LIBDIR")
    version = sysconfig.get_config_var("LDVERSION")
    subprocess.run(
        [
            "cc",
            str(source),
            f"-I{include}",
            f"-L{libdir}",
            f"-lpython{version}",
            f"-Wl,-rpath,{libdir}",
            "-o",
            str(binary),
        ],
        check=True,
        capture_output=True,
    )
    purelib = sysconfig.get_paths()["purelib"]
    code = textwrap.dedent(
        f"""
        import sys, signal, logging
        sys.path[:0] = [{str(processes.ROOT)!r}, {purelib!r}]
        assert signal.getsignal(signal.SIGTERM) is None  # Python sees a handler it did not set
        class Records(logging.Handler):
            def emit(self, record):
                print(record.levelname, record.getMessage())
        logger = logging.getLogger("django_dbpool.shutdown")
        logger.addHandler(Records())
        logger.setLevel(logging.INFO)
        from django.conf import settings
        settings.LOGGING_CONFIG = None  # keep this handler
        import django
        django.setup()  # installs the handlers
        from django_dbpool import lifecycle, shutdown
        lifecycle.install()  # again: still one message
        print("SIGTERM", signal.getsignal(signal.SIGTERM))
        print("SIGINT", signal.getsignal(signal.SIGINT) is shutdown._handle)
        """
    )
    done = subprocess.run(
        [str(binary), "-c", code],
        env=processes.project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "INFO SIGTERM: a handler installed outside Python (an "
        "embedding server such as uWSGI) is left in place, so django_dbpool's drain handlers "
        "are not installed for it. Drain the pools from the server's own shutdown hook: call "
        "django_dbpool.shutdown.close_all_pools() (uWSGI: uwsgi.atexit).",
        "SIGTERM None",
        "SIGINT True",
    ]


def test_the_watcher_does_not_take_a_wakeup_descriptor_already_in_use() -> None:
    # asyncio's loop (uvicorn's, say) owns the wakeup descriptor: it must keep it.
    code = textwrap.dedent(
        """
        import os, signal
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)
        import django
        django.setup()
        from django_dbpool import shutdown
        assert shutdown._watcher is None
        assert signal.set_wakeup_fd(-1) == write_fd
        print("kept")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=processes.project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "kept"
