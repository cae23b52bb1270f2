"""Verified TLS written the way the README says, through the pool, on the server of this run.

The launcher's PostgreSQL requires TLS and its URL verifies it; its MariaDB offers TLS without
requiring it, with a self-signed certificate exported as ``DBPOOL_TEST_MYSQL_CA``. Each test
connects the "small" alias with the TLS options of a ``pgpool://`` / ``mysqlpool://`` URL and
asks the server whether the session is encrypted.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connections
from django.test import override_settings

from django_dbpool import parse_database_url
from django_dbpool.checks import check_deployment
from tests.test_bad_input import ALIAS, misconfigured
from tools.dbservers import MYSQL_CA_VAR

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=["default", ALIAS]),
    pytest.mark.filterwarnings("ignore:Overriding setting DATABASES"),
]


def tls_url() -> str:
    """The launcher's URL in the pooled scheme, with TLS that verifies the server."""
    from django.conf import settings

    plain = settings.DATABASE_URL
    if connections[ALIAS].vendor == "postgresql":
        # The launcher's URL already says sslmode=verify-full&sslrootcert=...
        return "pgpool://" + plain.split("://", 1)[1]
    ca = os.environ.get(MYSQL_CA_VAR)
    assert ca, f"{MYSQL_CA_VAR} is not set: run the suite through tools/dbservers.py"
    return f"mysqlpool://{plain.split('://', 1)[1]}?ssl_mode=VERIFY_IDENTITY&ssl_ca={quote(ca)}"


def session_tls_version(wrapper: Any) -> str:
    with wrapper.cursor() as cursor:
        if wrapper.vendor == "postgresql":
            cursor.execute("SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return str(cursor.fetchone()[0] or "")
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        return str(cursor.fetchone()[1])


def test_verified_tls_from_a_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_database_url(tls_url())
    # check --deploy accepts these settings ...
    with override_settings(DATABASES={"default": config}):
        assert check_deployment() == []
    # ... and they connect, through the pool, over TLS.
    with misconfigured(monkeypatch, OPTIONS=config["OPTIONS"]) as wrapper:
        assert session_tls_version(wrapper).startswith("TLSv1.")
        assert wrapper.pool.stats().opened == 1
    if connections[ALIAS].vendor == "mysql":
        # The check can fail: the MariaDB server offers TLS but does not impose it.
        with misconfigured(monkeypatch, OPTIONS={}) as wrapper:
            assert session_tls_version(wrapper) == ""
