"""Scenario 6, leaks and orphans: threads that check a connection out and never give it back.

A view starts a thread that queries through the ORM and exits without closing its
connection, more times than the pool has connections. The pool reclaims each orphan (its
holder thread is dead), warns with where it was acquired, and never runs dry: every request
succeeds and no connection is opened beyond MAX_SIZE. A thread that is alive and holds its
connection past LEAK_TIMEOUT gets one warning and keeps its connection.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from tests import views
from tests.backends.test_pooling import server_sessions
from tests.conftest import wsgi_get
from tests.faults.harness import record
from tests.faults.report import Row

FULL = os.environ.get("DBPOOL_FAULTS") == "full"
ALIAS = "small"
MAX_SIZE = 2
LEAKING_REQUESTS = 40 if FULL else 8
LOGGER = "django_dbpool.pool"
RECLAIMED = "reclaiming a connection whose thread exited without releasing it"

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", ALIAS])


def wait_for(condition: Callable[[], bool], what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {limit:g} s"
        time.sleep(0.02)


def source_line(function: Callable[..., Any], text: str) -> int:
    """The line of ``function``'s source file that contains ``text``."""
    import inspect

    lines, first = inspect.getsourcelines(function)
    (offset,) = [i for i, line in enumerate(lines) if text in line]
    return first + offset


@pytest.fixture
def leaky_pool(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The "small" alias with MAX_SIZE=2 and the given LEAK_TIMEOUT (parametrize
    indirectly; default 1 s); yields its pool, closed afterwards."""
    pool_settings = {"MAX_SIZE": MAX_SIZE, "TIMEOUT": 10}
    leak_timeout = getattr(request, "param", 1)
    if leak_timeout:
        pool_settings["LEAK_TIMEOUT"] = leak_timeout
    # Every thread's wrapper shares this dict: the next checkout opens a pool with these.
    settings_dict = connections[ALIAS].settings_dict
    saved = settings_dict["POOL"]
    settings_dict["POOL"] = pool_settings
    try:
        pool = connections[ALIAS].pool
        yield pool
    finally:
        connections[ALIAS].close()
        pool.close(timeout=5)
        settings_dict["POOL"] = saved


@pytest.mark.parametrize("leaky_pool", [1, 0], ids=["leak_timeout", "defaults"], indirect=True)
def test_connections_left_by_exited_threads_are_reclaimed_with_where_they_were_acquired(
    leaky_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    before = len(server_sessions())
    answers = [wsgi_get("/probe/small-leak-in-thread/") for _ in range(LEAKING_REQUESTS)]

    # Every request succeeded although each leaked the connection its thread used: the
    # pool took the orphans back and handed them out again, never opening more.
    assert [status for status, _ in answers] == [200] * LEAKING_REQUESTS
    sessions = {int(body) for _, body in answers}
    assert len(sessions) <= MAX_SIZE
    # Counted when the housekeeper finds an orphan, which it then rolls back (I/O) and returns.
    wait_for(
        lambda: (s := leaky_pool.stats()).orphans_reclaimed == LEAKING_REQUESTS and s.in_use == 0,
        "every orphan reclaimed and back in the pool",
    )
    stats = leaky_pool.stats()
    assert stats.in_use == 0
    assert stats.timeouts == 0
    assert stats.opened == stats.size <= MAX_SIZE
    assert len(server_sessions()) <= before + MAX_SIZE
    # A well-behaved request afterwards gets a reclaimed connection at once.
    status, body = wsgi_get("/probe/small/")
    assert status == 200
    assert int(body) in sessions
    assert leaky_pool.stats().in_use == 0

    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    reclaimed = [m for m in messages if RECLAIMED in m]
    assert len(reclaimed) == LEAKING_REQUESTS, messages
    assert all("thread 'leaky-task'" in m for m in reclaimed)
    if leaky_pool.options.leak_timeout:
        # With LEAK_TIMEOUT on, the whole stack is recorded: the warning names the line of
        # the thread's code that checked the connection out.
        line = source_line(views.leaky_task, ".exists()")
        place = f'File "{views.__file__}", line {line}, in leaky_task'
        assert all(place in m for m in reclaimed), reclaimed[0]
        assert all('Account.objects.using("small").exists()' in m for m in reclaimed)
    after = len(server_sessions())
    if leaky_pool.options.leak_timeout:
        record(
            Row(
                scenario="6. Leaks and orphans",
                vendor=settings.DATABASE_VENDOR,
                requests=LEAKING_REQUESTS + 1,
                errors="0",
                recovery_s=None,
                connections_before=before,
                connections_after=after,
                outcome=(
                    f"{LEAKING_REQUESTS} orphaned connections (MAX_SIZE={MAX_SIZE}) reclaimed "
                    f"with a warning naming the thread's file:line; {stats.opened} opened in "
                    "all; no timeout"
                ),
            )
        )


def holding_task(acquired: threading.Event, release: threading.Event, out: list[int]) -> None:
    from example_project.bank.models import Account

    Account.objects.using(ALIAS).exists()  # checked out here, held until told
    out.append(session_of(ALIAS))
    acquired.set()
    release.wait(30)
    out.append(session_of(ALIAS))
    connections[ALIAS].close()


def session_of(alias: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute(views.SESSION_ID_SQL[connections[alias].vendor])
        return int(cursor.fetchone()[0])


def test_a_live_thread_holding_past_leak_timeout_is_warned_about_and_keeps_its_connection(
    leaky_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    acquired, release = threading.Event(), threading.Event()
    out: list[int] = []
    thread = threading.Thread(
        target=holding_task, args=(acquired, release, out), name="holding-task"
    )
    thread.start()
    try:
        assert acquired.wait(30)

        def warned() -> list[str]:
            return [r.getMessage() for r in caplog.records if "held for" in r.getMessage()]

        wait_for(lambda: bool(warned()), "a leak warning")
        (message,) = warned()
        assert "(LEAK_TIMEOUT=1 s) by thread 'holding-task'" in message
        line = source_line(holding_task, ".exists()")
        assert f'File "{__file__}", line {line}, in holding_task' in message
        # Meanwhile the pool's other connection serves requests.
        status, body = wsgi_get("/probe/small/")
        assert status == 200
        assert int(body) != out[0]
    finally:
        release.set()
        thread.join(30)
    assert out[1] == out[0]  # not taken away from its holder
    stats = leaky_pool.stats()
    assert stats.leaks == 1
    assert stats.orphans_reclaimed == 0
    assert stats.in_use == 0
    assert not [r for r in caplog.records if RECLAIMED in r.getMessage()]
