"""POOL settings, OPTIONS pool_* keys and the pgpool:// / mysqlpool:// URL forms."""

from __future__ import annotations

from typing import Any

import environ
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.utils import ConnectionHandler

import django_dbpool  # noqa: F401 - registers the URL schemes
from django_dbpool.backends.mysql.base import DatabaseClient
from django_dbpool.backends.mysql.support import support as mysql_support
from django_dbpool.options import (
    TcpTimeouts,
    alias_options,
    driver_options,
)
from django_dbpool.pool import PoolConfigError, PoolOptions


def test_pool_dict_and_url_parameters_are_merged_and_cast() -> None:
    options = alias_options(
        "default",
        {
            "POOL": {"MAX_SIZE": 20, "MIN_SIZE": 2},
            "OPTIONS": {"pool_timeout": "2.5", "pool_max_waiting": "7", "pool_reset": "true"},
        },
    )
    assert options.pool.max_size == 20
    assert options.pool.min_size == 2
    assert options.pool.timeout == 2.5
    assert options.pool.max_waiting == 7
    assert options.reset is True
    assert alias_options("default", {}).pool.max_size == 10  # the defaults


@pytest.mark.parametrize(
    ("settings_dict", "message"),
    [
        (
            {"POOL": {"MAX_SIZE": 0}},
            "DATABASES['db']: POOL option MAX_SIZE=0 is invalid; expected an integer >= 1.",
        ),
        (
            {"POOL": {"MIN_SIZE": 5, "MAX_SIZE": 2}},
            "DATABASES['db']: POOL option MIN_SIZE=5 is invalid; expected an integer between 0 and "
            "MAX_SIZE (2).",
        ),
        (
            {"POOL": {"max_size": 3}},
            "DATABASES['db']: Unknown POOL option 'max_size'. Option names are upper case: "
            "did you mean 'MAX_SIZE'?",
        ),
        (
            {"OPTIONS": {"pool_timeout": "soon"}},
            "DATABASES['db']: OPTIONS['pool_timeout']='soon' is not a number of seconds (it "
            "sets the pool option TIMEOUT).",
        ),
        (
            {"OPTIONS": {"pool_max_size": "ten"}},
            "DATABASES['db']: OPTIONS['pool_max_size']='ten' is not an integer (it sets the "
            "pool option MAX_SIZE).",
        ),
        (
            {"OPTIONS": {"pool_reset": "maybe"}},
            "DATABASES['db']: OPTIONS['pool_reset']='maybe' is not a boolean (true/false, "
            "1/0, yes/no, on/off).",
        ),
        (
            {"POOL": {"RESET": "yes"}},
            "DATABASES['db']: POOL option RESET='yes' is invalid; expected True or False.",
        ),
        (
            {"POOL": {"TIMEOUT": 5}, "OPTIONS": {"pool_timeout": 3}},
            "DATABASES['db'] sets the pool option TIMEOUT twice: in POOL (5) and as "
            "OPTIONS['pool_timeout'] (3). Keep one of them.",
        ),
        (
            {"POOL": 10},
            "DATABASES['db']['POOL'] must be a dict of pool options such as "
            "{'MAX_SIZE': 10}, not int 10.",
        ),
    ],
)
def test_bad_options_name_the_alias_the_key_and_what_is_accepted(
    settings_dict: dict[str, object], message: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        alias_options("db", settings_dict)
    assert str(info.value).startswith(message)


KNOWN = (
    "Known options: BACKOFF_MAX, CONNECT_TIMEOUT, DRAIN_TIMEOUT, FAIL_FAST_AFTER, KEEPALIVE, "
    "LEAK_TIMEOUT, LEASE, MAX_IDLE, MAX_LIFETIME, MAX_SIZE, MAX_WAITING, MIN_SIZE, "
    "NETWORK_TIMEOUT, PGBOUNCER, RESET, SESSION_SQL, TIMEOUT, VALIDATE_AFTER."
)
URL_SPELLING = (
    "URL parameters are the option names in lower case with the pool_ prefix, as in pool_max_size."
)


@pytest.mark.parametrize(
    ("settings_dict", "message"),
    [
        (
            {"POOL": {"MAX_SZIE": 3}},
            f"DATABASES['db']: Unknown POOL option 'MAX_SZIE'. Did you mean 'MAX_SIZE'? {KNOWN}",
        ),
        (
            {"POOL": {"max_szie": 3}},
            f"DATABASES['db']: Unknown POOL option 'max_szie'. Did you mean 'MAX_SIZE'? {KNOWN}",
        ),
        (
            {"POOL": {"TIMOUT": 3}},
            f"DATABASES['db']: Unknown POOL option 'TIMOUT'. Did you mean 'TIMEOUT'? {KNOWN}",
        ),
        # The backend's own options are suggested too.
        (
            {"POOL": {"RESETT": True}},
            f"DATABASES['db']: Unknown POOL option 'RESETT'. Did you mean 'RESET'? {KNOWN}",
        ),
        (
            {"POOL": {"PG_BOUNCER": "transaction"}},
            f"DATABASES['db']: Unknown POOL option 'PG_BOUNCER'. Did you mean 'PGBOUNCER'? {KNOWN}",
        ),
        # In the database URL's spelling when it came from there.
        (
            {"OPTIONS": {"pool_max_szie": "3"}},
            "DATABASES['db']: Unknown POOL option 'MAX_SZIE'. Did you mean pool_max_size? "
            f"{KNOWN} It was set by OPTIONS['pool_max_szie'], the pool_max_szie parameter of "
            f"the database URL. {URL_SPELLING}",
        ),
        # An unknown URL parameter is unknown, whatever its value.
        (
            {"OPTIONS": {"pool_size": "abc"}},
            f"DATABASES['db']: Unknown POOL option 'SIZE'. {KNOWN} It was set by "
            "OPTIONS['pool_size'], the pool_size parameter of the database URL. "
            f"{URL_SPELLING}",
        ),
        # Another option's name, not a typo: no guess.
        (
            {"POOL": {"IDLE_TIMEOUT": 60}},
            f"DATABASES['db']: Unknown POOL option 'IDLE_TIMEOUT'. {KNOWN}",
        ),
        (
            {"POOL": {"SIZE": 3}},
            f"DATABASES['db']: Unknown POOL option 'SIZE'. {KNOWN}",
        ),
    ],
)
def test_unknown_option_gets_a_suggestion_for_a_close_typo(
    settings_dict: dict[str, object], message: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        alias_options("db", settings_dict)
    assert str(info.value) == message


def test_the_pool_core_suggests_its_own_options() -> None:
    with pytest.raises(PoolConfigError) as info:
        PoolOptions.from_mapping({"MAX_SZIE": 3})
    assert str(info.value).startswith(
        "Unknown POOL option 'MAX_SZIE'. Did you mean 'MAX_SIZE'? Known options: BACKOFF_MAX, "
    )


def test_unknown_key_lists_the_known_options() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"Unknown POOL option 'SIZE'") as info:
        alias_options("db", {"OPTIONS": {"pool_size": 3}})
    assert "MAX_SIZE" in str(info.value)
    assert "DRAIN_TIMEOUT" in str(info.value)


def test_url_schemes_select_the_pooled_engines() -> None:
    pg = environ.Env.db_url_config(
        "pgpool://app:s3cret@db.internal:5432/app?sslmode=verify-full&pool_max_size=10"
        "&pool_timeout=5"
    )
    assert pg["ENGINE"] == "django_dbpool.backends.postgresql"
    assert (pg["HOST"], pg["PORT"], pg["NAME"]) == ("db.internal", 5432, "app")
    assert alias_options("default", pg).pool.max_size == 10
    assert driver_options(pg["OPTIONS"]) == {"sslmode": "verify-full"}
    my = environ.Env.db_url_config("mysqlpool://app:pw@db.internal/app?pool_min_size=1")
    assert my["ENGINE"] == "django_dbpool.backends.mysql"
    assert alias_options("default", my).pool.min_size == 1


@pytest.mark.django_db
def test_url_form_connects_and_pool_keys_never_reach_the_driver() -> None:
    scheme = {"postgresql": "pgpool", "mysql": "mysqlpool"}[connection.vendor]
    from django.conf import settings

    url = settings.DATABASE_URL.split("://", 1)[1]
    separator = "&" if "?" in url else "?"
    config = environ.Env.db_url_config(f"{scheme}://{url}{separator}pool_max_size=3&pool_timeout=4")
    handler = ConnectionHandler({"default": dict(config), "urlform": config})
    wrapper = handler["urlform"]
    try:
        assert not any(key.startswith("pool_") for key in wrapper.get_connection_params())
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone()[0] == 1
        assert wrapper.pool.options.max_size == 3
        assert wrapper.pool.options.timeout == 4.0
    finally:
        wrapper.close()
        wrapper.close_pool()


def test_flat_mysql_tls_keys_go_into_the_ssl_dict() -> None:
    # A database URL's ?ssl_mode=VERIFY_IDENTITY&ssl_ca=... (and MySQL's own ssl-ca spelling).
    config = environ.Env.db_url_config(
        "mysqlpool://app:pw@db:3306/app?ssl_mode=VERIFY_IDENTITY&ssl_ca=/ca.pem"
        "&ssl-cert=/client.pem&ssl_key=/client.key&charset=utf8mb4"
    )
    assert mysql_support.driver_options("db", config["OPTIONS"]) == {
        "ssl_mode": "VERIFY_IDENTITY",
        "ssl": {"ca": "/ca.pem", "cert": "/client.pem", "key": "/client.key"},
        "charset": "utf8mb4",
    }
    # Flat keys and the dict combine; without flat keys, nothing changes.
    assert mysql_support.driver_options("db", {"ssl": {"ca": "/ca.pem"}, "ssl_cipher": "X"}) == {
        "ssl": {"ca": "/ca.pem", "cipher": "X"}
    }
    options = {"ssl_mode": "REQUIRED", "ssl": {"ca": "/ca.pem"}, "ssl_other": 1}
    assert mysql_support.driver_options("db", options) == options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"ssl": {"ca": "/a.pem"}, "ssl_ca": "/b.pem"},
            "DATABASES['db'] sets the TLS option ca twice: in OPTIONS['ssl'] ('/a.pem') and as "
            "OPTIONS['ssl_ca'] ('/b.pem'). Keep one of them.",
        ),
        (
            {"ssl_ca": "/a.pem", "ssl-ca": "/b.pem"},
            "DATABASES['db'] sets the TLS option ca twice: as OPTIONS['ssl_ca'] and as "
            "OPTIONS['ssl-ca']. Keep one of them.",
        ),
        (
            {"ssl": "/a.pem", "ssl_key": "/k.pem"},
            "DATABASES['db']: OPTIONS['ssl'] must be a dict such as {'ca': '/path/to/ca.pem'}, "
            "not str '/a.pem'.",
        ),
    ],
)
def test_conflicting_mysql_tls_keys(options: dict[str, object], message: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        mysql_support.driver_options("db", options)
    assert str(info.value) == message


def test_dbshell_gets_the_tls_files_of_flat_keys() -> None:
    settings_dict = {
        "NAME": "app",
        "USER": "app",
        "PASSWORD": "pw",
        "HOST": "db",
        "PORT": 3306,
        "OPTIONS": {"ssl_mode": "VERIFY_IDENTITY", "ssl_ca": "/ca.pem", "ssl_cert": "/c.pem"},
    }
    args, _ = DatabaseClient.settings_to_cmd_args_env(settings_dict, [])
    assert "--ssl-ca=/ca.pem" in args
    assert "--ssl-cert=/c.pem" in args


# -- CONNECT_TIMEOUT and NETWORK_TIMEOUT: driver settings the backends apply -----------------


def test_timeouts_have_defaults_and_come_from_pool_or_the_url() -> None:
    defaults = alias_options("db", {})
    assert (defaults.connect_timeout, defaults.network_timeout) == (10, 30.0)
    options = alias_options(
        "db", {"POOL": {"CONNECT_TIMEOUT": 3}, "OPTIONS": {"pool_network_timeout": "2.5"}}
    )
    assert (options.connect_timeout, options.network_timeout) == (3, 2.5)
    assert alias_options("db", {"OPTIONS": {"pool_connect_timeout": "4"}}).connect_timeout == 4
    off = alias_options("db", {"POOL": {"CONNECT_TIMEOUT": 0, "NETWORK_TIMEOUT": 0}})
    assert (off.connect_timeout, off.tcp_timeouts) == (0, None)


def test_the_pool_core_does_not_take_the_driver_timeouts() -> None:
    for name in ("CONNECT_TIMEOUT", "NETWORK_TIMEOUT"):
        with pytest.raises(PoolConfigError, match=f"Unknown POOL option '{name}'"):
            PoolOptions.from_mapping({name: 5})


CONNECT_ACCEPTED = (
    "a whole number of seconds >= 0 (0 leaves the driver's own default, which for "
    "mysqlclient is no timeout)."
)
NETWORK_ACCEPTED = "0 (off) or a number of seconds from 1 to 86400."


@pytest.mark.parametrize(
    ("settings_dict", "message"),
    [
        *(
            (
                {"POOL": {"CONNECT_TIMEOUT": value}},
                f"DATABASES['db']: POOL option CONNECT_TIMEOUT={value!r} is invalid; expected "
                + CONNECT_ACCEPTED,
            )
            for value in (2.5, -1, True, "5", None)
        ),
        *(
            (
                {"POOL": {"NETWORK_TIMEOUT": value}},
                f"DATABASES['db']: POOL option NETWORK_TIMEOUT={value!r} is invalid; expected "
                + NETWORK_ACCEPTED,
            )
            for value in (0.5, -1, 86401, float("inf"), float("nan"), False, "30")
        ),
        (
            {"OPTIONS": {"pool_network_timeout": "0.5"}},
            "DATABASES['db']: POOL option NETWORK_TIMEOUT=0.5 is invalid; expected "
            f"{NETWORK_ACCEPTED} It was set by OPTIONS['pool_network_timeout'], the "
            "pool_network_timeout parameter of the database URL.",
        ),
        (
            {"OPTIONS": {"pool_connect_timeout": "2.5"}},
            "DATABASES['db']: OPTIONS['pool_connect_timeout']='2.5' is not an integer (it sets "
            "the pool option CONNECT_TIMEOUT). Write a number, as in ?pool_connect_timeout=2 "
            "in the database URL.",
        ),
        (
            {"OPTIONS": {"pool_network_timeout": "soon"}},
            "DATABASES['db']: OPTIONS['pool_network_timeout']='soon' is not a number of seconds "
            "(it sets the pool option NETWORK_TIMEOUT). Write a number, as in "
            "?pool_network_timeout=2 in the database URL.",
        ),
        (
            {"POOL": {"NETWORK_TIMEOUT": 5}, "OPTIONS": {"pool_network_timeout": "3"}},
            "DATABASES['db'] sets the pool option NETWORK_TIMEOUT twice: in POOL (5) and as "
            "OPTIONS['pool_network_timeout'] ('3'). Keep one of them.",
        ),
        (
            {"POOL": {"CONNECT_TIMEOUT": 5}, "OPTIONS": {"connect_timeout": 20}},
            "DATABASES['db'] sets the connect timeout twice: as the pool option CONNECT_TIMEOUT "
            "(5) and as the driver's OPTIONS['connect_timeout'] (20). Keep one of them.",
        ),
    ],
)
def test_bad_timeouts_name_the_alias_the_option_and_what_is_accepted(
    settings_dict: dict[str, object], message: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        alias_options("db", settings_dict)
    assert str(info.value) == message


@pytest.mark.parametrize("seconds", [1, 2, 2.5, 3, 7.5, 10, 30, 59.9, 600, 86400])
def test_keepalive_notices_a_silent_server_within_about_the_network_timeout(
    seconds: float,
) -> None:
    tcp = TcpTimeouts.for_network_timeout(seconds)
    assert tcp.user_timeout_ms == round(seconds * 1000)
    # Linux with TCP_USER_TIMEOUT ends the connection at the first probe time past the
    # timeout with a probe unanswered: the first probe goes out no later than the timeout,
    # and the next ones come at a small part of it.
    assert 1 <= tcp.keepalive_idle <= max(seconds / 2, 1)
    assert 1 <= tcp.keepalive_interval <= max(seconds / 4, 1)
    # A kernel that counts probes instead gives up at about the same time.
    total = tcp.keepalive_idle + tcp.keepalive_count * tcp.keepalive_interval
    assert abs(total - seconds) <= tcp.keepalive_interval
    # Linux's limits (TCP_KEEPIDLE and TCP_KEEPINTVL up to 32767 s, TCP_KEEPCNT up to 127).
    assert max(tcp.keepalive_idle, tcp.keepalive_interval) <= 32767
    assert tcp.keepalive_count <= 127


PG_ALIAS = {
    "ENGINE": "django_dbpool.backends.postgresql",
    "NAME": "app",
    "USER": "app",
    "PASSWORD": "pw",
    "HOST": "db.internal",
    "PORT": 5432,
}
MYSQL_ALIAS = {**PG_ALIAS, "ENGINE": "django_dbpool.backends.mysql", "PORT": 3306}
TCP_PARAMS = (
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
)


def physical_connect_params(settings_dict: dict[str, object]) -> dict[str, object]:
    """What the alias's pool passes the driver for each new connection (nothing connects)."""
    wrapper: Any = ConnectionHandler({"default": settings_dict})["default"]
    return dict(wrapper._dbpool_private_wrapper().get_connection_params())


def test_postgresql_connections_get_the_timeouts_as_libpq_parameters() -> None:
    params = physical_connect_params(dict(PG_ALIAS))
    assert {key: params[key] for key in ("connect_timeout", *TCP_PARAMS)} == {
        "connect_timeout": 10,
        "tcp_user_timeout": 30_000,
        "keepalives": 1,
        "keepalives_idle": 15,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    params = physical_connect_params({**PG_ALIAS, "POOL": {"NETWORK_TIMEOUT": 2}})
    assert (params["tcp_user_timeout"], params["keepalives_idle"]) == (2000, 1)
    # What OPTIONS sets is the driver's own and stays; the rest still apply.
    options = {"connect_timeout": 4, "keepalives_idle": 60, "tcp_user_timeout": 0}
    params = physical_connect_params({**PG_ALIAS, "OPTIONS": options})
    assert {key: params[key] for key in ("connect_timeout", *TCP_PARAMS)} == {
        **options,
        "keepalives": 1,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    # 0 turns each off: libpq's own defaults apply.
    params = physical_connect_params(
        {**PG_ALIAS, "POOL": {"CONNECT_TIMEOUT": 0, "NETWORK_TIMEOUT": 0}}
    )
    assert not {"connect_timeout", *TCP_PARAMS} & set(params)


def test_mysql_connections_get_a_connect_timeout_and_never_a_read_timeout() -> None:
    params = physical_connect_params(dict(MYSQL_ALIAS))
    assert params["connect_timeout"] == 10
    # NETWORK_TIMEOUT goes on the socket (tests/backends/test_network_timeouts.py): the
    # driver's read and write timeouts would cut a long statement on a healthy link.
    params = physical_connect_params({**MYSQL_ALIAS, "POOL": {"NETWORK_TIMEOUT": 2}})
    assert not {"read_timeout", "write_timeout"} & set(params)
    params = physical_connect_params({**MYSQL_ALIAS, "OPTIONS": {"connect_timeout": 4}})
    assert params["connect_timeout"] == 4
    params = physical_connect_params({**MYSQL_ALIAS, "POOL": {"CONNECT_TIMEOUT": 0}})
    assert "connect_timeout" not in params


def test_lease_and_session_sql_from_pool_and_url() -> None:
    assert alias_options("db", {}).lease == "request"
    assert alias_options("db", {}).session_sql == "pin"
    options = alias_options("db", {"POOL": {"LEASE": "transaction", "SESSION_SQL": "error"}})
    assert (options.lease, options.session_sql) == ("transaction", "error")
    from_url = alias_options("db", {"OPTIONS": {"pool_lease": "transaction"}})
    assert from_url.lease == "transaction"


@pytest.mark.parametrize(
    ("settings_dict", "message"),
    [
        (
            {"POOL": {"LEASE": "statement"}},
            "DATABASES['db']: POOL option LEASE='statement' is invalid; expected one of "
            "'request': a connection is held from the first query of a request to its end; "
            "'transaction': a connection is held only while a statement or a transaction runs.",
        ),
        (
            {"OPTIONS": {"pool_session_sql": "warn"}},
            "DATABASES['db']: POOL option SESSION_SQL='warn' is invalid; expected one of "
            "'pin': a statement that changes the session keeps the connection for the rest "
            "of the request, with a warning; 'error': such a statement raises "
            "SessionStatementError. It was set by OPTIONS['pool_session_sql'], the "
            "pool_session_sql parameter of the database URL.",
        ),
    ],
)
def test_bad_lease_options_name_the_choices(settings_dict: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        alias_options("db", settings_dict)
    assert str(info.value) == message
