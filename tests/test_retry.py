"""retry_on_disconnect and retrying() on a real server: what counts as a lost connection,
a read-only view that survives its session being killed, and the cases never retried."""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import IntegrityError, OperationalError, ProgrammingError, connection, transaction

from django_dbpool.backends.mysql.support import support as mysql_support
from django_dbpool.backends.postgresql.support import support as postgres_support
from django_dbpool.pool import PoolTimeout
from django_dbpool.retry import (
    MYSQL_LOST_CODES,
    POSTGRES_LOST_SQLSTATES,
    connection_lost,
    lost_connection_alias,
    retry_on_disconnect,
    retrying,
)
from example_project.bank.models import Account
from tests import views
from tests.backends.test_pooling import raw_connection, server_sessions, session_id
from tests.conftest import holding_every_connection, wsgi_get

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def give_back_the_connection() -> Iterator[None]:
    yield
    # A test may leave a dead connection on this thread's wrappers ("small" too): the
    # flush after the test must get a fresh one, and the next test must not find it.
    from django.db import connections

    for wrapper in connections.all(initialized_only=True):
        wrapper.close()


def kill(session: int) -> None:
    """End database session ``session`` from a connection of its own, and wait until the
    server no longer lists it."""
    with raw_connection() as conn:
        cursor = conn.cursor()
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_terminate_backend(%s)", [session])
        else:
            cursor.execute(f"KILL {int(session)}")
    deadline = time.monotonic() + 30
    for _ in range(300):
        if session not in server_sessions():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise AssertionError(f"session {session} still listed by the server after 30 s")


def cut(raw: Any) -> None:
    """Shut the socket of driver connection ``raw`` down under it, as a network failure
    would: the server sends nothing, the driver sees the socket close."""
    with socket.socket(fileno=os.dup(raw.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def lose_connection(how: str) -> None:
    """Make the next statement of this thread's connection fail: ``kill`` its session on
    the server, or ``cut`` its socket."""
    session = session_id()
    if how == "kill":
        kill(session)
    else:
        cut(connection.connection)


# -- what counts as a lost connection -----------------------------------------------------------


def test_a_killed_session_is_a_lost_connection() -> None:
    kill(session_id())
    with pytest.raises(OperationalError) as excinfo:
        session_id()
    error = excinfo.value
    cause = error.__cause__
    if connection.vendor == "postgresql":
        assert cause.sqlstate == "57P01"  # type: ignore[union-attr]  # admin_shutdown
    else:
        assert cause.args[0] in {2006, 2013}  # type: ignore[union-attr]
    # Django's error and the driver's, with or without the connection at hand.
    assert connection_lost(error)
    assert connection_lost(cause)  # type: ignore[arg-type]
    assert connection_lost(error, connection.connection)


def test_a_cut_socket_is_a_lost_connection() -> None:
    session_id()
    cut(connection.connection)
    with pytest.raises(OperationalError) as excinfo:
        session_id()
    error = excinfo.value
    cause = error.__cause__
    if connection.vendor == "postgresql":
        # No SQLSTATE: the server never answered. What tells is the connection's state.
        assert cause.sqlstate is None  # type: ignore[union-attr]
        assert connection.connection.closed
        assert connection_lost(error, connection.connection)
    else:
        assert cause.args[0] in {2006, 2013}  # type: ignore[union-attr]
        assert connection_lost(error)


@pytest.mark.parametrize("code", sorted(MYSQL_LOST_CODES))
def test_retry_and_the_mysql_backend_share_one_list_of_lost_connections(code: int) -> None:
    import MySQLdb

    error = MySQLdb.OperationalError(code, "lost")
    assert connection_lost(error)
    assert mysql_support.dead_error(error)
    # Not a psycopg error, whatever its arguments.
    assert not postgres_support.connection_lost(error)


def test_a_mysql_tls_session_cut_off_is_a_lost_connection() -> None:
    import MySQLdb

    error = MySQLdb.OperationalError(2026, "TLS/SSL error: unexpected eof while reading")
    assert connection_lost(error)


@pytest.mark.parametrize("sqlstate", ["08006", "57P01", "57P02", "57P03"])
def test_retry_and_the_postgresql_backend_share_one_list_of_lost_connections(
    sqlstate: str,
) -> None:
    import psycopg

    error = psycopg.errors.lookup(sqlstate)("lost")
    assert sqlstate.startswith(POSTGRES_LOST_SQLSTATES)
    assert connection_lost(error)
    assert not mysql_support.connection_lost(error)


def test_other_errors_are_not_a_lost_connection() -> None:
    with pytest.raises(ProgrammingError) as syntax, connection.cursor() as cursor:
        cursor.execute("SELECT FROM WHERE")
    assert not connection_lost(syntax.value, connection.connection)
    Account.objects.create(name="Ada", balance=1)
    with pytest.raises(IntegrityError) as duplicate:
        Account.objects.create(name="Ada", balance=1)
    assert not connection_lost(duplicate.value, connection.connection)
    assert not connection_lost(ValueError("connection lost"))


@pytest.mark.django_db(transaction=True, databases=["default", "small"])
def test_a_pool_timeout_is_not_a_lost_connection() -> None:
    from django.db import connections

    with holding_every_connection("small"), pytest.raises(PoolTimeout) as timeout:
        connections["small"].ensure_connection()
    assert not connection_lost(timeout.value)
    assert lost_connection_alias(timeout.value) is None


@pytest.mark.django_db(transaction=True, databases=["default", "small"])
@pytest.mark.parametrize("how", ["kill", "cut"])
def test_the_alias_of_a_lost_connection(how: str) -> None:
    from django.db import connections

    session_id("default")
    session_id("small")
    if how == "kill":
        kill(session_id("small"))
    else:
        cut(connections["small"].connection)
    with pytest.raises(OperationalError) as excinfo:
        session_id("small")
    # Both aliases use the same driver and database: the one named is the one whose
    # connection the error came from, not the first one that could have raised it.
    assert lost_connection_alias(excinfo.value) == "small"
    assert lost_connection_alias(excinfo.value.__cause__) == "small"  # type: ignore[arg-type]


def test_other_errors_have_no_alias_of_a_lost_connection() -> None:
    with pytest.raises(ProgrammingError) as syntax, connection.cursor() as cursor:
        cursor.execute("SELECT FROM WHERE")
    assert lost_connection_alias(syntax.value) is None
    assert lost_connection_alias(ValueError("connection lost")) is None


# -- the killed-session scenario, through Django's request cycle -------------------------------


def get_while_its_session_is_killed(path: str) -> tuple[int, bytes, int]:
    """GET ``path`` (an account view) through Django's WSGI handler in a thread of its own;
    once the view holds its connection, kill that session, then let the view run its
    query. Returns the status, the body and the killed session id."""
    held: queue.Queue[int] = queue.Queue()
    killed = threading.Event()
    seen: list[int] = []

    def hook(session: int) -> None:
        seen.append(session)
        if len(seen) == 1:  # the first attempt only
            held.put(session)
            killed.wait(30)

    result: list[tuple[int, bytes]] = []
    views.ACCOUNTS_HOOK = hook
    thread = threading.Thread(target=lambda: result.append(wsgi_get(path)))
    thread.start()
    try:
        victim = held.get(timeout=30)
        kill(victim)
    finally:
        killed.set()
        thread.join(60)
        views.ACCOUNTS_HOOK = None
    assert result, f"GET {path} did not finish"
    return result[0][0], result[0][1], victim


def test_unwrapped_view_fails_when_its_session_is_killed(caplog: pytest.LogCaptureFixture) -> None:
    Account.objects.create(name="Ada", balance=1)
    with caplog.at_level(logging.WARNING):
        status, _, _ = get_while_its_session_is_killed("/probe/accounts/")
    # Not retried: the error reaches PoolUnavailableMiddleware, which answers a lost
    # connection with a 503 (see tests/test_middleware.py).
    assert status == 503
    lost = [r for r in caplog.records if r.name == "django_dbpool" and "was lost" in r.msg]
    assert len(lost) == 1
    assert not [r for r in caplog.records if r.name == "django_dbpool.retry"]


def test_wrapped_view_succeeds_on_a_new_session(caplog: pytest.LogCaptureFixture) -> None:
    Account.objects.create(name="Ada", balance=1)
    Account.objects.create(name="Grace", balance=2)
    with caplog.at_level(logging.WARNING):
        status, body, victim = get_while_its_session_is_killed("/probe/accounts-retried/")
    assert status == 200, body
    data = json.loads(body)
    assert data["names"] == ["Ada", "Grace"]
    # The second attempt ran on another session, which the server still has open (back in
    # the pool), while the killed one is gone.
    assert data["session"] != victim
    sessions = server_sessions()
    assert data["session"] in sessions
    assert victim not in sessions
    retries = [r for r in caplog.records if r.name == "django_dbpool.retry"]
    assert [r.levelno for r in retries] == [logging.WARNING]
    message = retries[0].getMessage()
    assert "'default'" in message
    assert "attempt 1 of 3" in message
    assert "OperationalError" in message


# -- retrying, and when it never happens --------------------------------------------------------


def call_in_form(form: str, block: Callable[[], int]) -> int:
    if form == "bare decorator":
        return retry_on_disconnect(block)()
    if form == "decorator with arguments":
        return retry_on_disconnect("default", attempts=2, backoff=0.01)(block)()
    for attempt in retrying(using="default", backoff=0.01):
        with attempt:
            return block()
    raise AssertionError("unreachable")


@pytest.mark.parametrize("form", ["bare decorator", "decorator with arguments", "loop"])
@pytest.mark.parametrize("how", ["kill", "cut"])
def test_lost_connection_is_retried_on_a_new_session(form: str, how: str) -> None:
    sessions: list[int] = []

    def block() -> int:
        sessions.append(session_id())
        if len(sessions) == 1:
            lose_connection(how)
        return session_id()

    assert call_in_form(form, block) == sessions[1]
    assert len(sessions) == 2
    assert sessions[1] != sessions[0]


@pytest.mark.parametrize("how", ["kill", "cut"])
def test_transaction_that_never_committed_is_retried(how: str) -> None:
    # The connection dies inside an atomic block of the attempt: Django rolls back, drops
    # the connection and borrows another before the error leaves the block.
    calls: list[int] = []

    @retry_on_disconnect(backoff=0.01)
    def block() -> int:
        calls.append(1)
        with transaction.atomic():
            if len(calls) == 1:
                lose_connection(how)
            Account.objects.create(name="Written once", balance=1)
            return session_id()

    block()
    assert len(calls) == 2
    assert Account.objects.filter(name="Written once").count() == 1


@pytest.mark.parametrize("outer", ["atomic", "set_autocommit(False)"])
def test_no_retry_inside_an_outer_transaction(outer: str) -> None:
    calls: list[int] = []

    @retry_on_disconnect(backoff=0)
    def block() -> int:
        calls.append(1)
        lose_connection("kill")
        return session_id()

    def in_outer_transaction() -> None:
        if outer == "atomic":
            with transaction.atomic():
                block()
        else:
            transaction.set_autocommit(False)
            block()

    with pytest.raises(OperationalError) as excinfo:
        in_outer_transaction()
    assert connection_lost(excinfo.value)
    assert len(calls) == 1


def test_no_retry_after_the_block_committed() -> None:
    calls: list[int] = []

    @retry_on_disconnect(backoff=0)
    def block() -> None:
        calls.append(1)
        with transaction.atomic():
            Account.objects.create(name="Committed once", balance=1)
            # Runs after COMMIT, still inside the block: the connection is lost there.
            transaction.on_commit(lambda: (lose_connection("kill"), session_id()))

    with pytest.raises(OperationalError) as excinfo:
        block()
    assert connection_lost(excinfo.value)
    assert len(calls) == 1
    with raw_connection() as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT COUNT(*) FROM bank_account WHERE name = 'Committed once'")
        assert cursor.fetchone()[0] == 1


def test_no_retry_for_an_error_after_the_block() -> None:
    calls: list[int] = []

    def loop() -> None:
        for attempt in retrying(backoff=0):
            with attempt:
                calls.append(1)
                session_id()
            lose_connection("kill")  # after the attempt, still in the loop
            session_id()

    with pytest.raises(OperationalError):
        loop()
    assert len(calls) == 1


@pytest.mark.parametrize("error", [ProgrammingError, IntegrityError])
def test_other_errors_are_not_retried(error: type[Exception]) -> None:
    Account.objects.create(name="Ada", balance=1)
    calls: list[int] = []

    @retry_on_disconnect(backoff=0)
    def block() -> None:
        calls.append(1)
        if error is ProgrammingError:
            with connection.cursor() as cursor:
                cursor.execute("SELECT FROM WHERE")
        else:
            Account.objects.create(name="Ada", balance=1)

    with pytest.raises(error):
        block()
    assert len(calls) == 1


def test_attempts_are_bounded_and_the_last_error_is_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[OperationalError] = []

    @retry_on_disconnect(attempts=3, backoff=0.001)
    def block() -> int:
        lose_connection("kill")
        try:
            return session_id()
        except OperationalError as exc:
            errors.append(exc)
            raise

    with (
        caplog.at_level(logging.WARNING, logger="django_dbpool.retry"),
        pytest.raises(OperationalError) as excinfo,
    ):
        block()
    assert len(errors) == 3
    assert excinfo.value is errors[-1]
    messages = [r.getMessage() for r in caplog.records if r.name == "django_dbpool.retry"]
    assert len(messages) == 2
    assert "attempt 1 of 3" in messages[0]
    assert "attempt 2 of 3" in messages[1]


# -- misuse ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"attempts": 0}, r"attempts=0 is invalid; expected an integer >= 1"),
        ({"attempts": 2.5}, r"attempts=2\.5 is invalid"),
        ({"backoff": -1}, r"backoff=-1 is invalid; expected seconds >= 0"),
        ({"max_backoff": "1"}, r"max_backoff='1' is invalid; expected seconds >= 0"),
    ],
)
def test_bad_arguments_name_the_argument(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retry_on_disconnect(**arguments)
    with pytest.raises(ValueError, match=message):
        next(retrying(**arguments))


def test_coroutine_functions_are_refused() -> None:
    async def view() -> None:
        pass

    with pytest.raises(TypeError, match="cannot wrap the coroutine function"):
        retry_on_disconnect(view)


def test_a_loop_that_skips_its_attempt_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="with attempt:"):
        for _attempt in retrying():
            pass
