"""No borrower inherits what another left in the session: a transaction begun with raw SQL,
its row locks, table locks; and a full reset (``RESET``) leaves the session as the first
connect did (issue 34)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.db import DataError, connection, connections, transaction

from example_project.bank.models import Account
from tests.backends.test_pooling import raw_connection, session_id, statements_during
from tests.test_bad_input import ALIAS, misconfigured

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "small"])
mysql_only = pytest.mark.skipif(settings.DATABASE_VENDOR != "mysql", reason="MySQL/MariaDB only")

# Raw statements that begin a transaction without going through Django. PostgreSQL reports
# every one in the transaction status; MySQL's autocommit flag shows only SET autocommit.
OPENERS = {
    "postgresql": [
        "BEGIN",
        "/* raw */ start transaction isolation level serializable",
        "BEGIN; LOCK TABLE bank_account IN EXCLUSIVE MODE",  # refuses FOR UPDATE elsewhere
    ],
    "mysql": [
        "START TRANSACTION",
        "BEGIN",
        "begin work",
        "/* raw */ -- comments\n\tstart transaction read write",
        "SET autocommit = 0",
        "XA START 'dbpool-34'",
        # Several statements in one query; and with completion_type CHAIN, a plain
        # ROLLBACK would begin the next transaction at once.
        "SET SESSION completion_type = 'CHAIN'; START TRANSACTION",
    ],
}[settings.DATABASE_VENDOR]
# True when the session is inside a transaction begun by an earlier statement.
IN_TRANSACTION_SQL = {
    # The two are equal in the first statement of a transaction.
    "postgresql": "SELECT transaction_timestamp() <> statement_timestamp()",
    "mysql": "SELECT @@in_transaction = 1",
}
LOCK_ROW_NOWAIT_SQL = "SELECT balance FROM bank_account WHERE name = 'Locked' FOR UPDATE NOWAIT"


@contextmanager
def pool_of_one(monkeypatch: pytest.MonkeyPatch, reset: bool) -> Iterator[Any]:
    """The "small" alias with one connection, so that the next borrower gets the same one
    (unless the pool closed it); the pool is closed afterwards, whatever it still holds."""
    pool = {"MAX_SIZE": 1, "TIMEOUT": 60, "VALIDATE_AFTER": 60, "RESET": reset}
    with misconfigured(monkeypatch, POOL=pool) as wrapper:
        yield wrapper


def in_transaction(wrapper: Any) -> bool:
    with wrapper.cursor() as cursor:
        cursor.execute(IN_TRANSACTION_SQL[wrapper.vendor])
        return bool(cursor.fetchone()[0])


def wait_until_session_ends(session: int) -> None:
    """Returns once the server no longer lists ``session`` (it ends asynchronously after
    the client closes); fails after a generous guard."""
    sql = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
        "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s",
    }[connection.vendor]
    deadline = time.monotonic() + 30
    with raw_connection() as conn:
        cursor = conn.cursor()
        while True:
            cursor.execute(sql, [session])
            if cursor.fetchone()[0] == 0:
                return
            assert time.monotonic() < deadline, f"session {session} never ended"
            time.sleep(0.05)


# -- item 1: a transaction begun with raw SQL ----------------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["kept-session", "reset"])
@pytest.mark.parametrize("opener", OPENERS)
def test_a_transaction_begun_with_raw_sql_is_not_inherited(
    monkeypatch: pytest.MonkeyPatch, opener: str, reset: bool
) -> None:
    Account.objects.create(name="Locked", balance=10)
    with pool_of_one(monkeypatch, reset) as wrapper:
        first = session_id(ALIAS)
        with wrapper.cursor() as cursor:
            cursor.execute(opener)
            cursor.execute("UPDATE bank_account SET balance = 99 WHERE name = 'Locked'")
            cursor.execute(
                "INSERT INTO bank_account (name, balance) VALUES (%s, %s)", ["Uncommitted", 1]
            )
        wrapper.close()  # given back with neither COMMIT nor ROLLBACK

        # The next borrower is outside any transaction and sees neither change.
        assert not in_transaction(wrapper)
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT name, balance FROM bank_account ORDER BY name")
            assert list(cursor.fetchall()) == [("Locked", Decimal("10.00"))]
        if connection.vendor == "mysql" and opener.startswith("XA") and not reset:
            # An ACTIVE XA transaction refuses ROLLBACK: the pool closed the connection.
            assert session_id(ALIAS) != first
            assert wrapper.pool.stats().closed["reset_failed"] == 1
            wait_until_session_ends(first)
        else:
            assert session_id(ALIAS) == first
            assert wrapper.pool.stats().closed["reset_failed"] == 0
        wrapper.close()

        # Seen from another session while the connection sits in the pool: the row is not
        # locked any more, and the changes were rolled back.
        with raw_connection() as conn:
            cursor = conn.cursor()
            cursor.execute(LOCK_ROW_NOWAIT_SQL)
            assert list(cursor.fetchall()) == [(Decimal("10.00"),)]
            cursor.execute("SELECT COUNT(*) FROM bank_account WHERE name = 'Uncommitted'")
            assert cursor.fetchone()[0] == 0


@mysql_only
@pytest.mark.parametrize("reset", [False, True], ids=["kept-session", "reset"])
@pytest.mark.parametrize(
    ("lock", "then"),
    [
        # Under LOCK TABLES, a session may use only the tables it locked (and those their
        # foreign keys link them to, which MariaDB locks too).
        ("LOCK TABLES bank_account WRITE", "SELECT COUNT(*) FROM auth_group"),
        # Under the global read lock, nobody may write, the holder included.
        (
            "FLUSH TABLES WITH READ LOCK",
            "INSERT INTO bank_account (name, balance) VALUES ('After', 1)",
        ),
    ],
    ids=["lock-tables", "global-read-lock"],
)
def test_table_locks_are_not_inherited(
    monkeypatch: pytest.MonkeyPatch, lock: str, then: str, reset: bool
) -> None:
    with pool_of_one(monkeypatch, reset) as wrapper:
        first = session_id(ALIAS)
        with wrapper.cursor() as cursor:
            cursor.execute(lock)  # and never UNLOCK TABLES
        wrapper.close()
        with wrapper.cursor() as cursor:
            cursor.execute(then)  # refused by the server while the lock is held
        assert session_id(ALIAS) == first
        wrapper.close()


@mysql_only
@pytest.mark.parametrize("call", ["execute", "callproc"])
def test_a_procedure_that_begins_a_transaction_is_rolled_back_on_return(
    monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    with raw_connection() as conn:
        conn.cursor().execute(
            "CREATE PROCEDURE dbpool_begin_and_insert() BEGIN START TRANSACTION;"
            " INSERT INTO bank_account (name, balance) VALUES ('Uncommitted', 1); END"
        )
    try:
        with pool_of_one(monkeypatch, reset=False) as wrapper:
            first = session_id(ALIAS)
            with wrapper.cursor() as cursor:
                if call == "execute":
                    cursor.execute("CALL dbpool_begin_and_insert()")
                else:
                    cursor.callproc("dbpool_begin_and_insert")
            wrapper.close()
            assert not in_transaction(wrapper)
            assert not Account.objects.using(ALIAS).filter(name="Uncommitted").exists()
            assert session_id(ALIAS) == first
            wrapper.close()
    finally:
        with raw_connection() as conn:
            conn.cursor().execute("DROP PROCEDURE IF EXISTS dbpool_begin_and_insert")


def test_orm_transactions_and_savepoints_cost_nothing_on_return() -> None:
    # What the ORM runs (SAVEPOINT, ROLLBACK TO SAVEPOINT, RELEASE SAVEPOINT, INSERT,
    # UPDATE, DELETE, SELECT) never marks the connection for a rollback.
    with transaction.atomic():
        Account.objects.create(name="Outer", balance=1)
        try:
            with transaction.atomic():
                Account.objects.create(name="Inner", balance=1)
                raise ValueError
        except ValueError:
            pass
        with transaction.atomic():
            Account.objects.filter(name="Outer").update(balance=2)
    Account.objects.filter(name="Outer").delete()
    assert not Account.objects.exists()
    assert statements_during(connection.close) == 0


@mysql_only
def test_a_raw_transaction_costs_one_round_trip_on_return() -> None:
    # Committed by its borrower, but only the statement text says so: the return sends
    # ROLLBACK AND NO CHAIN and UNLOCK TABLES, in one round trip.
    with connection.cursor() as cursor:
        cursor.execute("START TRANSACTION")
        cursor.execute("INSERT INTO bank_account (name, balance) VALUES ('Committed', 1)")
        cursor.execute("COMMIT")
    assert statements_during(connection.close) == 2
    assert Account.objects.filter(name="Committed").exists()
    assert statements_during(connection.close) == 0  # the mark went with the rollback


# -- item 2: RESET leaves the session as the first connect did ----------------------------------

# Session variables that change by themselves, statement by statement or at each
# COM_CHANGE_USER, whatever the setup.
VOLATILE_VARIABLES = {"timestamp", "rand_seed1", "rand_seed2"}


@contextmanager
def global_sql_mode(mode: str) -> Iterator[None]:
    """The server's global sql_mode set to ``mode`` (what new sessions start with) for the
    block, then restored."""
    with raw_connection() as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT @@GLOBAL.sql_mode")
        previous = cursor.fetchone()[0]
        cursor.execute("SET GLOBAL sql_mode = %s", [mode])
        try:
            yield
        finally:
            cursor.execute("SET GLOBAL sql_mode = %s", [previous])


def session_variables(wrapper: Any) -> tuple[int, dict[str, str]]:
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        session = int(cursor.fetchone()[0])
        cursor.execute("SHOW SESSION VARIABLES")
        variables = dict(cursor.fetchall())
    return session, {k: v for k, v in variables.items() if k not in VOLATILE_VARIABLES}


@mysql_only
@pytest.mark.parametrize("strict_in", ["init_command", "sql_mode"])
def test_reset_sets_the_session_up_as_the_first_connect_did(
    monkeypatch: pytest.MonkeyPatch, strict_in: str
) -> None:
    strict = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION"
    options = {
        **connections[ALIAS].settings_dict["OPTIONS"],
        # A variable of our own, and the strict mode Django's check mysql.W002 asks for:
        # in init_command, or in mysqlclient's own sql_mode option.
        "init_command": "SET SESSION group_concat_max_len = 4321",
        "charset": "latin1",
        "collation": "latin1_general_cs",  # not latin1's default collation
        "isolation_level": "serializable",
    }
    if strict_in == "init_command":
        options["init_command"] = f"SET SESSION sql_mode = '{strict}', group_concat_max_len = 4321"
    else:
        options["sql_mode"] = strict
    pool = {"MAX_SIZE": 1, "TIMEOUT": 60, "VALIDATE_AFTER": 60, "RESET": True}
    with (
        global_sql_mode("NO_ENGINE_SUBSTITUTION"),  # not strict: too long values are cut
        misconfigured(monkeypatch, OPTIONS=options, POOL=pool) as wrapper,
    ):
        first_session, first = session_variables(wrapper)
        wrapper.close()  # returned: COM_CHANGE_USER, then the setup again
        session, again = session_variables(wrapper)
        assert session == first_session  # the same physical connection, reset

        assert first["sql_mode"] == strict  # set at connect
        assert first["group_concat_max_len"] == "4321"
        assert first["collation_connection"] == "latin1_general_cs"
        assert first["character_set_client"] == "latin1"
        assert first["tx_isolation"] == "SERIALIZABLE"
        assert first["sql_auto_is_null"] == "OFF"
        assert first["autocommit"] == "ON"
        assert {k: (v, again.get(k)) for k, v in first.items() if again.get(k) != v} == {}
        assert again.keys() == first.keys()

        # And so the strict sql_mode still refuses what the global one would cut.
        with pytest.raises(DataError):
            Account.objects.using(ALIAS).create(name="x" * 101, balance=1)
        wrapper.close()
