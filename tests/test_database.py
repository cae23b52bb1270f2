"""The suite runs on the database it says it runs on, the way the launcher set it up."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connection


@pytest.mark.django_db
def test_suite_runs_on_the_requested_server() -> None:
    assert connection.vendor == settings.DATABASE_VENDOR
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute("SELECT VERSION()")
            assert "MariaDB" in cursor.fetchone()[0]
        else:
            cursor.execute("SHOW server_version")
            assert int(cursor.fetchone()[0].split(".")[0]) >= 15
            # Django's own connection goes through TLS, as the launcher's URL asks.
            cursor.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cursor.fetchone() == (True,)
