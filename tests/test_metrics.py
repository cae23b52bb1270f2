"""Prometheus series: the pools of every process, and django-prometheus's query metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections
from prometheus_client import REGISTRY, generate_latest

from django_dbpool import snapshots
from tests.conftest import wsgi_get
from tests.test_stats_dir import snapshot_document, write


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def series(text: str) -> list[str]:
    """``name{labels}`` of every sample line of an exposition."""
    return [line.rsplit(" ", 1)[0] for line in text.splitlines() if line and line[0] != "#"]


@pytest.mark.django_db(transaction=True)
def test_query_metrics_move_and_new_connections_count_real_connects() -> None:
    labels = {"alias": "default", "vendor": connection.vendor}
    wsgi_get("/probe/session/")  # a physical connection exists
    pool = connections["default"].pool
    executed = sample("django_db_execute_total", **labels)
    connects = sample("django_db_new_connections_total", **labels)
    opened = pool.stats().opened
    for _ in range(10):
        wsgi_get("/probe/session/")
    assert sample("django_db_execute_total", **labels) >= executed + 10
    assert sample("django_db_query_duration_seconds_count", **labels) > 0
    # Ten checkouts, no new physical connection: the counter follows the pool's connects.
    assert sample("django_db_new_connections_total", **labels) - connects == (
        pool.stats().opened - opened
    )


def errors_total(alias: str) -> float:
    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "django_db_errors"
        for s in m.samples
        if s.name == "django_db_errors_total" and s.labels.get("alias") == alias
    )


@pytest.mark.django_db(transaction=True)
def test_query_errors_are_counted_by_type() -> None:
    before = errors_total("default")
    with pytest.raises(Exception), connection.cursor() as cursor:  # noqa: B017, PT011
        cursor.execute("SELECT * FROM no_such_table_here")
    assert errors_total("default") == before + 1


@pytest.mark.django_db(transaction=True)
def test_pool_series_match_the_pool() -> None:
    wsgi_get("/probe/session/")
    snapshots.publish_now()
    stats = connections["default"].pool.stats()
    labels = {"alias": "default", "vendor": connection.vendor}
    assert sample("django_dbpool_max_connections", **labels) == stats.max_size
    assert sample("django_dbpool_processes", **labels) == 1
    assert sample("django_dbpool_connections", state="idle", **labels) == stats.idle
    assert sample("django_dbpool_checkouts_total", **labels) == stats.acquired
    assert sample("django_dbpool_connections_opened_total", **labels) == stats.opened
    assert sample("django_dbpool_acquire_wait_seconds_count", **labels) == stats.wait_seconds.count
    assert sample("django_dbpool_hold_seconds_bucket", le="+Inf", **labels) == (
        stats.hold_seconds.count
    )
    text = generate_latest(REGISTRY).decode()
    names = series(text)
    assert len(names) == len(set(names))  # no duplicate series
    assert re.search(r'django_dbpool_connections_closed_total\{alias="default",reason="idle"', text)


def test_a_bad_snapshot_is_skipped_and_the_scrape_still_answers(
    tmp_path: Path, settings: Any
) -> None:
    directory = tmp_path / "stats"
    directory.mkdir(mode=0o700)
    settings.DBPOOL_STATS_DIR = str(directory)
    write(directory, snapshot_document(pid=424242))
    bad = snapshot_document(pid=515151)
    bad["pools"]["default"]["stats"]["gauges"]["in_use"] = "many"
    write(directory, bad)
    text = generate_latest(REGISTRY).decode()  # what /metrics serves
    labels = 'alias="default",vendor="postgresql"'
    assert f"django_dbpool_processes{{{labels}}} 1.0" in text
    assert f"django_dbpool_checkouts_total{{{labels}}} 1.0" in text


def test_metrics_view_is_served() -> None:
    status, body = wsgi_get("/metrics")
    assert status == 200
    assert b"django_dbpool_" in body or b"# HELP" in body


_WITHOUT_DJANGO_PROMETHEUS = """
import sys
import django
from django.conf import settings
from django_dbpool import parse_database_url

db = parse_database_url(sys.argv[1])
settings.configure(INSTALLED_APPS=["django_dbpool"], DATABASES={"default": db})
django.setup()
from django.db import connection
from django_dbpool import metrics

with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
    print(metrics.query_metrics_enabled(), type(cursor.cursor).__module__)
connection.close()
"""


@pytest.mark.django_db(transaction=True)
def test_no_query_metrics_unless_django_prometheus_is_an_installed_app() -> None:
    """Importable is not enough: its cursor wrapper costs every statement, so it is used only
    when the project enabled django-prometheus, as with Django's own backends."""
    import subprocess
    import sys

    from tests import processes

    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DJANGO_PROMETHEUS, processes.database_url()],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert out[0] == "False"
    assert not out[1].startswith("django_prometheus")
    # In this suite's settings it is an installed app, and the cursors are its own.
    with connection.cursor() as cursor:
        assert type(cursor.cursor).__module__.startswith("django_prometheus")
