"""POOL settings, OPTIONS pool_* keys and the pgpool:// / mysqlpool:// URL forms."""

from __future__ import annotations

import environ
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.utils import ConnectionHandler

import django_dbpool  # noqa: F401 - registers the URL schemes
from django_dbpool.backends.mysql.base import DatabaseClient
from django_dbpool.options import alias_options, driver_options, mysql_tls_options
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
    "Known options: BACKOFF_MAX, DRAIN_TIMEOUT, FAIL_FAST_AFTER, KEEPALIVE, LEAK_TIMEOUT, "
    "MAX_IDLE, MAX_LIFETIME, MAX_SIZE, MAX_WAITING, MIN_SIZE, PGBOUNCER, RESET, TIMEOUT, "
    "VALIDATE_AFTER."
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
    assert mysql_tls_options("db", config["OPTIONS"]) == {
        "ssl_mode": "VERIFY_IDENTITY",
        "ssl": {"ca": "/ca.pem", "cert": "/client.pem", "key": "/client.key"},
        "charset": "utf8mb4",
    }
    # Flat keys and the dict combine; without flat keys, nothing changes.
    assert mysql_tls_options("db", {"ssl": {"ca": "/ca.pem"}, "ssl_cipher": "X"}) == {
        "ssl": {"ca": "/ca.pem", "cipher": "X"}
    }
    options = {"ssl_mode": "REQUIRED", "ssl": {"ca": "/ca.pem"}, "ssl_other": 1}
    assert mysql_tls_options("db", options) == options


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
        mysql_tls_options("db", options)
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
