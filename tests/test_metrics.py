"""Prometheus series: the pools of every process, and django-prometheus's query metrics."""

from __future__ import annotations

import functools
import re
import types
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from django.db import connection, connections
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from django_dbpool import metrics, snapshots
from tests.conftest import wsgi_get
from tests.test_poolstats import LEASE_DOCUMENTS_HOLDS, write_lease_documents
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
    pool = connections["default"].pool
    pool.count_pin("cursor", first=True)
    pool.count_pin("session_sql", first=False)
    snapshots.publish_now()
    stats = pool.stats()
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
    # The alias's LEASE (the default: request), and the pins counted on its pool.
    assert sample("django_dbpool_lease_mode", mode="request", **labels) == 1
    assert (
        REGISTRY.get_sample_value("django_dbpool_lease_mode", {**labels, "mode": "transaction"})
        is None
    )
    assert sample("django_dbpool_pinned_leases_total", **labels) == stats.pinned >= 1
    for reason in ("cursor", "session_sql", "shared"):
        assert (
            sample("django_dbpool_lease_pins_total", reason=reason, **labels)
            == (stats.pins[reason])
        )
    assert stats.pins["cursor"] >= 1
    assert stats.pins["session_sql"] >= 1
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


def test_lease_series_sum_every_process(tmp_path: Path, settings: Any) -> None:
    directory = tmp_path / "stats"
    write_lease_documents(directory)
    settings.DBPOOL_STATS_DIR = str(directory)
    text = generate_latest(REGISTRY).decode()
    lines = [line for line in text.splitlines() if "_lease" in line or "_pinned" in line]
    assert lines == [
        "# HELP django_dbpool_lease_mode Processes on this host with a pool for the alias, by "
        "its LEASE (request, transaction).",
        "# TYPE django_dbpool_lease_mode gauge",
        'django_dbpool_lease_mode{alias="default",mode="request",vendor="postgresql"} 1.0',
        'django_dbpool_lease_mode{alias="default",mode="transaction",vendor="postgresql"} 2.0',
        "# HELP django_dbpool_pinned_leases_total Transaction leases held past the end of their "
        "statement or transaction.",
        "# TYPE django_dbpool_pinned_leases_total counter",
        'django_dbpool_pinned_leases_total{alias="default",vendor="postgresql"} 3.0',
        "# HELP django_dbpool_lease_pins_total Pinned leases, by what held them (a lease counts "
        "once per reason).",
        "# TYPE django_dbpool_lease_pins_total counter",
        'django_dbpool_lease_pins_total{alias="default",reason="cursor",vendor="postgresql"} 3.0',
        'django_dbpool_lease_pins_total{alias="default",reason="pinned",vendor="postgresql"} 0.0',
        'django_dbpool_lease_pins_total{alias="default",reason="raw_connection",vendor="postgresql"}'
        " 0.0",
        'django_dbpool_lease_pins_total{alias="default",reason="session_sql",vendor="postgresql"}'
        " 1.0",
        'django_dbpool_lease_pins_total{alias="default",reason="shared",vendor="postgresql"} 0.0',
        'django_dbpool_lease_pins_total{alias="default",reason="transaction",vendor="postgresql"}'
        " 1.0",
    ]
    # The hold times of the three processes, in the existing histogram: 0.125, 0.375, 0.5 s,
    # and three parked leases of PARKED_HOLD.
    labels = {"alias": "default", "vendor": "postgresql"}
    holds = LEASE_DOCUMENTS_HOLDS
    assert sample("django_dbpool_hold_seconds_count", **labels) == len(holds)
    assert sample("django_dbpool_hold_seconds_sum", **labels) == sum(holds)
    assert sample("django_dbpool_hold_seconds_bucket", le="0.25", **labels) == sum(
        hold <= 0.25 for hold in holds
    )
    assert sample("django_dbpool_hold_seconds_bucket", le="0.5", **labels) == len(holds)
    assert sample("django_dbpool_checkouts_total", **labels) == len(holds)
    assert sample("django_dbpool_connections", state="parked", **labels) == 3


def test_multiprocess_mode_adds_what_each_publication_added(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    client = types.SimpleNamespace(
        Gauge=functools.partial(prometheus_client.Gauge, registry=registry),
        Counter=functools.partial(prometheus_client.Counter, registry=registry),
        Histogram=functools.partial(prometheus_client.Histogram, registry=registry),
    )
    monkeypatch.setattr(metrics, "_multiprocess", metrics._multiprocess_metrics(client))
    monkeypatch.setattr(metrics, "_previous", {})
    stats = snapshot_document()["pools"]["default"]["stats"]
    labels = {"alias": "default", "vendor": "postgresql"}

    def value(name: str, **more: str) -> float | None:
        return registry.get_sample_value(name, {**labels, **more})

    stats["counters"].update(pinned=2, pins={**stats["counters"]["pins"], "cursor": 2})
    metrics.update_multiprocess("default", "postgresql", stats, "transaction")
    stats["counters"].update(pinned=3, pins={**stats["counters"]["pins"], "shared": 1})
    metrics.update_multiprocess("default", "postgresql", stats, "transaction")
    assert value("django_dbpool_pinned_leases_total") == 3
    assert value("django_dbpool_lease_pins_total", reason="cursor") == 2
    assert value("django_dbpool_lease_pins_total", reason="shared") == 1
    assert value("django_dbpool_lease_pins_total", reason="transaction") is None  # never counted
    assert value("django_dbpool_lease_mode", mode="transaction") == 1
    # The alias's pool replaced with other settings: the process counts under its new LEASE.
    metrics.update_multiprocess("default", "postgresql", stats, "request")
    assert value("django_dbpool_lease_mode", mode="transaction") == 0
    assert value("django_dbpool_lease_mode", mode="request") == 1
    assert value("django_dbpool_pinned_leases_total") == 3


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
