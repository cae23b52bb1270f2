"""Behind a real PgBouncer in transaction pooling mode: the documented settings work, and the
system check catches each setting that breaks there (each shown breaking for real).

PgBouncer runs in front of the suite's PostgreSQL (DBPOOL_TEST_POSTGRES_URL) with at most
two server connections, so that clients visibly share them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import environ
import psycopg
import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import Error, connections, transaction
from django.db.utils import ConnectionHandler
from django.test import override_settings

from django_dbpool.backends.connect_errors import AUTH_HINT
from django_dbpool.checks import check_configuration, check_deployment, check_pgbouncer
from django_dbpool.options import alias_options
from django_dbpool.pool import PoolUnavailable
from django_dbpool.pool.errors import ConnectFailed
from django_dbpool.tagging import application_name
from tests.test_dbservers import pg_params
from tools import dbservers

# The checks read settings.DATABASES only; overriding it is what they are about.
pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")

PG = "django_dbpool.backends.postgresql"
MY = "django_dbpool.backends.mysql"
SERVER_POOL_SIZE = 2
TABLE = f"pgbouncer_probe_{os.getpid()}"


@pytest.fixture(autouse=True)
def database_access(django_db_blocker: Any) -> Iterator[None]:
    # Connections of the tests' own, through PgBouncer to the server's real database: not
    # the test database, and from threads of their own, so not through a Django TestCase.
    with django_db_blocker.unblock():
        yield


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get(dbservers.POSTGRES_URL_VAR)
    if not url:
        pytest.fail(f"{dbservers.POSTGRES_URL_VAR} is not set: run through tools/dbservers.py")
    return url


@pytest.fixture(scope="module")
def bouncer(postgres_url: str) -> Iterator[dbservers.PgBouncerServer]:
    with dbservers.pgbouncer(postgres_url, pool_size=SERVER_POOL_SIZE) as server:
        yield server


@pytest.fixture
def fresh_bouncer(postgres_url: str) -> Iterator[dbservers.PgBouncerServer]:
    """A PgBouncer of its own, for tests that leave its server connections in a bad state."""
    with dbservers.pgbouncer(postgres_url, pool_size=SERVER_POOL_SIZE) as server:
        yield server


@pytest.fixture(scope="module")
def table(postgres_url: str) -> Iterator[str]:
    with psycopg.connect(**pg_params(postgres_url), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, label text NOT NULL)")
        try:
            yield TABLE
        finally:
            conn.execute(f"DROP TABLE {TABLE}")


def documented(url: str, **overrides: Any) -> dict[str, Any]:
    """An alias with the settings the README documents for transaction pooling."""
    config = environ.Env.db_url_config(url, engine=PG)
    config["POOL"] = {"PGBOUNCER": "transaction", "MAX_SIZE": 4, "TIMEOUT": 10}
    config["DISABLE_SERVER_SIDE_CURSORS"] = True
    config.update(overrides)
    return config


@contextmanager
def through(config: dict[str, Any]) -> Iterator[ConnectionHandler]:
    """Django's ``connections`` with the alias "pgbouncer" added (one wrapper per thread,
    one shared pool), so that ``transaction.atomic(using="pgbouncer")`` works."""
    connections.settings["pgbouncer"] = ConnectionHandler(
        {"default": dict(config), "pgbouncer": config}
    ).settings["pgbouncer"]
    try:
        yield connections
    finally:
        connections["pgbouncer"].close()
        connections["pgbouncer"].close_pool()
        del connections["pgbouncer"]
        del connections.settings["pgbouncer"]


@contextmanager
def other_client(server: dbservers.PgBouncerServer) -> Iterator[psycopg.Connection[Any]]:
    """Another application's connection through the same PgBouncer."""
    with psycopg.connect(**pg_params(server.url), autocommit=True) as conn:
        yield conn


def one_value(wrapper: Any, sql: str, params: list[Any] | None = None) -> Any:
    with wrapper.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def only(messages: list[checks.CheckMessage]) -> checks.CheckMessage:
    assert len(messages) == 1, messages
    return messages[0]


# --- the documented settings work ------------------------------------------------------------


def test_documented_settings_pass_every_check(bouncer: dbservers.PgBouncerServer) -> None:
    config = documented(bouncer.url)
    assert alias_options("default", config).pgbouncer == "transaction"
    with override_settings(DATABASES={"default": config}):
        assert check_configuration() == []
        assert check_pgbouncer() == []
        # TLS verified up to PgBouncer, and a password: nothing for --deploy either.
        assert check_deployment() == []


def test_database_check_connects_through_pgbouncer(
    bouncer: dbservers.PgBouncerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's max_connections is not the limit behind PgBouncer: no W004, however
    # many workers.
    monkeypatch.setenv("WEB_CONCURRENCY", "100000")
    config = documented(bouncer.url)
    with through(config), override_settings(DATABASES={"pgbouncer": config}):
        assert check_configuration(databases=["pgbouncer"]) == []
        config["POOL"]["PGBOUNCER"] = None
        assert only(check_configuration(databases=["pgbouncer"])).id == "django_dbpool.W004"


def test_wrong_password_through_pgbouncer_says_to_check_the_password(
    bouncer: dbservers.PgBouncerServer,
) -> None:
    # PgBouncer checks the password itself (SCRAM) and words the failure its own way.
    config = documented(bouncer.url, PASSWORD="Wrong-Pa55word-9f3a1c")
    config["POOL"].update({"TIMEOUT": 30, "FAIL_FAST_AFTER": 1})
    with through(config) as handler, pytest.raises(PoolUnavailable) as info:
        handler["pgbouncer"].ensure_connection()
    failed = info.value.__cause__
    assert isinstance(failed, ConnectFailed)
    assert str(failed) == (
        f"DATABASES['pgbouncer']: cannot connect to 127.0.0.1:{bouncer.port} as USER "
        f"'{config['USER']}': SASL authentication failed. {AUTH_HINT}"
    )


def test_queries_and_transactions_through_pgbouncer(
    bouncer: dbservers.PgBouncerServer, table: str
) -> None:
    with through(documented(bouncer.url)) as handler:
        wrapper = handler["pgbouncer"]
        assert one_value(wrapper, "SELECT 1") == 1
        assert wrapper.connection.info.port == bouncer.port

        def insert(label: str) -> None:
            with wrapper.cursor() as cursor:
                cursor.execute(f"INSERT INTO {table} (label) VALUES (%s)", [label])

        def insert_then_fail(label: str) -> None:
            with transaction.atomic(using="pgbouncer"):
                insert(label)
                raise RuntimeError

        with transaction.atomic(using="pgbouncer"):
            insert("committed")
        with pytest.raises(RuntimeError):
            insert_then_fail("rolled back")
        with transaction.atomic(using="pgbouncer"):
            insert("outer")
            with pytest.raises(RuntimeError):
                insert_then_fail("savepoint")  # a savepoint, rolled back alone
        # Chunked reads outside a transaction: a plain cursor, not a server-side one.
        with wrapper.chunked_cursor() as cursor:
            cursor.execute(f"SELECT label FROM {table} ORDER BY id")
            labels = [row[0] for row in cursor.fetchall()]
        assert labels == ["committed", "outer"]
        wrapper.close()  # back to the pool: the next checkout reuses it
        assert one_value(wrapper, "SELECT 2") == 2
        assert wrapper.pool.stats().opened == 1


def test_validation_probes_pass_through_pgbouncer(bouncer: dbservers.PgBouncerServer) -> None:
    # VALIDATE_AFTER 0: every checkout probes (an empty query) before handing out.
    config = documented(bouncer.url)
    config["POOL"]["VALIDATE_AFTER"] = 0
    with through(config) as handler:
        wrapper = handler["pgbouncer"]
        for i in range(5):
            assert one_value(wrapper, "SELECT %s", [i]) == i
            wrapper.close()
        stats = wrapper.pool.stats()
        assert stats.validations == 4  # every checkout but the first, which opened it
        assert stats.validations_failed == 0
        assert stats.opened == 1


def test_concurrent_threads_share_pgbouncers_few_server_connections(
    bouncer: dbservers.PgBouncerServer, table: str
) -> None:
    threads_count, rounds = 8, 15
    backends: set[int] = set()
    errors: list[BaseException] = []
    with through(documented(bouncer.url)) as handler:

        def work(number: int) -> None:
            try:
                for i in range(rounds):
                    with (
                        transaction.atomic(using="pgbouncer"),
                        handler["pgbouncer"].cursor() as cursor,
                    ):
                        cursor.execute(
                            f"INSERT INTO {table} (label) VALUES (%s)", [f"t{number}-{i}"]
                        )
                        cursor.execute("SELECT pg_backend_pid()")
                        backends.add(cursor.fetchone()[0])
                    handler["pgbouncer"].close()
            except BaseException as exc:
                errors.append(exc)
                handler["pgbouncer"].close()

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert not any(worker.is_alive() for worker in workers)
        assert errors == []
        stats = handler["pgbouncer"].pool.stats()
        count = one_value(handler["pgbouncer"], f"SELECT count(*) FROM {table} WHERE label ~ '^t'")
    assert count == threads_count * rounds
    # At most MAX_SIZE client connections in this process, and at most PgBouncer's pool
    # size on the server, shared by them.
    assert 1 <= stats.opened <= 4
    assert 1 <= len(backends) <= SERVER_POOL_SIZE


SESSION_SQL = (
    "SELECT current_setting('TimeZone'), current_setting('application_name'), pg_backend_pid()"
)


def test_session_time_zone_and_tag_survive_transaction_pooling(
    bouncer: dbservers.PgBouncerServer,
) -> None:
    # Django sets the alias's time zone once per connection, and the process tag is a
    # startup parameter; PgBouncer re-applies both on whichever server connection serves
    # the next transaction, while another client with other values shares them.
    with through(documented(bouncer.url, TIME_ZONE="Asia/Tokyo")) as handler:
        wrapper = handler["pgbouncer"]
        with psycopg.connect(
            **pg_params(bouncer.url), autocommit=True, application_name="other-app"
        ) as other:
            other.execute("SET TIME ZONE 'America/New_York'")
            mine: set[int] = set()
            theirs: set[int] = set()
            for _ in range(10):
                with wrapper.cursor() as cursor:
                    cursor.execute(SESSION_SQL)
                    zone, name, pid = cursor.fetchone()
                assert (zone, name) == ("Asia/Tokyo", application_name("pgbouncer"))
                mine.add(pid)
                zone, name, pid = other.execute(SESSION_SQL).fetchone()
                assert (zone, name) == ("America/New_York", "other-app")
                theirs.add(pid)
    assert mine & theirs, "the two clients never shared a server connection"


# --- the check catches each breaking setting ------------------------------------------------


DECLARED = "DATABASES['default'] declares PgBouncer transaction pooling"


def check_of(config: dict[str, Any]) -> checks.CheckMessage:
    with override_settings(DATABASES={"default": config}):
        return only(check_pgbouncer())


def test_e005_server_side_cursors_left_on(bouncer: dbservers.PgBouncerServer) -> None:
    config = documented(bouncer.url)
    del config["DISABLE_SERVER_SIDE_CURSORS"]
    message = check_of(config)
    assert isinstance(message, checks.Error)
    assert message.id == "django_dbpool.E005"
    assert message.msg == (
        f"{DECLARED} but leaves server-side cursors on: QuerySet.iterator() outside a "
        "transaction declares a cursor WITH HOLD on one server connection and fetches from "
        "whichever one PgBouncer assigns next (cursor does not exist)."
    )
    assert message.hint == "Set DATABASES[...]['DISABLE_SERVER_SIDE_CURSORS'] = True."
    with override_settings(DATABASES={"default": {**config, "DISABLE_SERVER_SIDE_CURSORS": 0}}):
        assert only(check_pgbouncer()).id == "django_dbpool.E005"


def test_server_side_cursors_break_behind_pgbouncer(
    fresh_bouncer: dbservers.PgBouncerServer,
) -> None:
    config = documented(fresh_bouncer.url, DISABLE_SERVER_SIDE_CURSORS=False)
    with (
        through(config) as handler,
        other_client(fresh_bouncer) as other,
        handler["pgbouncer"].chunked_cursor() as cursor,
    ):
        cursor.execute("SELECT generate_series(1, 10)")
        assert cursor.fetchmany(2) == [(1,), (2,)]
        # Another client's transaction takes the server connection the cursor is on.
        with other.transaction():
            other.execute("SELECT 1")
            with pytest.raises(Error, match="does not exist"):
                cursor.fetchmany(2)


def test_e006_assume_role(bouncer: dbservers.PgBouncerServer) -> None:
    config = documented(bouncer.url)
    config["OPTIONS"]["assume_role"] = "app_owner"
    message = check_of(config)
    assert isinstance(message, checks.Error)
    assert message.id == "django_dbpool.E006"
    assert message.msg == (
        f"{DECLARED} and sets OPTIONS['assume_role']: Django runs SET ROLE once per "
        "connection, which holds on one server connection only. Later transactions may run "
        "as the login user, and other clients given that server connection run as the role."
    )
    assert message.hint == (
        "Remove OPTIONS['assume_role'] and log in as that role: set USER and PASSWORD (and "
        "PgBouncer's user list) to it."
    )


def test_assume_role_leaks_to_other_clients_behind_pgbouncer(
    postgres_url: str, fresh_bouncer: dbservers.PgBouncerServer
) -> None:
    role = f"pgbouncer_role_{os.getpid()}"
    with psycopg.connect(**pg_params(postgres_url), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} NOLOGIN")
        try:
            config = documented(fresh_bouncer.url)
            config["OPTIONS"]["assume_role"] = role
            with through(config) as handler, other_client(fresh_bouncer) as other:
                login_user = other.execute("SELECT current_user").fetchone()[0]
                # The connect ran SET ROLE on the server connection most recently used.
                handler["pgbouncer"].ensure_connection()
                with other.transaction():
                    # The other client got that server connection, and the role with it...
                    assert other.execute("SELECT current_user").fetchone()[0] == role
                    # ... while the alias's next statement runs as the login user.
                    assert one_value(handler["pgbouncer"], "SELECT current_user") == login_user
        finally:
            admin.execute(f"DROP ROLE {role}")


def test_w005_prepared_statements(bouncer: dbservers.PgBouncerServer) -> None:
    config = documented(bouncer.url)
    config["OPTIONS"].update(server_side_binding=True, prepare_threshold=0)
    message = check_of(config)
    assert isinstance(message, checks.Warning)
    assert message.id == "django_dbpool.W005"
    assert message.msg == (
        f"{DECLARED} and sets OPTIONS['prepare_threshold']=0 with "
        "OPTIONS['server_side_binding']=True: psycopg prepares statements on one server "
        "connection and runs them on whichever one PgBouncer assigns next (prepared "
        "statement does not exist)."
    )
    assert message.hint == (
        "Remove OPTIONS['prepare_threshold'] (Django's default, None, turns prepared "
        "statements off). PgBouncer 1.21+ with max_prepared_statements > 0 tracks them; if "
        "yours does, silence django_dbpool.W005."
    )
    # Without server-side binding nothing is prepared (see the next test); without a
    # threshold, nothing either.
    for options in ({"prepare_threshold": 0}, {"server_side_binding": True}):
        with override_settings(DATABASES={"default": documented(bouncer.url, OPTIONS=options)}):
            assert check_pgbouncer() == []


def test_client_side_binding_never_prepares_behind_pgbouncer(
    fresh_bouncer: dbservers.PgBouncerServer,
) -> None:
    config = documented(fresh_bouncer.url)
    config["OPTIONS"]["prepare_threshold"] = 0  # inert with Django's default cursors
    with through(config) as handler, other_client(fresh_bouncer) as other:
        wrapper = handler["pgbouncer"]
        assert one_value(wrapper, "SELECT %s::int + 1", [1]) == 2
        with other.transaction():
            other.execute("SELECT 1")
            assert one_value(wrapper, "SELECT %s::int + 1", [2]) == 3


def test_prepared_statements_break_behind_pgbouncer(
    fresh_bouncer: dbservers.PgBouncerServer,
) -> None:
    config = documented(fresh_bouncer.url)
    # Server-side binding (client-side binding never prepares), every statement prepared.
    config["OPTIONS"].update(server_side_binding=True, prepare_threshold=0)
    with through(config) as handler, other_client(fresh_bouncer) as other:
        wrapper = handler["pgbouncer"]
        assert one_value(wrapper, "SELECT %s::int + 1", [1]) == 2
        with other.transaction():
            other.execute("SELECT 1")  # holds the server connection it was prepared on
            with pytest.raises(Error, match=r"prepared statement .* does not exist"):
                one_value(wrapper, "SELECT %s::int + 1", [2])


def test_w006_reset(bouncer: dbservers.PgBouncerServer) -> None:
    config = documented(bouncer.url)
    config["POOL"]["RESET"] = True
    message = check_of(config)
    assert isinstance(message, checks.Warning)
    assert message.id == "django_dbpool.W006"
    assert message.msg == (
        f"{DECLARED} and sets POOL['RESET']=True: DISCARD ALL then resets whichever server "
        "connection PgBouncer assigns to it, not the ones earlier transactions left session "
        "state on, and costs round trips every request."
    )
    assert message.hint == (
        "Remove RESET from DATABASES[...]['POOL']; under transaction pooling, keep session "
        "settings inside transactions (SET LOCAL)."
    )


def test_w007_options_startup_parameter(bouncer: dbservers.PgBouncerServer) -> None:
    config = documented(bouncer.url)
    config["OPTIONS"]["options"] = "-c statement_timeout=5000"
    message = check_of(config)
    assert isinstance(message, checks.Warning)
    assert message.id == "django_dbpool.W007"
    assert message.msg == (
        f"{DECLARED} and sets OPTIONS['options']='-c statement_timeout=5000': PgBouncer "
        "rejects this startup parameter (unsupported startup parameter: options) unless it "
        "only sets parameters PgBouncer tracks (1.20+), or drops it when listed in "
        "ignore_startup_parameters; the settings never reach PostgreSQL."
    )
    assert message.hint == (
        "Set them on the server for the user or database instead (ALTER ROLE ... SET name "
        "= value), or per transaction with SET LOCAL."
    )
    # What Debian's PgBouncer does with it.
    params = {**pg_params(bouncer.url), "options": "-c statement_timeout=5000"}
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        psycopg.connect(**params).close()


def test_every_breaking_setting_at_once_and_only_in_transaction_mode(
    bouncer: dbservers.PgBouncerServer,
) -> None:
    config = documented(bouncer.url, DISABLE_SERVER_SIDE_CURSORS=False)
    config["POOL"]["RESET"] = True
    config["OPTIONS"].update(
        assume_role="app_owner",
        server_side_binding=True,
        prepare_threshold=5,
        options="-c work_mem=64MB",
    )
    with override_settings(DATABASES={"default": config}):
        ids = sorted(message.id for message in check_pgbouncer())
    assert ids == [f"django_dbpool.{n}" for n in ("E005", "E006", "W005", "W006", "W007")]
    # Session pooling, or no PgBouncer declared: session state holds, nothing to report.
    for pgbouncer in ("session", None):
        config["POOL"]["PGBOUNCER"] = pgbouncer
        with override_settings(DATABASES={"default": config}):
            assert check_pgbouncer() == []


# --- the declaration ---------------------------------------------------------------------------


def test_declaration_from_a_url_query_parameter() -> None:
    config = environ.Env.db_url_config(
        "pgpool://app:pw@db.internal:6432/app?pool_pgbouncer=transaction"
    )
    assert alias_options("default", config).pgbouncer == "transaction"
    assert "pool_pgbouncer" not in handler_params(config)


def handler_params(config: dict[str, Any]) -> dict[str, Any]:
    handler = ConnectionHandler({"default": config})
    params: dict[str, Any] = handler["default"].get_connection_params()
    return params


@pytest.mark.parametrize("value", ["statement", "yes", True])
def test_declaration_accepts_only_pgbouncer_pool_modes(value: object) -> None:
    config = {"POOL": {"PGBOUNCER": value}}
    with pytest.raises(ImproperlyConfigured) as raised:
        alias_options("default", config)
    assert str(raised.value) == (
        f"DATABASES['default']: POOL option PGBOUNCER={value!r} is invalid; expected "
        "'transaction' or 'session' (PgBouncer's pool_mode), or None."
    )


def test_declaration_on_a_mysql_alias_is_an_error() -> None:
    databases = {
        "default": {"ENGINE": MY, "NAME": "app", "POOL": {"PGBOUNCER": "transaction"}},
    }
    with override_settings(DATABASES=databases):
        message = only(check_pgbouncer())
    assert message.id == "django_dbpool.E009"
    assert message.msg == (
        "DATABASES['default']: POOL option PGBOUNCER='transaction' is for PostgreSQL aliases "
        "only; this alias uses django_dbpool.backends.mysql."
    )
    assert message.hint == "Remove PGBOUNCER from DATABASES[...]['POOL']."
