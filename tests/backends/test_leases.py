"""Transaction-scoped leases (``POOL LEASE "transaction"``) on a real server: every release
point, every pin, the safety net, and threads sharing fewer connections than they are."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections, transaction
from django.db.backends.signals import connection_created

import django_dbpool
from django_dbpool import pinned
from django_dbpool.backends.leasing import session_statement
from django_dbpool.tagging import tag
from example_project.bank.models import Account
from tests.pool.fakes import wait_until
from tests.views import SESSION_ID_SQL

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "lease"])

ALIAS = "lease"


@pytest.fixture(autouse=True)
def fresh_lease_alias() -> Iterator[None]:
    connections[ALIAS].close()
    yield
    connections[ALIAS].close()


def session_id(alias: str = ALIAS) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute(SESSION_ID_SQL[connections[alias].vendor])
        return int(cursor.fetchone()[0])


def in_use() -> int:
    """Connections of the alias's pool checked out right now (by anyone)."""
    return connections[ALIAS].pool.stats().in_use


def accounts(n: int, balance: str = "100.00") -> list[Account]:
    return [
        Account.objects.using(ALIAS).create(name=f"lease-{i}", balance=Decimal(balance))
        for i in range(n)
    ]


# -- release points ------------------------------------------------------------------------


def test_an_autocommit_statement_gives_the_connection_back_and_the_next_takes_it_again() -> None:
    first = session_id()
    assert in_use() == 0
    # The same connection comes back to the same thread (affinity), with no new connect.
    acquired = connections[ALIAS].pool.stats().acquired
    opened = connections[ALIAS].pool.stats().opened
    assert session_id() == first
    assert in_use() == 0
    stats = connections[ALIAS].pool.stats()
    assert stats.acquired == acquired + 1
    assert stats.opened == opened


def test_orm_statements_outside_atomic_each_take_a_lease() -> None:
    accounts(3)
    acquired = connections[ALIAS].pool.stats().acquired
    assert Account.objects.using(ALIAS).count() == 3
    assert list(Account.objects.using(ALIAS).values_list("name", flat=True)) == [
        "lease-0",
        "lease-1",
        "lease-2",
    ]
    Account.objects.using(ALIAS).filter(name="lease-0").update(balance=Decimal("1.00"))
    assert in_use() == 0
    assert connections[ALIAS].pool.stats().acquired == acquired + 3


def test_atomic_holds_one_session_until_its_outermost_block_exits() -> None:
    with transaction.atomic(using=ALIAS):
        outer = session_id()
        assert in_use() == 1
        with transaction.atomic(using=ALIAS):  # a savepoint
            assert session_id() == outer
            Account.objects.using(ALIAS).create(name="inner", balance=Decimal("1.00"))
        try:
            with transaction.atomic(using=ALIAS):
                Account.objects.using(ALIAS).create(name="rolled-back")
                raise ValueError
        except ValueError:
            pass
        assert session_id() == outer
        assert in_use() == 1
    assert in_use() == 0
    assert list(Account.objects.using(ALIAS).values_list("name", flat=True)) == ["inner"]


def test_on_commit_callbacks_that_query_run_before_the_lease_ends() -> None:
    seen: list[int] = []
    with transaction.atomic(using=ALIAS):
        Account.objects.using(ALIAS).create(name="hooked")
        transaction.on_commit(
            lambda: seen.append(Account.objects.using(ALIAS).count()), using=ALIAS
        )
        transaction.on_commit(lambda: seen.append(session_id()), using=ALIAS)
    assert seen[0] == 1
    assert seen[1] > 0
    assert in_use() == 0


def test_a_failed_transaction_rolls_back_and_gives_the_connection_back() -> None:
    class Failed(Exception):
        pass

    def failing_transfer() -> None:
        with transaction.atomic(using=ALIAS):
            Account.objects.using(ALIAS).create(name="gone")
            raise Failed

    with pytest.raises(Failed):
        failing_transfer()
    assert in_use() == 0
    assert not Account.objects.using(ALIAS).exists()


def test_manual_transactions_hold_until_autocommit_is_back_on() -> None:
    wrapper = connections[ALIAS]
    wrapper.set_autocommit(False)
    first = session_id()
    Account.objects.using(ALIAS).create(name="manual")
    assert session_id() == first
    assert in_use() == 1
    wrapper.commit()
    assert in_use() == 1  # autocommit is still off: the next statement opens a transaction
    wrapper.set_autocommit(True)
    assert in_use() == 0
    assert Account.objects.using(ALIAS).filter(name="manual").exists()


def test_close_ends_the_logical_connection_and_connection_created_fires_once_per_one() -> None:
    sent: list[int] = []

    def created(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == ALIAS:
            sent.append(1)

    connection_created.connect(created)
    try:
        session_id()
        session_id()
        with transaction.atomic(using=ALIAS):
            session_id()
        assert len(sent) == 1  # leases after the first are not new connections
        connections[ALIAS].close()
        session_id()
        assert len(sent) == 2
    finally:
        connection_created.disconnect(created)
    assert in_use() == 0


def fresh_connections() -> None:
    """Close every connection of the alias's pool (they have been through connection_created
    in earlier tests): the next ones it hands out are new."""
    pool = connections[ALIAS].pool
    held = [pool.acquire(), pool.acquire()]  # MAX_SIZE 2
    for connection in held:
        pool.release(connection, broken=True)


def take_the_parked_one() -> Any:
    """Check out, as another caller, both connections of the alias's pool, the one the lease
    alias parked among them (the pool opens the other if it has only that one), and give the
    other back idle: the next lease cannot resume its parked connection and gets the other.
    Returns the parked one, still checked out."""
    pool = connections[ALIAS].pool
    parked = connections[ALIAS]._dbpool_last[0]
    held = [pool.acquire(), pool.acquire()]
    assert parked in held
    pool.release(next(c for c in held if c is not parked))
    return parked


def test_connection_created_reaches_every_connection_a_statement_runs_on() -> None:
    # A receiver that sets up the driver's connection (django.contrib.postgres registers its
    # types so) must see every connection a statement runs on, including one that a later
    # lease, not connect(), hands out first.
    fresh_connections()
    introduced: list[int] = []

    def created(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == ALIAS:
            introduced.append(session_id())

    connection_created.connect(created)
    pool = connections[ALIAS].pool
    kept_out: list[Any] = []
    try:
        first = session_id()  # connect(): the request's first statement
        assert introduced == [first]
        kept_out.append(take_the_parked_one())  # leaves a new connection idle
        second = session_id()
        assert second != first
        assert introduced == [first, second]  # sent for the new one, before the statement
        assert in_use() == 1  # the receiver's own query did not pin the lease
        pool.release(kept_out.pop())
        # Once per connection: a lease that gets the first one back sends nothing.
        kept_out.append(take_the_parked_one())
        assert session_id() == first
        assert introduced == [first, second]
    finally:
        connection_created.disconnect(created)
        for connection in kept_out:
            pool.release(connection)
    assert in_use() == 0


def test_django_contrib_postgres_types_on_a_connection_a_lease_hands_out_first() -> None:
    wrapper = connections[ALIAS]
    if wrapper.vendor != "postgresql":
        pytest.skip("django.contrib.postgres: PostgreSQL only")
    from django.contrib.postgres.signals import (
        get_citext_oids,
        get_hstore_oids,
        register_type_handlers,
    )

    with connections["default"].cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS hstore")
    get_hstore_oids.cache_clear()
    fresh_connections()
    connection_created.connect(register_type_handlers)  # as the app's ready() does
    pool = wrapper.pool
    kept_out: list[Any] = []
    try:

        def hstore() -> Any:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 'a=>1'::hstore")
                return cursor.fetchone()[0]

        assert hstore() == {"a": "1"}
        kept_out.append(take_the_parked_one())
        # Without connection_created for the new connection, psycopg would return the text
        # '"a"=>"1"' here: HStoreField values as strings on some statements and not others.
        assert hstore() == {"a": "1"}
    finally:
        connection_created.disconnect(register_type_handlers)
        for connection in kept_out:
            pool.release(connection)
        wrapper.close()
        get_hstore_oids.cache_clear()
        get_citext_oids.cache_clear()
        with connections["default"].cursor() as cursor:
            cursor.execute("DROP EXTENSION IF EXISTS hstore")
    assert in_use() == 0


# -- pins -------------------------------------------------------------------------------------


def pins(reason: str) -> int:
    """Leases of the alias's pool pinned for ``reason`` so far (the pool outlives a test)."""
    return connections[ALIAS].pool.stats().pins.get(reason, 0)


def test_an_open_cursor_pins_until_it_closes() -> None:
    before = pins("cursor")
    cursor = connections[ALIAS].cursor()
    cursor.execute(SESSION_ID_SQL[connections[ALIAS].vendor])
    held = int(cursor.fetchone()[0])
    assert in_use() == 1
    assert session_id() == held  # another statement meanwhile: the same session
    assert in_use() == 1
    cursor.close()
    assert in_use() == 0
    cursor.close()  # closing twice counts once
    assert in_use() == 0
    assert pins("cursor") == before + 1


def test_iterator_holds_its_cursor_while_it_runs() -> None:
    accounts(5)
    sessions: set[int] = set()
    names = []
    for account in Account.objects.using(ALIAS).order_by("name").iterator(chunk_size=2):
        names.append(account.name)
        assert in_use() == 1
        sessions.add(session_id())  # a query while the iterator's cursor is open
    assert names == [f"lease-{i}" for i in range(5)]
    assert len(sessions) == 1
    assert in_use() == 0


def test_an_iterator_left_unfinished_holds_until_it_is_closed() -> None:
    accounts(5)
    iterator = Account.objects.using(ALIAS).iterator(chunk_size=2)
    next(iterator)
    assert in_use() == 1
    iterator.close()  # what dropping the last reference to it does
    assert in_use() == 0


def test_pinned_keeps_one_session_and_gives_it_back_at_its_end() -> None:
    before = pins("pinned")
    with pinned(using=ALIAS):
        first = session_id()
        with connections[ALIAS].cursor() as cursor:
            cursor.execute(
                "SET application_name = 'pinned-test'"
                if connections[ALIAS].vendor == "postgresql"
                else "SET @pinned_test = 1"
            )
        assert session_id() == first
        assert in_use() == 1
    assert in_use() == 0
    assert pins("pinned") == before + 1


def test_pinned_as_decorator_and_nested() -> None:
    @pinned(using=ALIAS)
    def two_sessions() -> tuple[int, int]:
        with pinned(using=ALIAS):
            first = session_id()
        return first, session_id()

    first, second = two_sessions()
    assert first == second
    assert in_use() == 0

    @django_dbpool.pinned
    def default_alias() -> str:
        return connections["default"].alias

    assert default_alias() == "default"


def test_pinned_refuses_coroutine_functions() -> None:
    async def view() -> None:
        pass

    with pytest.raises(TypeError, match="cannot decorate the coroutine function"):
        pinned(using=ALIAS)(view)


def test_pinned_pins_the_current_thread_only() -> None:
    ready, done = threading.Event(), threading.Event()
    other: dict[str, Any] = {}

    def elsewhere() -> None:
        try:
            ready.wait(30)
            other["sessions"] = {session_id(), session_id()}
            other["held_after"] = connections[ALIAS]._dbpool_conn is not None
        finally:
            connections[ALIAS].close()
            done.set()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    with pinned(using=ALIAS):
        mine = session_id()
        ready.set()
        assert done.wait(30)
        assert in_use() == 1  # only the pinned one
    thread.join(30)
    assert mine not in other["sessions"]  # my pinned connection was not lent out
    assert other["held_after"] is False


def test_the_raw_driver_connection_pins_until_close() -> None:
    first = session_id()
    raw = connections[ALIAS].connection  # user code takes the driver connection
    assert raw is not None
    assert in_use() == 1
    assert session_id() == first
    assert in_use() == 1
    connections[ALIAS].close()
    assert in_use() == 0
    session_id()
    assert in_use() == 0  # a new logical connection starts unpinned


# -- the safety net ---------------------------------------------------------------------------


SESSION_SQL = {
    "postgresql": [
        "SET search_path TO public",
        "  /* c */ set TIME ZONE 'UTC'",
        "CREATE TEMPORARY TABLE t (id int)",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_lock_shared(1)",
        "LISTEN channel",
        "PREPARE p AS SELECT 1",
        "BEGIN",
        "SELECT 1; SET x.y = 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    ],
    "mysql": [
        "SET @x = 1",
        "START TRANSACTION",
        "LOCK TABLES bank_account WRITE",
        "CREATE TEMPORARY TABLE t (id int)",
        "SELECT GET_LOCK('x', 1)",
        "PREPARE p FROM 'SELECT 1'",
        "/*!40101 SET NAMES utf8mb4 */",
        "(SELECT get_lock('x', 1))",
    ],
}
ORDINARY_SQL = [
    'SELECT "bank_account"."id" FROM "bank_account" WHERE "bank_account"."name" = %s',
    "INSERT INTO bank_account (name) VALUES (%s)",
    "UPDATE bank_account SET balance = 1",
    "SET LOCAL statement_timeout = 1000",
    "SET CONSTRAINTS ALL IMMEDIATE",
    "SELECT pg_advisory_xact_lock(1)",
    "SELECT clock_timestamp() FROM blocks",
    "SAVEPOINT s1",
    "ROLLBACK TO SAVEPOINT s1",
    "  SELECT 1",
]


@pytest.mark.parametrize("sql", SESSION_SQL["postgresql"] + SESSION_SQL["mysql"])
def test_the_prefix_test_finds_session_statements(sql: str) -> None:
    assert session_statement(sql)


@pytest.mark.parametrize("sql", ORDINARY_SQL)
def test_the_prefix_test_lets_ordinary_statements_through(sql: str) -> None:
    assert not session_statement(sql)


def test_a_session_statement_pins_for_the_rest_of_the_request_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    vendor = connections[ALIAS].vendor
    sql = "SET search_path TO public" if vendor == "postgresql" else "SET @lease_test = 1"
    with caplog.at_level(logging.WARNING, logger="django_dbpool"):
        with connections[ALIAS].cursor() as cursor:
            cursor.execute(sql)  # the place the warning names
        line = test_a_session_statement_pins_for_the_rest_of_the_request_and_warns_once
        first = session_id()
        assert in_use() == 1
        assert session_id() == first
        connections[ALIAS].close()
        with connections[ALIAS].cursor() as cursor:
            cursor.execute(sql)  # another place: warned too
        connections[ALIAS].close()
        for _ in range(2):
            with connections[ALIAS].cursor() as cursor:
                cursor.execute(sql)  # one place, twice: warned once
            connections[ALIAS].close()
    warnings = [r.getMessage() for r in caplog.records if "changes the session" in r.getMessage()]
    assert len(warnings) == 3
    words = " ".join(sql.split()[:4])
    code = line.__code__
    assert f"{words!r} at {code.co_filename}:{code.co_firstlineno + 7} (" in warnings[0]
    assert "django_dbpool.pinned(using='lease')" in warnings[0]
    assert in_use() == 0
    assert pins("session_sql") >= 1


def test_session_statements_inside_a_pin_or_a_transaction_are_the_callers_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    vendor = connections[ALIAS].vendor
    with caplog.at_level(logging.WARNING, logger="django_dbpool"):
        with pinned(using=ALIAS), connections[ALIAS].cursor() as cursor:
            cursor.execute("SET search_path TO public" if vendor == "postgresql" else "SET @a = 1")
        with transaction.atomic(using=ALIAS), connections[ALIAS].cursor() as cursor:
            cursor.execute(
                "SET LOCAL search_path TO public" if vendor == "postgresql" else "SET @b = 1"
            )
    assert not [r for r in caplog.records if "changes the session" in r.getMessage()]
    assert in_use() == 0


@pytest.fixture
def strict_wrapper() -> Iterator[Any]:
    """A wrapper of an alias of its own with SESSION_SQL 'error'."""
    base = connections[ALIAS]
    settings_dict = {**base.settings_dict, "POOL": {**base.settings_dict["POOL"]}}
    settings_dict["POOL"]["SESSION_SQL"] = "error"
    wrapper = type(base)(settings_dict, "lease_strict")
    try:
        yield wrapper
    finally:
        wrapper.close()
        wrapper.close_pool()


def test_session_sql_error_refuses_the_statement_before_it_runs(strict_wrapper: Any) -> None:
    with strict_wrapper.cursor() as cursor:
        with pytest.raises(django_dbpool.SessionStatementError) as info:
            cursor.execute("SET @strict = 1" if strict_wrapper.vendor == "mysql" else "LISTEN x")
        assert "django_dbpool.pinned(using='lease_strict')" in str(info.value)
        cursor.execute(SESSION_ID_SQL[strict_wrapper.vendor])  # ordinary SQL still runs
    assert strict_wrapper.pool.stats().in_use == 0


def test_a_connection_created_receiver_that_sets_the_session_is_caught(
    caplog: pytest.LogCaptureFixture,
) -> None:
    vendor = connections[ALIAS].vendor

    def set_up(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == ALIAS:
            with connection.cursor() as cursor:
                cursor.execute("SET TIME ZONE 'UTC'" if vendor == "postgresql" else "SET @c = 1")

    connection_created.connect(set_up)
    try:
        with caplog.at_level(logging.WARNING, logger="django_dbpool"):
            first = session_id()
            assert session_id() == first
            assert in_use() == 1  # held for the rest of the request, as the receiver needs
    finally:
        connection_created.disconnect(set_up)
    assert [r for r in caplog.records if "changes the session" in r.getMessage()]


# -- threads ----------------------------------------------------------------------------------


def test_eight_threads_share_two_connections_without_crossing(django_db_blocker: Any) -> None:
    """8 threads, a pool of 2: autocommit statements, transfers under select_for_update,
    and iterators. Each statement notes the server session it ran on; no session ever has
    statements of two threads in flight at once, every transaction stays on one session,
    and the total balance is unchanged."""
    vendor = connections[ALIAS].vendor
    assert connections[ALIAS].pool.options.max_size == 2
    accounts(6)
    total = sum(a.balance for a in Account.objects.using(ALIAS).all())
    lock = threading.Lock()
    in_flight: dict[int, int] = {}  # session id -> thread ident
    crossings: list[str] = []
    split_transactions: list[str] = []
    errors: list[BaseException] = []
    statements = [0]

    def session_of(wrapper: Any) -> int:
        raw = wrapper._dbpool_conn
        return int(raw.info.backend_pid if vendor == "postgresql" else raw.thread_id())

    def watch(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        wrapper = context["connection"]
        session = session_of(wrapper)
        me = threading.get_ident()
        with lock:
            other = in_flight.get(session)
            if other is not None and other != me:
                crossings.append(f"session {session}: {sql[:40]}")
            in_flight[session] = me
            statements[0] += 1
        try:
            return execute(sql, params, many, context)
        finally:
            with lock:
                in_flight.pop(session, None)

    def transfer(source: str, target: str) -> None:
        with transaction.atomic(using=ALIAS):
            seen = {session_of(connections[ALIAS])}
            rows = {
                a.name: a
                for a in Account.objects.using(ALIAS)
                .select_for_update()
                .filter(name__in=[source, target])
                .order_by("name")
            }
            seen.add(session_of(connections[ALIAS]))
            rows[source].balance -= Decimal("1.00")
            rows[target].balance += Decimal("1.00")
            rows[source].save(update_fields=["balance"])
            seen.add(session_of(connections[ALIAS]))
            rows[target].save(update_fields=["balance"])
            seen.add(session_of(connections[ALIAS]))
            if len(seen) != 1:
                split_transactions.append(f"{source}->{target}: {seen}")

    def work(n: int) -> None:
        try:
            with django_db_blocker.unblock(), connections[ALIAS].execute_wrapper(watch):
                for i in range(25):
                    kind = (n + i) % 4
                    if kind == 0:
                        Account.objects.using(ALIAS).filter(name="lease-0").exists()
                    elif kind == 1:
                        transfer(f"lease-{(n + i) % 6}", f"lease-{(n + i + 1) % 6}")
                    elif kind == 2:
                        for account in Account.objects.using(ALIAS).iterator(chunk_size=2):
                            if account.name == "lease-3":
                                Account.objects.using(ALIAS).filter(pk=account.pk).exists()
                    else:
                        Account.objects.using(ALIAS).count()
                    connections[ALIAS].close()  # the end of a "request"
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections[ALIAS].close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)  # a deadlock shows as a thread still alive
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert crossings == []
    assert split_transactions == []
    assert statements[0] > 8 * 25
    assert sum(a.balance for a in Account.objects.using(ALIAS).all()) == total
    stats = connections[ALIAS].pool.stats()
    assert stats.opened <= 2 + stats.closed_total
    assert stats.in_use == 0


# -- leak warnings, orphans, tags: per lease ---------------------------------------------------


WATCHED = "lease_watched"


def watched_wrapper() -> Any:
    """A wrapper of an alias of its own (its own pool) with transaction leases and
    LEAK_TIMEOUT 0.2 s, for the calling thread."""
    base = connections[ALIAS]
    settings_dict = {**base.settings_dict, "POOL": {**base.settings_dict["POOL"]}}
    settings_dict["POOL"]["LEAK_TIMEOUT"] = 0.2
    return type(base)(settings_dict, WATCHED)


@pytest.fixture
def watched() -> Iterator[Any]:
    wrapper = watched_wrapper()
    try:
        yield wrapper
    finally:
        wrapper.close()
        wrapper.close_pool()


def test_leak_warnings_name_the_lease_s_own_tags_and_place(
    watched: Any, caplog: pytest.LogCaptureFixture
) -> None:
    watched_wrapper = watched

    def statement() -> None:
        with watched_wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")

    with caplog.at_level(logging.WARNING, logger="django_dbpool.pool"):
        with tag(view="first"):
            statement()  # a lease of its own, given back at once: no warning
        with tag(view="report"):
            watched_wrapper.dbpool_pin()
            try:
                statement()  # the lease that stays out
                # The housekeeper counts the leak, then logs it.
                assert wait_until(
                    lambda: any("LEAK_TIMEOUT" in r.getMessage() for r in caplog.records),
                    timeout=30,
                )
            finally:
                watched_wrapper.dbpool_unpin()
    warnings = [r.getMessage() for r in caplog.records if "LEAK_TIMEOUT" in r.getMessage()]
    assert len(warnings) == 1
    assert watched_wrapper.pool.stats().leaks == 1
    assert "[view=report]" in warnings[0]
    assert f'File "{__file__}"' in warnings[0]
    assert "in statement" in warnings[0]
    assert watched_wrapper.pool.stats().in_use == 0


def test_a_lease_held_by_an_exited_thread_is_reclaimed_as_an_orphan(watched: Any) -> None:
    pools = []

    def leave_a_cursor_open() -> None:
        wrapper = watched_wrapper()
        cursor = wrapper.cursor()
        cursor.execute("SELECT 1")  # the open cursor pins the lease; the thread just ends
        pools.append(wrapper.pool)

    for _ in range(2):
        thread = threading.Thread(target=leave_a_cursor_open)
        thread.start()
        thread.join(30)
    assert pools[0] is pools[1] is watched.pool
    assert wait_until(lambda: watched.pool.stats().orphans_reclaimed == 2, timeout=30)
    # A reclaimed connection is reset (or closed) before it is idle again.
    assert wait_until(lambda: watched.pool.stats().in_use == 0, timeout=30)


def test_the_readme_s_advisory_lock_example_keeps_one_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    postgresql = connections[ALIAS].vendor == "postgresql"
    lock = "SELECT pg_advisory_lock(42)" if postgresql else "SELECT GET_LOCK('readme', 5)"
    unlock = "SELECT pg_advisory_unlock(42)" if postgresql else "SELECT RELEASE_LOCK('readme')"
    with (
        caplog.at_level(logging.WARNING, logger="django_dbpool"),
        pinned(using=ALIAS),
        connections[ALIAS].cursor() as cursor,
    ):
        cursor.execute(lock)
        Account.objects.using(ALIAS).count()  # other work meanwhile, same session
        cursor.execute(unlock)
        assert cursor.fetchone()[0] in (True, 1)  # released by the session that took it
    assert not [r for r in caplog.records if "changes the session" in r.getMessage()]
    assert in_use() == 0


def test_a_session_the_server_ended_between_leases_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django_dbpool.backends import leasing
    from tests.backends.test_pooling import raw_connection

    monkeypatch.setattr(leasing, "RECHECK_AFTER", 0.0)  # check at every lease
    first = session_id()
    parked = connections[ALIAS]._dbpool_last[0]
    with raw_connection() as conn:
        postgresql = connections[ALIAS].vendor == "postgresql"
        conn.cursor().execute(
            f"SELECT pg_terminate_backend({first})" if postgresql else f"KILL {first}"
        )
    assert wait_until(parked.dbpool_closed_by_server, timeout=30)
    second = session_id()  # no error: the next lease got a live connection
    assert second != first
    assert in_use() == 0


def test_after_a_settings_change_the_next_lease_does_not_resume_a_parked_session(
    settings: Any,
) -> None:
    wrapper = connections[ALIAS]
    if wrapper.vendor != "postgresql":
        pytest.skip("PostgreSQL only: Django sets the session time zone there")
    with wrapper.cursor() as cursor:
        cursor.execute("SHOW TIME ZONE")
        assert cursor.fetchone()[0] == "UTC"
    assert wrapper.pool.stats().parked == 1
    # A session time zone of its own from now on: Django closes the pool (ensure_timezone),
    # and with it the connection parked a moment ago, which was set up for UTC.
    settings.USE_TZ = False
    settings.TIME_ZONE = "Asia/Tokyo"
    with wrapper.cursor() as cursor:
        cursor.execute("SHOW TIME ZONE")
        assert cursor.fetchone()[0] == "Asia/Tokyo"
