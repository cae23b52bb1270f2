"""Every system check, with its exact message and hint."""

from __future__ import annotations

import configparser
from pathlib import Path

import django
import pytest
from django.conf import settings
from django.core import checks
from django.db import connections
from django.test import override_settings

import django_dbpool
from django_dbpool.backends.connect_errors import AUTH_HINT
from django_dbpool.checks import (
    TESTED_DJANGO_VERSIONS,
    check_app_settings,
    check_configuration,
    check_deployment,
    check_django_version,
    check_leases,
    check_pooled_aliases,
)

# The checks read settings.DATABASES only; overriding it is what they are about.
pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")

PG = "django_dbpool.backends.postgresql"
MY = "django_dbpool.backends.mysql"


def databases(**aliases: dict[str, object]) -> dict[str, dict[str, object]]:
    base = {"NAME": "app", "USER": "app", "PASSWORD": "pw", "HOST": "db", "PORT": ""}
    return {alias: {**base, **config} for alias, config in aliases.items()}


def only(messages: list[checks.CheckMessage]) -> checks.CheckMessage:
    assert len(messages) == 1, messages
    return messages[0]


def test_clean_configuration_passes() -> None:
    dbs = databases(
        default={"ENGINE": PG, "POOL": {"MAX_SIZE": 5}, "OPTIONS": {"sslmode": "verify-full"}},
        other={"ENGINE": MY, "OPTIONS": {"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": "/ca"}}},
        stock={"ENGINE": "django.db.backends.postgresql", "CONN_MAX_AGE": 60},
    )
    with override_settings(DATABASES=dbs):
        assert check_configuration() == []
        assert check_deployment() == []


def test_e001_invalid_pool_option() -> None:
    with override_settings(DATABASES=databases(default={"ENGINE": PG, "POOL": {"MAX_SIZE": -1}})):
        message = only(check_configuration())
    assert message.id == "django_dbpool.E001"
    assert isinstance(message, checks.Error)
    assert message.msg == (
        "DATABASES['default']: POOL option MAX_SIZE=-1 is invalid; expected an integer >= 1."
    )
    assert message.hint == (
        "Fix the option in DATABASES[...]['POOL'] (or the pool_* query parameter of "
        "DATABASE_URL); the README lists every option."
    )


def test_valid_app_settings_pass() -> None:
    assert check_app_settings() == []


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (
            "DBPOOL_READY_TIMEOUT",
            0,
            "DBPOOL_READY_TIMEOUT=0 is invalid; expected a number of seconds > 0.",
        ),
        (
            "DBPOOL_READY_ALIASES",
            ["nope"],
            "DBPOOL_READY_ALIASES=['nope'] is invalid; expected aliases of DATABASES "
            "(unknown: ['nope']).",
        ),
        (
            "DBPOOL_SHUTDOWN_HANDLERS",
            "yes",
            "DBPOOL_SHUTDOWN_HANDLERS='yes' is invalid; expected True or False.",
        ),
        (
            "DBPOOL_APPLICATION_NAME",
            "{app}",
            "DBPOOL_APPLICATION_NAME='{app}' is invalid; expected a string using only "
            "{project}, {host}, {pid} and {alias}.",
        ),
    ],
)
def test_e008_invalid_app_setting(setting: str, value: object, message: str) -> None:
    with override_settings(**{setting: value}):
        error = only(check_app_settings())
    assert error.id == "django_dbpool.E008"
    assert error.msg == message
    assert setting in (error.hint or "")
    # The override's end brings the valid value back (the cache follows setting_changed).
    assert check_app_settings() == []


def test_app_settings_are_cached_until_they_change() -> None:
    from django_dbpool.conf import app_settings

    with override_settings(DBPOOL_RETRY_AFTER=7):
        assert app_settings.RETRY_AFTER == 7
        # Read once: a change that bypasses setting_changed is not seen...
        settings.DBPOOL_RETRY_AFTER = 9
        assert app_settings.RETRY_AFTER == 7
    # ...one through override_settings (or the settings fixture) is.
    assert app_settings.RETRY_AFTER == 5
    with override_settings(DBPOOL_RETRY_AFTER=8):
        assert app_settings.RETRY_AFTER == 8


def test_e002_djangos_own_pool_option() -> None:
    with override_settings(DATABASES=databases(default={"ENGINE": PG, "OPTIONS": {"pool": True}})):
        message = only(check_configuration())
    assert message.id == "django_dbpool.E002"
    assert message.msg == (
        "DATABASES['default'] uses django_dbpool.backends.postgresql and also Django's own "
        "pool (OPTIONS['pool']): connections would be pooled twice."
    )
    assert message.hint == (
        "Remove OPTIONS['pool'] and put pool settings in DATABASES[...]['POOL']."
    )


@pytest.mark.parametrize("max_age", [60, None])
def test_e003_conn_max_age(max_age: int | None) -> None:
    with override_settings(DATABASES=databases(default={"ENGINE": MY, "CONN_MAX_AGE": max_age})):
        message = only(check_configuration())
    assert message.id == "django_dbpool.E003"
    assert message.msg == (
        f"DATABASES['default'] sets CONN_MAX_AGE={max_age!r}: with a pool, a thread would "
        "keep its connection between requests, so the pool's bound would run out as soon "
        "as there are more threads than MAX_SIZE."
    )
    assert message.hint == (
        "Set CONN_MAX_AGE to 0 (the default): connections go back to the pool at the end "
        "of each request and are reused from there."
    )


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer", "require", None])
def test_w001_postgresql_tls_that_does_not_verify(sslmode: str | None) -> None:
    options = {} if sslmode is None else {"sslmode": sslmode}
    with override_settings(DATABASES=databases(default={"ENGINE": PG, "OPTIONS": options})):
        message = only(check_deployment())
    assert message.id == "django_dbpool.W001"
    assert isinstance(message, checks.Warning)
    assert message.msg == (
        f"DATABASES['default'] connects with sslmode={sslmode or 'prefer'!r}, which does not "
        "verify the server: a man in the middle can read and change every query."
    )
    assert message.hint == (
        "Set OPTIONS={'sslmode': 'verify-full', 'sslrootcert': '/path/to/ca.pem'} "
        "(sslrootcert: the CA bundle that signed the server's certificate, a private CA "
        "included)."
    )


@pytest.mark.parametrize("options", [{}, {"ssl_mode": "REQUIRED"}, {"ssl": {"cert": "/c"}}])
def test_w002_mysql_without_verified_tls(options: dict[str, object]) -> None:
    with override_settings(DATABASES=databases(default={"ENGINE": MY, "OPTIONS": options})):
        message = only(check_deployment())
    assert message.id == "django_dbpool.W002"
    assert message.msg == (
        "DATABASES['default'] connects to MySQL/MariaDB without TLS that verifies the server."
    )
    assert message.hint == (
        "Set OPTIONS={'ssl_mode': 'VERIFY_IDENTITY', 'ssl': {'ca': '/path/to/ca.pem'}} "
        "(ca: the CA bundle that signed the server's certificate, a private CA included); "
        "in a database URL, ?ssl_mode=VERIFY_IDENTITY&ssl_ca=/path/to/ca.pem."
    )


def test_w002_accepts_the_ca_of_a_database_url() -> None:
    options = {"ssl_mode": "VERIFY_IDENTITY", "ssl_ca": "/ca.pem"}
    with override_settings(DATABASES=databases(default={"ENGINE": MY, "OPTIONS": options})):
        assert check_configuration() == []
        assert check_deployment() == []


def test_e007_mysql_tls_file_given_twice() -> None:
    options = {"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": "/a.pem"}, "ssl_ca": "/b.pem"}
    with override_settings(DATABASES=databases(default={"ENGINE": MY, "OPTIONS": options})):
        message = only(check_configuration())
    assert message.id == "django_dbpool.E007"
    assert isinstance(message, checks.Error)
    assert message.msg == (
        "DATABASES['default'] sets the TLS option ca twice: in OPTIONS['ssl'] ('/a.pem') and "
        "as OPTIONS['ssl_ca'] ('/b.pem'). Keep one of them."
    )
    assert message.hint == (
        "Give each TLS file once: in OPTIONS['ssl'] = {'ca': ...} or as OPTIONS['ssl_ca'] "
        "(the ssl_ca parameter of DATABASE_URL)."
    )


def test_w003_empty_password() -> None:
    config = {"ENGINE": PG, "PASSWORD": "", "OPTIONS": {"sslmode": "verify-full"}}
    with override_settings(DATABASES=databases(default=config)):
        message = only(check_deployment())
    assert message.id == "django_dbpool.W003"
    assert message.msg == "DATABASES['default'] has an empty PASSWORD."
    assert message.hint == (
        "Give the database user a password and set it in PASSWORD (or in DATABASE_URL)."
    )


def test_deployment_checks_run_only_under_deploy() -> None:
    registered = checks.registry.registry
    assert check_deployment in registered.deployment_checks
    assert check_deployment not in registered.registered_checks
    assert check_configuration in registered.registered_checks


@pytest.mark.django_db(databases=["default", "small"])
def test_database_check_connects_through_the_pool() -> None:
    assert check_configuration(databases=["default"]) == []
    assert connections["default"].pool.stats().acquired >= 1


# transaction=True: in a test transaction the check would meet "cannot open a new connection
# in an atomic block", not the server.
@pytest.mark.django_db(transaction=True, databases=["default", "small"])
def test_e004_database_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "Wrong-Password-7f3a9c"
    wrapper = connections["small"]
    wrapper.close()  # the check must open a connection, not reuse one
    monkeypatch.setitem(wrapper.settings_dict, "PASSWORD", secret)
    try:
        message = only(check_configuration(databases=["small"]))
    finally:
        wrapper.close_pool()
    s = wrapper.settings_dict
    if wrapper.vendor == "postgresql":
        cause = f'password authentication failed for user "{s["USER"]}"'
    else:
        cause = (
            f"Access denied for user '{s['USER']}'@'{s['HOST']}' (using password: YES) (error 1045)"
        )
    assert message.id == "django_dbpool.E004"
    # The cause once, and what to check for it as the hint.
    assert message.msg == (
        "DATABASES['small']: could not run SELECT 1 through the pool: cannot connect to "
        f"{s['HOST']}:{s['PORT']} as USER '{s['USER']}': {cause}."
    )
    assert message.hint == AUTH_HINT
    assert secret not in message.msg


@pytest.mark.django_db(transaction=True, databases=["default", "small"])
def test_e004_other_errors_keep_the_general_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    wrapper = connections["small"]
    wrapper.close()
    # A setting the backend rejects before it connects.
    monkeypatch.setitem(wrapper.settings_dict, "OPTIONS", {"isolation_level": "sometimes"})
    try:
        message = only(check_configuration(databases=["small"]))
    finally:
        wrapper.close_pool()
    assert message.id == "django_dbpool.E004"
    assert message.msg.startswith(
        "DATABASES['small']: could not run SELECT 1 through the pool: ImproperlyConfigured: "
    )
    assert message.hint == (
        "Check HOST, PORT, NAME, USER and PASSWORD, and that the server accepts connections "
        "from this host."
    )


def test_w008_no_alias_uses_a_pooled_engine() -> None:
    dbs = databases(
        default={"ENGINE": "django.db.backends.postgresql"},
        replica={"ENGINE": "django.db.backends.mysql"},
    )
    with override_settings(DATABASES=dbs):
        message = only(check_pooled_aliases())
    assert message.id == "django_dbpool.W008"
    assert isinstance(message, checks.Warning)
    assert message.msg == (
        "django_dbpool is in INSTALLED_APPS, but no alias of DATABASES uses one of its ENGINEs "
        "('default' uses django.db.backends.postgresql; 'replica' uses "
        "django.db.backends.mysql): nothing is pooled."
    )
    assert message.hint == (
        "Set ENGINE to 'django_dbpool.backends.postgresql' or 'django_dbpool.backends.mysql'; "
        "in a database URL, use the pgpool:// or mysqlpool:// scheme (postgres:// and mysql:// "
        "keep Django's own ENGINE)."
    )
    dbs["replica"]["ENGINE"] = MY
    with override_settings(DATABASES=dbs):
        assert check_pooled_aliases() == []


def test_w009_a_django_release_the_suite_does_not_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_django_version() == []  # the release this suite runs on
    monkeypatch.setattr(django, "VERSION", (6, 0, 0, "final", 0))
    message = only(check_django_version())
    assert message.id == "django_dbpool.W009"
    assert isinstance(message, checks.Warning)
    assert message.msg == (
        f"django_dbpool {django_dbpool.__version__} is tested with Django 5.2, and this is "
        "Django 6.0. Its backends re-implement part of Django's connect() (the per-connection "
        "state a checkout resets), which a release it was not tested with may do differently."
    )
    assert message.hint == (
        "Use Django 5.2, or a django_dbpool release tested with this one. Once your own test "
        "suite passes on it, silence this warning with SILENCED_SYSTEM_CHECKS = "
        "['django_dbpool.W009']."
    )
    assert check_django_version in checks.registry.registry.registered_checks
    assert checks.Tags.compatibility in check_django_version.tags  # type: ignore[attr-defined]


def test_tested_django_versions_are_the_classifiers() -> None:
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    prefix = "Framework :: Django :: "
    classifiers = [
        line.strip().removeprefix(prefix)
        for line in config["metadata"]["classifiers"].splitlines()
        if line.strip().startswith(prefix)
    ]
    assert classifiers == [f"{major}.{minor}" for major, minor in TESTED_DJANGO_VERSIONS]


@pytest.mark.django_db(databases=["default", "small"])
def test_w004_more_connections_than_the_server_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "1000")
    with connections["default"].cursor() as cursor:
        if connections["default"].vendor == "postgresql":
            cursor.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
            )
        else:
            cursor.execute("SELECT @@max_connections")
        limit = cursor.fetchone()[0]
    max_size = settings.DATABASES["default"]["POOL"]["MAX_SIZE"]
    message = only(check_configuration(databases=["default"]))
    assert message.id == "django_dbpool.W004"
    assert message.msg == (
        f"DATABASES['default']: MAX_SIZE {max_size} x 1000 worker process(es) = "
        f"{max_size * 1000} connections, but the server allows {limit} for this application."
    )
    assert message.hint == (
        "Lower MAX_SIZE or the number of workers (WEB_CONCURRENCY), raise the server's "
        "max_connections, or put PgBouncer in front of PostgreSQL."
    )


def test_w010_reset_with_transaction_leases() -> None:
    dbs = databases(default={"ENGINE": PG, "POOL": {"LEASE": "transaction", "RESET": True}})
    with override_settings(DATABASES=dbs):
        message = only(check_leases())
    assert message.id == "django_dbpool.W010"
    assert isinstance(message, checks.Warning)
    assert message.msg == (
        "DATABASES['default'] has transaction leases and POOL['RESET']=True: the session is "
        "reset each time a connection is given back, that is after every statement and "
        "transaction, at a round trip or more each."
    )
    assert message.hint == (
        "Remove RESET from DATABASES[...]['POOL'] and keep session state inside "
        "transactions (SET LOCAL) or django_dbpool.pinned(); or use LEASE 'request'."
    )


def test_w011_autocommit_off_with_transaction_leases() -> None:
    dbs = databases(
        default={"ENGINE": MY, "AUTOCOMMIT": False, "OPTIONS": {"pool_lease": "transaction"}}
    )
    with override_settings(DATABASES=dbs):
        message = only(check_leases())
    assert message.id == "django_dbpool.W011"
    assert message.msg == (
        "DATABASES['default'] has transaction leases and AUTOCOMMIT=False: a transaction is "
        "always open, so a connection is held from the first query to the end of the "
        "request, as with LEASE 'request'."
    )
    assert message.hint == (
        "Keep AUTOCOMMIT on (Django's default) and use atomic(), or remove LEASE from "
        "DATABASES[...]['POOL']."
    )


def test_lease_checks_pass_request_leases_and_clean_transaction_leases() -> None:
    dbs = databases(
        default={"ENGINE": PG, "POOL": {"RESET": True}},
        other={"ENGINE": MY, "POOL": {"LEASE": "transaction"}},
        stock={"ENGINE": "django.db.backends.postgresql", "AUTOCOMMIT": False},
    )
    with override_settings(DATABASES=dbs):
        assert check_leases() == []
