"""The pooled ENGINEs on a real server: reuse, the bound, zero extra round trips, and no
state leaking from one borrower to the next."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, connections, transaction

from django_dbpool.pool import PoolTimeout
from example_project.bank.models import Account
from tests.conftest import holding_every_connection, wsgi_get
from tests.test_bad_input import ALIAS, misconfigured
from tests.views import SESSION_ID_SQL
from tools.dbservers import MYSQL_SOCKET_VAR, POSTGRES_SOCKET_VAR

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "small", "reset"])


def session_id(alias: str = "default") -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute(SESSION_ID_SQL[connections[alias].vendor])
        return int(cursor.fetchone()[0])


@contextmanager
def raw_connection(database: str = "test") -> Iterator[Any]:
    """A driver connection of its own, outside every pool, to the test database or (with
    ``database="real"``) to the server's real one, which the example project uses."""
    wrapper = connection
    params = wrapper.get_connection_params()
    if database == "real":
        from django.conf import settings

        real = settings.DATABASE_URL.split("?", 1)[0].rsplit("/", 1)[1]
        params["dbname" if wrapper.vendor == "postgresql" else "database"] = real
    if wrapper.vendor == "postgresql":
        import psycopg

        conn = psycopg.connect(**params, autocommit=True)
    else:
        import MySQLdb

        conn = MySQLdb.connect(**params)
        conn.autocommit(True)
    try:
        yield conn
    finally:
        conn.close()


def server_sessions() -> set[int]:
    """The sessions the server has open on the test database, seen from outside the pool."""
    with raw_connection() as conn:
        cursor = conn.cursor()
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        else:
            cursor.execute(
                "SELECT ID FROM information_schema.PROCESSLIST"
                " WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
            )
        return {int(row[0]) for row in cursor.fetchall()}


def statements_during(action: Callable[[], None]) -> int:
    """Statements the server executed for the test database while ``action`` ran."""
    with raw_connection() as conn:
        cursor = conn.cursor()
        if connection.vendor == "postgresql":
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            cursor.execute("SELECT pg_stat_statements_reset()")
            action()
            # Every statement of this measuring session names pg_stat_statements.
            cursor.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND query NOT LIKE '%pg_stat_statements%'"
            )
            return int(cursor.fetchone()[0])

        def questions() -> int:
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            return int(cursor.fetchone()[1])

        # Questions is server-wide and counts the SHOW itself: measure that overhead.
        first = questions()
        before = questions()
        action()
        after = questions()
        return after - before - (before - first)


def test_connection_is_reused_across_requests() -> None:
    sessions = {int(wsgi_get("/probe/session/")[1]) for _ in range(20)}
    assert len(sessions) == 1
    stats = connection.pool.stats()
    assert stats.opened == 1
    assert stats.in_use == 0  # every request gave its connection back


def test_one_statement_per_one_query_request() -> None:
    wsgi_get("/probe/session/")  # warm: the physical connection and its session setup
    requests = 50
    count = statements_during(lambda: [wsgi_get("/probe/session/") for _ in range(requests)])
    assert count == requests


def test_a_validation_probe_is_a_round_trip_but_not_a_statement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # VALIDATE_AFTER 0: every checkout probes the connection first.
    pool = {"MAX_SIZE": 1, "TIMEOUT": 60, "VALIDATE_AFTER": 0}
    with misconfigured(monkeypatch, POOL=pool) as wrapper:
        session = session_id(ALIAS)  # opened, with its session set up, before counting
        wrapper.close()
        checkouts = 20

        def check_out_and_back() -> None:
            for _ in range(checkouts):
                wrapper.ensure_connection()
                wrapper.close()

        count = statements_during(check_out_and_back)
        stats = wrapper.pool.stats()
        assert stats.validations == checkouts
        assert count == 0
        if connection.vendor == "postgresql":
            # The server did receive it: the session's last query is the empty one.
            with raw_connection() as conn:
                row = conn.execute(
                    "SELECT query FROM pg_stat_activity WHERE pid = %s", [session]
                ).fetchone()
            assert row == ("",)


def test_bound_holds_and_the_next_checkout_times_out() -> None:
    small = connections["small"]
    with holding_every_connection("small") as held:
        assert len(set(held)) == small.pool.options.max_size
        with pytest.raises(PoolTimeout, match=r"after waiting 0\.5 s"):
            small.ensure_connection()
    # Once they are back, the same connections serve again.
    assert session_id("small") in held
    small.close()


def test_a_shared_wrapper_keeps_its_connection_when_the_opening_thread_exits() -> None:
    # Django lets other threads use a wrapper after inc_thread_sharing() (#17258): the
    # connection belongs to the wrapper, not to the thread that happened to open it.
    wrapper = connections["default"]  # this thread's
    wrapper.close()
    pool = wrapper.pool
    reclaimed = pool.stats().orphans_reclaimed
    wrapper.inc_thread_sharing()
    try:
        opener = threading.Thread(target=wrapper.ensure_connection)
        opener.start()
        opener.join(timeout=30)
        opened = wrapper.connection
        assert opened is not None
        pool._housekeeper.run_once()  # the sweep that reclaims connections of exited threads
        assert pool.stats().orphans_reclaimed == reclaimed
        assert pool.stats().in_use == 1
        session_id()  # still usable here, on the same connection
        assert wrapper.connection is opened
        wrapper.close()  # given back from this thread, without an error
    finally:
        wrapper.dec_thread_sharing()
    assert pool.stats().in_use == 0


def test_a_connection_opened_from_a_thread_not_allowed_to_use_the_wrapper_stays_with_it() -> None:
    # Django connects first and only then refuses the thread (DatabaseError): the
    # connection is the wrapper's, whose own thread closes it.
    wrapper = connections["default"]  # this thread's
    wrapper.close()
    pool = wrapper.pool
    reclaimed = pool.stats().orphans_reclaimed
    errors: list[Exception] = []

    def use_another_threads_wrapper() -> None:
        try:
            with wrapper.cursor():
                pass
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=use_another_threads_wrapper)
    thread.start()
    thread.join(timeout=30)
    assert [type(error).__name__ for error in errors] == ["DatabaseError"]
    assert wrapper.connection is not None
    pool._housekeeper.run_once()
    assert pool.stats().orphans_reclaimed == reclaimed
    wrapper.close()
    assert pool.stats().in_use == 0


def test_a_wrapper_shared_while_it_holds_a_connection_keeps_it_after_its_thread_exits() -> None:
    handed: list[Any] = []

    def open_then_share() -> None:
        wrapper = connections["default"]  # this thread's own wrapper
        wrapper.ensure_connection()
        wrapper.inc_thread_sharing()
        handed.append(wrapper)

    pool = connection.pool
    reclaimed = pool.stats().orphans_reclaimed
    thread = threading.Thread(target=open_then_share)
    thread.start()
    thread.join(timeout=30)
    (wrapper,) = handed
    try:
        pool._housekeeper.run_once()
        assert pool.stats().orphans_reclaimed == reclaimed
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone()[0] == 1
        wrapper.close()
    finally:
        wrapper.dec_thread_sharing()
    assert pool.stats().in_use == 0


def test_transaction_left_open_is_rolled_back_before_reuse() -> None:
    first = session_id()
    transaction.set_autocommit(False)
    Account.objects.create(name="Uncommitted", balance=1)
    connection.close()  # given back with the INSERT neither committed nor rolled back
    assert session_id() == first  # the same physical connection...
    assert not Account.objects.filter(name="Uncommitted").exists()  # ...without the row
    assert connection.get_autocommit()
    with raw_connection() as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT COUNT(*) FROM bank_account WHERE name = 'Uncommitted'")
        assert cursor.fetchone()[0] == 0


def test_atomic_block_and_savepoints_work_as_usual() -> None:
    with transaction.atomic():
        Account.objects.create(name="Outer", balance=1)
        try:
            with transaction.atomic():
                Account.objects.create(name="Inner", balance=1)
                raise ValueError
        except ValueError:
            pass
        transaction.on_commit(lambda: Account.objects.create(name="Hook", balance=1))
    assert sorted(Account.objects.values_list("name", flat=True)) == ["Hook", "Outer"]


def kill_session(victim: int) -> None:
    """End session ``victim`` on the server; returns once the server no longer lists it."""
    with raw_connection() as conn:
        cursor = conn.cursor()
        if connection.vendor == "postgresql":
            # With a timeout, the call returns once the backend has sent its goodbye.
            cursor.execute("SELECT pg_terminate_backend(%s, 10000)", [victim])
        else:
            cursor.execute(f"KILL {victim}")  # synchronous: the socket is shut down


def test_killed_connection_is_discarded_not_reused() -> None:
    victim = session_id()
    kill_session(victim)
    # Killed while checked out: the next statement fails, and the error marks the
    # connection dead so that it is not given back to the pool.
    with pytest.raises(Exception):  # noqa: B017, PT011 - the driver's error, wrapped by Django
        session_id()
    connection.close()
    replacement = session_id()
    assert replacement != victim
    assert connection.pool.stats().closed["broken"] >= 1


def test_killed_idle_connection_is_replaced_without_an_error() -> None:
    victim = session_id()
    connection.close()
    kill_session(victim)
    # Killed while idle in the pool, and too fresh for a VALIDATE_AFTER probe: the checkout
    # sees the server closed it (no round trip) and hands out another connection.
    replacement = session_id()
    assert replacement != victim
    assert connection.pool.stats().closed["broken"] >= 1


def test_killed_idle_connection_over_a_unix_socket_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Over a Unix socket the checkout check polls the socket (TCP's reads the TCP state).
    var = POSTGRES_SOCKET_VAR if connection.vendor == "postgresql" else MYSQL_SOCKET_VAR
    address = os.environ.get(var)
    assert address, f"{var} is not set: run the suite through tools/dbservers.py"
    # PostgreSQL's socket file is named after PORT, which stays.
    with misconfigured(monkeypatch, HOST=address) as wrapper:
        victim = session_id(ALIAS)
        raw = wrapper.connection
        with socket.socket(fileno=os.dup(raw.fileno())) as sock:
            assert sock.family == socket.AF_UNIX
        # A duplicate is kept for interrupt(); the checkout check polls the socket.
        assert raw.dbpool_socket.family == socket.AF_UNIX
        wrapper.close()
        kill_session(victim)
        replacement = session_id(ALIAS)
        assert replacement != victim
        assert wrapper.pool.stats().closed["broken"] >= 1


def descriptors_of(inode: int) -> list[int]:
    """This process's file descriptors open on the socket (or file) numbered ``inode``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.stat(f"/proc/self/fd/{name}").st_ino == inode:
                found.append(int(name))
        except OSError:  # the descriptor listdir itself used, closed since
            pass
    return found


def test_a_connection_the_pool_closes_leaves_no_descriptor_open() -> None:
    session_id()
    raw = connection.connection  # kept: its finalizer must not be what closes the socket
    inode = os.fstat(raw.fileno()).st_ino
    # The driver's own descriptor and the checkout check's duplicate (on TCP).
    assert len(descriptors_of(inode)) == 2
    connection.close()
    connection.close_pool()
    assert descriptors_of(inode) == []


SESSION_STATE = {
    "postgresql": ("SET dbpool.probe = 'kept'", "SELECT current_setting('dbpool.probe', true)"),
    "mysql": ("SET @dbpool_probe = 'kept'", "SELECT @dbpool_probe"),
}


@pytest.mark.parametrize(("alias", "kept"), [("default", True), ("reset", False)])
def test_raw_session_state_survives_unless_reset_is_on(alias: str, kept: bool) -> None:
    wrapper = connections[alias]
    set_sql, get_sql = SESSION_STATE[wrapper.vendor]
    first = session_id(alias)
    with wrapper.cursor() as cursor:
        cursor.execute(set_sql)
    wrapper.close()
    assert session_id(alias) == first  # the same physical connection either way
    with wrapper.cursor() as cursor:
        cursor.execute(get_sql)
        assert (cursor.fetchone()[0] == "kept") is kept
    wrapper.close()


def test_reset_sets_django_session_up_again() -> None:
    wrapper = connections["reset"]
    for _ in range(3):  # checked out again after each full reset
        with wrapper.cursor() as cursor:
            if wrapper.vendor == "postgresql":
                cursor.execute("SHOW TIME ZONE")
                assert cursor.fetchone()[0] == "Asia/Tokyo"
            else:
                cursor.execute("SELECT @@SESSION.sql_auto_is_null, @@SESSION.autocommit")
                assert cursor.fetchone() == (0, 1)
        wrapper.close()
    assert wrapper.pool.stats().opened == 1


def test_atomic_requests_roll_back_a_failed_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    status, _ = wsgi_get("/probe/create-then-fail/")
    assert status == 500
    assert connection.pool.stats().in_use == 0  # given back despite the failure
    assert not Account.objects.filter(name="Written before the failure").exists()


def test_async_view_uses_pooled_connections() -> None:
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    response = async_to_sync(AsyncClient().get)("/probe/async-session/")
    assert response.status_code == 200
    int(response.content)  # the session id the ORM reported from its executor thread
    assert connection.pool.stats().acquired >= 1


#: What the pooled connect() sets up for transaction leases (backends/leasing.py), which
#: Django's connect() does not know of.
LEASING_STATE = frozenset(
    {
        "_dbpool_transaction",
        "_dbpool_session_sql",
        "_dbpool_parked",
        "_dbpool_cursors",
        "_dbpool_generation",
        "_dbpool_sticky",
        "_dbpool_watch_raw",
        "_dbpool_lease_thread",
        "_dbpool_pins_counted",
        "_dbpool_connecting",
    }
)


def state_after_connect(connect: Callable[[Any], None]) -> tuple[dict[str, Any], list[str]]:
    """What ``connect`` changes on a new wrapper of the default alias that a previous
    connection left in every state Django's ``connect()`` resets; and what it signalled
    and ran."""
    from django.db.backends.signals import connection_created

    wrapper = connections.create_connection("default")
    events: list[str] = []
    wrapper.in_atomic_block = True
    wrapper.savepoint_ids = ["s1"]
    wrapper.atomic_blocks = [object()]
    wrapper.needs_rollback = True
    wrapper.closed_in_transaction = True
    wrapper.errors_occurred = True
    wrapper.health_check_done = False
    wrapper.health_check_enabled = not wrapper.settings_dict["CONN_HEALTH_CHECKS"]
    wrapper.close_at = None
    wrapper.autocommit = False
    wrapper.run_commit_hooks_on_set_autocommit_on = True
    wrapper.run_on_commit = [(set(), lambda: events.append("hook"), False)]

    def created(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection is wrapper:
            events.append("connection_created")

    before = dict(vars(wrapper))
    connection_created.connect(created)
    try:
        connect(wrapper)
    finally:
        connection_created.disconnect(created)
    try:
        changed = {
            # Django's connection attribute is a property over _dbpool_conn.
            "connection" if key == "_dbpool_conn" else key: value
            for key, value in vars(wrapper).items()
            if (key not in before or value is not before[key]) and key not in LEASING_STATE
        }
        # The values that cannot match between two wrappers: made at the connect itself.
        changed["connection"] = type(changed["connection"])
        changed["close_at"] = changed["close_at"] is not None
        return changed, events
    finally:
        wrapper.close()


def test_pooled_connect_leaves_the_state_django_connect_does() -> None:
    """The pooled checkout's shortened ``connect()`` against Django's own, through the same
    wrapper class: the same attributes reset to the same values, the same signal, the same
    commit hooks run. A Django release whose ``connect()`` resets something more fails
    here."""
    from django.db.backends.base.base import BaseDatabaseWrapper

    pooled, pooled_events = state_after_connect(lambda wrapper: wrapper.connect())
    stock, stock_events = state_after_connect(BaseDatabaseWrapper.connect)
    assert pooled == stock
    assert pooled_events == stock_events == ["hook", "connection_created"]
    assert pooled["_dbpool_lease"] is connection.pool


def test_connection_created_is_sent_at_every_checkout() -> None:
    from django.db.backends.signals import connection_created

    sent: list[str] = []

    def created(sender: Any, connection: Any, **kwargs: Any) -> None:
        sent.append(connection.alias)

    wsgi_get("/probe/session/")  # the physical connection, opened before counting
    connection_created.connect(created)
    try:
        sessions = {int(wsgi_get("/probe/session/")[1]) for _ in range(3)}
    finally:
        connection_created.disconnect(created)
    assert sent == ["default"] * 3
    assert len(sessions) == 1  # three checkouts of the same physical connection
