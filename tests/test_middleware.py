"""PoolUnavailableMiddleware on a real server, through Django's request cycle: a request whose
connection is lost (its session killed, its socket cut; between statements or in the middle
of one; in autocommit mode or inside ``atomic()``) gets a 503 with ``Retry-After``, logged
once with the alias; every other database error (a syntax error, a duplicate key, a
deadlock, a statement timeout) stays a 500.

The views are tests.views' account views: ``ACCOUNTS_HOOK`` runs inside the view, on the
view's connection, with the view's database session id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import (
    IntegrityError,
    OperationalError,
    ProgrammingError,
    connection,
    connections,
    transaction,
)
from django.db.models import F
from django.test import override_settings

from example_project.bank.models import Account
from tests import views
from tests.backends.test_pooling import raw_connection, server_sessions, session_id
from tests.conftest import wsgi_request

pytestmark = pytest.mark.django_db(transaction=True)

SLEEP_SQL = {"postgresql": "SELECT pg_sleep(%s)", "mysql": "SELECT SLEEP(%s)"}


@pytest.fixture(autouse=True)
def clean_up() -> Iterator[None]:
    yield
    views.ACCOUNTS_HOOK = None
    # A test may leave a dead connection on this thread's wrappers: the flush after the
    # test must get a fresh one.
    for wrapper in connections.all(initialized_only=True):
        wrapper.close()


def end_session(session: int) -> None:
    """End database session ``session`` from a connection of its own, if the server still
    has it, and wait until the server no longer lists it."""
    with raw_connection() as conn:
        cursor = conn.cursor()
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_terminate_backend(%s)", [session])
        elif session in server_sessions():
            with contextlib.suppress(Exception):  # 1094: it ended by itself meanwhile
                cursor.execute(f"KILL {int(session)}")
    deadline = time.monotonic() + 30
    while session in server_sessions():
        assert time.monotonic() < deadline, f"session {session} still listed after 30 s"
        time.sleep(0.05)


def cut(fd: int) -> None:
    """Shut socket ``fd`` down under its connection, as a network failure would: the server
    sends nothing, the driver sees the socket close. Takes the descriptor, not the driver's
    connection, which mysqlclient refuses to a second thread while a query runs."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def wait_until(condition: Callable[[Any], bool], what: str) -> None:
    """Poll ``condition(cursor)`` on a connection of its own until it holds (30 s at most)."""
    deadline = time.monotonic() + 30
    with raw_connection() as conn:
        while not condition(conn.cursor()):
            assert time.monotonic() < deadline, f"not seen in 30 s: {what}"
            time.sleep(0.01)


def running_sleep(session: int) -> Callable[[Any], bool]:
    def condition(cursor: Any) -> bool:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
                " AND query LIKE %s",
                [session, "%pg_sleep%"],
            )
        else:
            cursor.execute(
                "SELECT 1 FROM information_schema.processlist WHERE id = %s AND info LIKE %s",
                [session, "%SLEEP%"],
            )
        return bool(cursor.fetchall())

    return condition


def waiting_for_a_lock(session: int) -> Callable[[Any], bool]:
    def condition(cursor: Any) -> bool:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                [session],
            )
        else:
            cursor.execute(
                "SELECT 1 FROM information_schema.innodb_trx"
                " WHERE trx_mysql_thread_id = %s AND trx_state = 'LOCK WAIT'",
                [session],
            )
        return bool(cursor.fetchall())

    return condition


def get_accounts(
    hook: Callable[[int], None], caplog: pytest.LogCaptureFixture
) -> tuple[int, dict[str, str], list[logging.LogRecord], int]:
    """GET /probe/accounts/ through Django's WSGI handler, with ``hook`` run inside the
    view: (status, response headers, the middleware's log records for it, the view's
    session id)."""
    sessions: list[int] = []

    def recording(session: int) -> None:
        sessions.append(session)
        hook(session)

    views.ACCOUNTS_HOOK = recording
    caplog.clear()
    with caplog.at_level(logging.INFO):
        status, headers, _ = wsgi_request("/probe/accounts/")
    views.ACCOUNTS_HOOK = None
    assert len(sessions) == 1
    logged = [
        r
        for r in caplog.records
        if r.name == "django_dbpool" and r.getMessage().startswith("503 for GET /probe/accounts/")
    ]
    return status, headers, logged, sessions[0]


def assert_served_again(lost_session: int) -> None:
    status, _, body = wsgi_request("/probe/session/")
    assert status == 200
    assert int(body) != lost_session


# -- a lost connection is a 503 ----------------------------------------------------------------


def losing_hook(how: str, when: str, in_atomic: bool) -> Callable[[int], None]:
    """A view hook that loses its connection (``how``: its session killed on the server, or
    its socket cut as a network failure would), ``when``: before its next statement or
    while a statement runs, inside ``atomic()`` or not; then runs that statement."""

    def hook(session: int) -> None:
        fd = connection.connection.fileno()

        def lose() -> None:
            if how == "kill":
                end_session(session)
            else:
                cut(fd)

        def lose_while_sleeping() -> None:
            wait_until(running_sleep(session), "the sleep")
            lose()

        with transaction.atomic() if in_atomic else contextlib.nullcontext():
            if when == "between statements":
                lose()
                list(Account.objects.all())
                return
            # The statement is on the wire, the view's thread inside the driver, when
            # another thread loses the connection.
            loser = threading.Thread(target=lose_while_sleeping)
            loser.start()
            try:
                with connection.cursor() as cursor:
                    cursor.execute(SLEEP_SQL[connection.vendor], [10])
            finally:
                loser.join(30)

    return hook


@pytest.mark.parametrize(
    ("how", "when", "in_atomic"),
    [
        ("kill", "between statements", False),
        ("kill", "between statements", True),
        ("kill", "mid-statement", False),
        ("kill", "mid-statement", True),
        ("cut", "between statements", False),
        ("cut", "between statements", True),
        ("cut", "mid-statement", False),
        ("cut", "mid-statement", True),
    ],
)
@override_settings(DBPOOL_RETRY_AFTER=7)
def test_a_lost_connection_is_a_503_logged_once_with_the_alias(
    how: str, when: str, in_atomic: bool, caplog: pytest.LogCaptureFixture
) -> None:
    status, headers, logged, session = get_accounts(losing_hook(how, when, in_atomic), caplog)
    try:
        assert status == 503
        assert headers["Retry-After"] == "7"
        assert len(logged) == 1, [r.getMessage() for r in logged]
        assert "the connection to database 'default' was lost: OperationalError" in (
            logged[0].getMessage()
        )
        assert "\n" not in logged[0].getMessage()
        # Django's own line for the 503, and no 500's traceback.
        assert not [r for r in caplog.records if r.name == "django.request" and r.exc_info]
    finally:
        # A cut leaves the server's side running its sleep.
        end_session(session)
    # The dead connection was not given out again.
    assert_served_again(session)


@pytest.mark.django_db(transaction=True, databases=["default", "small"])
def test_the_alias_named_is_the_one_whose_connection_was_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hook(session: int) -> None:
        # The view holds a healthy connection of "default"; the one of "small", the same
        # database through another pool, is killed.
        end_session(session_id("small"))
        session_id("small")

    status, _, logged, _ = get_accounts(hook, caplog)
    assert status == 503
    assert len(logged) == 1
    assert "the connection to database 'small' was lost" in logged[0].getMessage()


# -- every other database error stays a 500 ----------------------------------------------------


def syntax_error(session: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT FROM WHERE")


def duplicate_key(session: int) -> None:
    Account.objects.create(name="Ada", balance=1)


def statement_timeout(session: int) -> None:
    # An OperationalError, as lost connections are; on PostgreSQL of SQLSTATE class 57,
    # as admin_shutdown (57P01) is.
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL statement_timeout = 1")
            cursor.execute("SELECT pg_sleep(1)")
        else:
            cursor.execute("SET STATEMENT max_statement_time = 0.001 FOR SELECT SLEEP(1)")


def deadlock(session: int) -> None:
    # An OperationalError too. The view's transaction holds Ada and asks for Grace, which
    # another transaction holds while it waits for Ada: the view's is the one rolled back,
    # on MariaDB because it changed fewer rows, on PostgreSQL because the other one's
    # deadlock check comes a minute after the view's. One row per statement, by primary
    # key: on a table this small, InnoDB would scan (and lock) every row for anything else.
    ids = dict(Account.objects.values_list("name", "pk"))
    other_session: list[int] = []
    holding = threading.Event()
    failures: list[BaseException] = []

    def other() -> None:
        update = "UPDATE bank_account SET balance = balance + 1 WHERE id = %s"
        try:
            with raw_connection() as conn:
                cursor = conn.cursor()
                cursor.execute(views.SESSION_ID_SQL[connection.vendor])
                other_session.append(int(cursor.fetchone()[0]))
                cursor.execute("BEGIN")
                if connection.vendor == "postgresql":
                    cursor.execute("SET LOCAL deadlock_timeout = '60s'")
                for name in ("Grace", "Linus", "Barbara"):
                    cursor.execute(update, [ids[name]])
                holding.set()
                cursor.execute(update, [ids["Ada"]])
                cursor.execute("ROLLBACK")
        except BaseException as exc:
            failures.append(exc)
        finally:
            holding.set()

    thread = threading.Thread(target=other)
    try:
        with transaction.atomic():
            Account.objects.filter(pk=ids["Ada"]).update(balance=F("balance") + 1)
            thread.start()
            holding.wait(30)
            assert not failures, failures
            wait_until(waiting_for_a_lock(other_session[0]), "the other transaction waiting")
            Account.objects.filter(pk=ids["Grace"]).update(balance=F("balance") + 1)
    finally:
        thread.join(60)
    raise AssertionError(f"no deadlock; the other transaction failed with {failures}")


@pytest.mark.parametrize(
    ("hook", "error"),
    [
        (syntax_error, ProgrammingError),
        (duplicate_key, IntegrityError),
        (statement_timeout, OperationalError),
        (deadlock, OperationalError),
    ],
    ids=["syntax error", "duplicate key", "statement timeout", "deadlock"],
)
def test_other_database_errors_stay_500(
    hook: Callable[[int], None], error: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("Ada", "Grace", "Linus", "Barbara"):
        Account.objects.create(name=name, balance=10)
    status, _, logged, session = get_accounts(hook, caplog)
    assert status == 500
    assert logged == []
    failures = [r for r in caplog.records if r.name == "django.request" and r.exc_info]
    assert len(failures) == 1
    raised = failures[0].exc_info[1]  # type: ignore[index]
    assert isinstance(raised, error), repr(raised)
    # Still the same healthy connection: the error was the request's, not the connection's.
    views.ACCOUNTS_HOOK = None
    assert wsgi_request("/probe/session/")[0] == 200
    assert session in server_sessions()


def test_without_a_template_engine_the_503_is_plain_text() -> None:
    from django.test import RequestFactory

    from django_dbpool.middleware import PLAIN_TEXT, unavailable_response
    from django_dbpool.pool import PoolTimeout

    request = RequestFactory().get("/accounts/")
    with override_settings(TEMPLATES=[]):
        response = unavailable_response(request, PoolTimeout("no connection within 1 s"))
    assert response.status_code == 503
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == PLAIN_TEXT
    assert response["Retry-After"] == "5"
