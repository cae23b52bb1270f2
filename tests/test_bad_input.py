"""Bad input: one test per row of the README's "Bad input and what you see" table.

Each asserts the message a user gets (the setting or the cause, and the fix) and, where a
password is in play, that it appears in no error text and no log line. Connection rows run
against the real server of this run, through the "small" alias with one setting broken.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import environ
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.utils import ConnectionHandler, OperationalError

from django_dbpool import parse_database_url
from django_dbpool.backends.base import PooledWrapperMixin
from django_dbpool.backends.connect_errors import AUTH_HINT, NAME_HINT, UNREACHABLE_HINT
from django_dbpool.pool import PoolUnavailable
from django_dbpool.pool.errors import ConnectFailed
from tests.conftest import wsgi_request
from tools.dbservers import free_port
from tools.tcpproxy import tcp_proxy

ALIAS = "small"
WRONG_PASSWORD = "Wrong-Pa55word-9f3a1c"
PG_TLS_HINT = (
    "The server's certificate could not be verified: set OPTIONS['sslrootcert'] (sslrootcert= "
    "in a database URL) to the CA certificate that signed it (a self-signed server's own "
    "certificate), and HOST to a name the certificate is issued for."
)
MYSQL_TLS_HINT = (
    "TLS failed: check OPTIONS['ssl_mode'] and OPTIONS['ssl'] ({'ca': the CA certificate that "
    "signed the server's certificate}; ssl_ca= in a database URL), and that the server has "
    "TLS on."
)
URL_FORM = "pgpool://USER:PASSWORD@HOST:PORT/NAME (or mysqlpool://...)"
PORT_MESSAGE = (
    "DATABASE_URL: the port is not a number from 0 to 65535. Write HOST:PORT with a numeric "
    "PORT; if the password contains /, ?, # or %, percent-encode it "
    "(urllib.parse.quote(password, safe=''))."
)
connection_rows = pytest.mark.django_db(transaction=True, databases=["default", ALIAS])


# -- DATABASE_URL ------------------------------------------------------------------------------


def test_url_with_an_unknown_scheme() -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        parse_database_url("pgpoool://app:s3cret@db:5432/app")
    assert str(info.value) == (
        "DATABASE_URL: unknown scheme 'pgpoool://'. Use pgpool:// (PostgreSQL) or "
        f"mysqlpool:// (MySQL/MariaDB), as in {URL_FORM}."
    )


def test_value_that_is_not_a_url() -> None:
    for value in ("", None, "app:s3cret@db/app", "//app:s3cret@db/app"):
        with pytest.raises(ImproperlyConfigured) as info:
            parse_database_url(value)
        assert str(info.value) == (
            f"DATABASE_URL is empty or not a database URL; expected {URL_FORM}."
        )


def test_url_with_a_port_that_is_not_a_number() -> None:
    for url in ("pgpool://app:s3cret@db:abc/app", "mysqlpool://app:s3cret@db:99999/app"):
        with pytest.raises(ImproperlyConfigured) as info:
            parse_database_url(url)
        assert str(info.value) == PORT_MESSAGE


def test_url_with_an_unencoded_slash_in_the_password_is_not_quoted() -> None:
    # The "/" ends the host part early: "app:pa" reads as host "app", port "pa".
    with pytest.raises(ImproperlyConfigured) as info:
        parse_database_url("pgpool://app:pa/ss?wd@db:5432/app", setting="APP_DB")
    assert str(info.value) == PORT_MESSAGE.replace("DATABASE_URL", "APP_DB")


def test_url_without_a_host_connects_through_the_local_socket() -> None:
    config = parse_database_url("pgpool://app:s3cret@/app")
    assert (config["HOST"], config["NAME"]) == ("", "app")  # see test_empty_host


def test_plain_env_db_leaves_these_errors_to_django_environ_and_django() -> None:
    # What the README says happens without parse_database_url.
    with pytest.raises(ValueError, match="Port could not be cast to integer value as 'pa'"):
        environ.Env.db_url_config("pgpool://app:pa/ss@db:5432/app")
    config = environ.Env.db_url_config("pgpoool://app:s3cret@db:5432/app")
    handler = ConnectionHandler({"default": config})
    with pytest.raises(ImproperlyConfigured, match="'pgpoool' isn't an available database backend"):
        handler["default"]


# -- pool options ----------------------------------------------------------------------------


@connection_rows
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"OPTIONS": {"pool_max_size": "abc"}},
            "DATABASES['small']: OPTIONS['pool_max_size']='abc' is not an integer (it sets the "
            "pool option MAX_SIZE). Write a number, as in ?pool_max_size=2 in the database URL.",
            id="url-query-value",
        ),
        pytest.param(
            {"OPTIONS": {"pool_size": "3"}},
            "DATABASES['small']: Unknown POOL option 'SIZE'. Known options: BACKOFF_MAX, ",
            id="unknown-url-parameter",
        ),
        pytest.param(
            {"POOL": {"SIZE": 3}},
            "DATABASES['small']: Unknown POOL option 'SIZE'. Known options: BACKOFF_MAX, ",
            id="unknown-key",
        ),
        pytest.param(
            {"POOL": {"max_size": 3}},
            "DATABASES['small']: Unknown POOL option 'max_size'. Option names are upper case: "
            "did you mean 'MAX_SIZE'?",
            id="lower-case-key",
        ),
        pytest.param(
            {"POOL": {"MAX_SZIE": 3}},
            "DATABASES['small']: Unknown POOL option 'MAX_SZIE'. Did you mean 'MAX_SIZE'? "
            "Known options: BACKOFF_MAX, ",
            id="misspelt-key",
        ),
        pytest.param(
            {"OPTIONS": {"pool_max_szie": "3"}},
            "DATABASES['small']: Unknown POOL option 'MAX_SZIE'. Did you mean pool_max_size? "
            "Known options: BACKOFF_MAX, ",
            id="misspelt-url-parameter",
        ),
        pytest.param(
            {"POOL": {"TIMEOUT": "5"}},
            "DATABASES['small']: POOL option TIMEOUT='5' is invalid; expected a finite number "
            "of seconds (int or float) > 0.",
            id="wrong-type",
        ),
        pytest.param(
            {"POOL": {"MAX_SIZE": "10"}},
            "DATABASES['small']: POOL option MAX_SIZE='10' is invalid; expected an integer >= 1.",
            id="wrong-type-size",
        ),
        pytest.param(
            {"POOL": {"MAX_SIZE": -1}},
            "DATABASES['small']: POOL option MAX_SIZE=-1 is invalid; expected an integer >= 1.",
            id="negative-max-size",
        ),
        pytest.param(
            {"POOL": {"MIN_SIZE": -1}},
            "DATABASES['small']: POOL option MIN_SIZE=-1 is invalid; expected an integer >= 0.",
            id="negative-min-size",
        ),
        pytest.param(
            {"POOL": {"MIN_SIZE": 5, "MAX_SIZE": 2}},
            "DATABASES['small']: POOL option MIN_SIZE=5 is invalid; expected an integer "
            "between 0 and MAX_SIZE (2).",
            id="min-above-max",
        ),
        pytest.param(
            {"OPTIONS": {"pool_min_size": 5, "pool_max_size": 2}},
            "DATABASES['small']: POOL option MIN_SIZE=5 is invalid; expected an integer "
            "between 0 and MAX_SIZE (2). It was set by OPTIONS['pool_min_size'], the "
            "pool_min_size parameter of the database URL.",
            id="min-above-max-in-url",
        ),
        pytest.param(
            {"POOL": {"TIMEOUT": 5}, "OPTIONS": {"pool_timeout": 3}},
            "DATABASES['small'] sets the pool option TIMEOUT twice: in POOL (5) and as "
            "OPTIONS['pool_timeout'] (3). Keep one of them.",
            id="set-twice",
        ),
        pytest.param(
            {"OPTIONS": {"pool_network_timeout": "0.5"}},
            "DATABASES['small']: POOL option NETWORK_TIMEOUT=0.5 is invalid; expected 0 (off) "
            "or a number of seconds from 1 to 86400. It was set by "
            "OPTIONS['pool_network_timeout'], the pool_network_timeout parameter of the "
            "database URL.",
            id="network-timeout-out-of-range",
        ),
        pytest.param(
            {"POOL": {"CONNECT_TIMEOUT": 2.5}},
            "DATABASES['small']: POOL option CONNECT_TIMEOUT=2.5 is invalid; expected a whole "
            "number of seconds >= 0 (0 leaves the driver's own default, which for mysqlclient "
            "is no timeout).",
            id="connect-timeout-not-whole",
        ),
        pytest.param(
            {"POOL": {"CONNECT_TIMEOUT": 5}, "OPTIONS": {"connect_timeout": 20}},
            "DATABASES['small'] sets the connect timeout twice: as the pool option "
            "CONNECT_TIMEOUT (5) and as the driver's OPTIONS['connect_timeout'] (20). Keep one "
            "of them.",
            id="connect-timeout-set-twice",
        ),
    ],
)
def test_bad_pool_option_fails_the_first_connection(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any], message: str
) -> None:
    if "OPTIONS" in changes:
        options = {**connections[ALIAS].settings_dict["OPTIONS"], **changes["OPTIONS"]}
        changes = {"POOL": None, **changes, "OPTIONS": options}
    with (
        misconfigured(monkeypatch, **changes) as wrapper,
        pytest.raises(ImproperlyConfigured) as info,
    ):
        wrapper.ensure_connection()
    assert str(info.value).startswith(message)
    if "Unknown" in message and "OPTIONS" in changes:
        (key,) = (key for key in changes["OPTIONS"] if key.startswith("pool_"))
        assert str(info.value).endswith(
            f"It was set by OPTIONS[{key!r}], the {key} parameter of the database URL. "
            "URL parameters are the option names in lower case with the pool_ prefix, as in "
            "pool_max_size."
        )


# -- connecting --------------------------------------------------------------------------------


@connection_rows
def test_unreachable_host(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    with misconfigured(monkeypatch, PORT=str(port)) as wrapper:
        cause = (
            "Connection refused"
            if wrapper.vendor == "postgresql"
            else "Can't connect to server on '127.0.0.1'"
        )
        error = connect_error(wrapper, caplog, f"127.0.0.1:{port}", cause, UNREACHABLE_HINT)
    if wrapper.vendor == "mysql":
        assert "(error 2002)" in str(error)


@connection_rows
def test_server_that_accepts_and_never_answers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A hung server, a load balancer in front of a dead one, a PgBouncer waiting on its
    # auth_query: the TCP connect succeeds and nothing more happens. Each attempt is given
    # up after CONNECT_TIMEOUT (libpq waits 2 s at least), as a connect error.
    with tcp_proxy("127.0.0.1", free_port()) as proxy:
        proxy.swallow(1000)  # every attempt of this test
        pool = {"MAX_SIZE": 2, "TIMEOUT": 60, "CONNECT_TIMEOUT": 1, "BACKOFF_MAX": 0.1}
        with misconfigured(monkeypatch, PORT=str(proxy.port), POOL=pool) as wrapper:
            cause = (
                "connection timeout expired"
                if wrapper.vendor == "postgresql"
                else "reading initial communication packet', system error: 110 (error 2013)"
            )
            connect_error(wrapper, caplog, f"127.0.0.1:{proxy.port}", cause, UNREACHABLE_HINT)
        # The client closed each connection it gave up on (the proxy saw it), bounded by
        # the timeout: no attempt is left hanging.
        deadline = time.monotonic() + 30
        while any(attempt.closed is None for attempt in proxy.swallowed):
            assert time.monotonic() < deadline, "an abandoned connect was never closed"
            time.sleep(0.05)
        assert proxy.swallowed
        assert all(a.closed is not None and a.closed - a.accepted < 20 for a in proxy.swallowed)


@connection_rows
def test_wrong_password(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with misconfigured(monkeypatch, PASSWORD=WRONG_PASSWORD) as wrapper:
        user = wrapper.settings_dict["USER"]
        cause = (
            f'password authentication failed for user "{user}"'
            if wrapper.vendor == "postgresql"
            else f"Access denied for user '{user}'@'127.0.0.1' (using password: YES) (error 1045)"
        )
        connect_error(wrapper, caplog, server_address(wrapper), cause, AUTH_HINT)


@connection_rows
def test_tls_verification_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    other_ca = self_signed_certificate(tmp_path)
    options: dict[str, Any]
    if connections[ALIAS].vendor == "postgresql":
        # verify-full against the server's self-signed certificate: without sslrootcert
        # (libpq looks for ~/.postgresql/root.crt), then with a CA that did not sign it.
        monkeypatch.setenv("HOME", str(tmp_path))
        for sslrootcert, cause in ((None, "root certificate file"), (other_ca, "certificate")):
            options = {"sslmode": "verify-full"}
            if sslrootcert is not None:
                options["sslrootcert"] = sslrootcert
            caplog.clear()
            with misconfigured(monkeypatch, OPTIONS=options) as wrapper:
                connect_error(wrapper, caplog, server_address(wrapper), cause, PG_TLS_HINT)
    else:
        # The server offers TLS with a self-signed certificate: verified with a CA that did
        # not sign it, written as a dict and as a database URL's flat ssl_ca, it is refused.
        for options in (
            {"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": other_ca}},
            {"ssl_mode": "VERIFY_IDENTITY", "ssl_ca": other_ca},
        ):
            caplog.clear()
            with misconfigured(monkeypatch, OPTIONS=options) as wrapper:
                connect_error(
                    wrapper,
                    caplog,
                    server_address(wrapper),
                    "TLS/SSL error: self-signed certificate (error 2026)",
                    MYSQL_TLS_HINT,
                )


@connection_rows
def test_empty_host(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with misconfigured(monkeypatch, HOST="") as wrapper:
        cause = "No such file or directory" if wrapper.vendor == "postgresql" else "socket"
        connect_error(
            wrapper, caplog, "the default local socket (HOST is empty)", cause, UNREACHABLE_HINT
        )


@connection_rows
def test_database_that_does_not_exist(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with misconfigured(monkeypatch, NAME="no_such_database") as wrapper:
        cause = (
            'database "no_such_database" does not exist'
            if wrapper.vendor == "postgresql"
            else "Unknown database 'no_such_database' (error 1049)"
        )
        connect_error(wrapper, caplog, server_address(wrapper), cause, NAME_HINT)


@connection_rows
def test_wrong_password_in_a_request_is_a_503_that_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        misconfigured(monkeypatch, PASSWORD=WRONG_PASSWORD) as wrapper,
        caplog.at_level(logging.DEBUG),
    ):
        status, headers, body = wsgi_request("/probe/small/")
        address = server_address(wrapper)
    assert status == 503
    assert "Retry-After" in headers
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("503 for")]
    assert len(logged) == 1
    assert logged[0].startswith("503 for GET /probe/small/: pool 'small': the database is ")
    assert f"Last error: ConnectFailed: cannot connect to {address}" in logged[0]
    assert logged[0].endswith(AUTH_HINT)
    assert logged[0].count("'small'") == 1
    assert_no_password([*all_log_texts(caplog), body.decode()])


# -- helpers -----------------------------------------------------------------------------------


@contextmanager
def misconfigured(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> Iterator[Any]:
    """The "small" alias with ``changes`` to its settings, a long TIMEOUT (a hang guard:
    failed connects fail fast long before) unless POOL is changed; its pool is closed and
    the settings restored afterwards."""
    wrapper = connections[ALIAS]
    wrapper.close()
    with monkeypatch.context() as patch:
        patch.setitem(wrapper.settings_dict, "POOL", {"MAX_SIZE": 2, "TIMEOUT": 60})
        for key, value in changes.items():
            patch.setitem(wrapper.settings_dict, key, value)
        try:
            yield wrapper
        finally:
            wrapper.close()
            assert isinstance(wrapper, PooledWrapperMixin)
            wrapper.close_pool()


def connect_error(
    wrapper: Any, caplog: pytest.LogCaptureFixture, address: str, cause: str, hint: str
) -> ConnectFailed:
    """Connect through the pool; check that the error says where, why and what to check,
    that the driver's error is kept as the cause, and that no password shows anywhere."""
    with caplog.at_level(logging.DEBUG), pytest.raises(OperationalError) as info:
        wrapper.ensure_connection()
    error = info.value
    assert isinstance(error, PoolUnavailable)
    failed = error.__cause__
    assert isinstance(failed, ConnectFailed)
    assert isinstance(failed.__cause__, wrapper.Database.OperationalError)
    text = str(failed)
    user = wrapper.settings_dict["USER"]
    assert text.startswith(f"DATABASES['small']: cannot connect to {address} as USER '{user}': ")
    assert cause in text
    assert text.endswith(hint)
    # The pool's messages name the pool (the alias) first and quote the rest: the alias, the
    # cause and what to check once each.
    quoted = text.removeprefix("DATABASES['small']: ")
    assert str(error).endswith(f"Last error: ConnectFailed: {quoted}")
    assert str(error).count("'small'") == 1
    first_failure = f"pool 'small': connect failed (1 in a row): ConnectFailed: {quoted}"
    assert first_failure in [r.getMessage() for r in caplog.records]
    # Without the connector thread's frames: a caller's traceback quotes both in a line each.
    assert failed.__traceback__ is None
    assert failed.__cause__.__traceback__ is None
    texts = all_log_texts(caplog)
    chained: BaseException | None = error
    while chained is not None:
        texts += [str(chained), repr(chained)]
        chained = chained.__cause__ or chained.__context__
    assert_no_password(texts)
    return failed


def server_address(wrapper: Any) -> str:
    return f"{wrapper.settings_dict['HOST']}:{wrapper.settings_dict['PORT']}"


def all_log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = [record.getMessage() for record in caplog.records]
    texts += [caplog.text]
    return texts


def assert_no_password(texts: list[str]) -> None:
    from django.conf import settings

    real = settings.DATABASES[ALIAS]["PASSWORD"]
    assert real
    for text in texts:
        assert WRONG_PASSWORD not in text
        assert real not in text


def self_signed_certificate(directory: Path) -> str:
    """A CA certificate that signed nothing the test servers use."""
    cert = directory / "other-ca.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not the test server's CA",
            "-keyout",
            str(directory / "other-ca.key"),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert)
