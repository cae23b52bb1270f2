"""Prometheus metrics through django-prometheus: the pools of every worker, and query metrics.

Installed from ``AppConfig.ready()`` when ``django_prometheus`` is in ``INSTALLED_APPS``.

- **Pool series** (``django_dbpool_*``, labels ``alias`` and ``vendor``) come from the
  snapshots every pooled process publishes (``django_dbpool.snapshots``), never from the
  checkout path. Without ``PROMETHEUS_MULTIPROC_DIR`` a collector reads the snapshot
  directory at scrape time, so a scrape of any worker reports every worker on the host,
  summed per alias: nothing is counted twice. With it, django-prometheus's ``/metrics`` reads
  only the multiprocess files, so the publisher thread also feeds multiprocess-aware metrics
  (gauges summed over live processes, counters and histograms over all).
- **Query series**: the ``django_db_*`` series django-prometheus's own backends export
  (executions, errors, query duration, new connections), through its own cursor wrapper and
  counters, with "new connections" counting physical connects, not checkouts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from . import snapshots
from .pool.stats import BUCKETS_SECONDS

__all__ = [
    "forget_process",
    "install",
    "query_metrics_enabled",
    "record_connect",
    "update_multiprocess",
]

_lock = threading.Lock()
_installed = False
_multiprocess: dict[str, Any] | None = None
_previous: dict[tuple[str, str], dict[str, Any]] = {}  # (alias, pid-scoped) -> last counters

GAUGES = {
    # name: (help, how to read it from a snapshot's gauges)
    "django_dbpool_connections": (
        "Physical connections of the pool, by state (in_use, idle, parked)."
    ),
    "django_dbpool_max_connections": "MAX_SIZE of the pool: the bound on its connections.",
    "django_dbpool_waiting_callers": "Callers waiting for a connection.",
    "django_dbpool_processes": "Processes on this host with a pool for the alias.",
    "django_dbpool_lease_mode": (
        "Processes on this host with a pool for the alias, by its LEASE (request, transaction)."
    ),
}
COUNTERS = {
    # metric name (without _total): (help, counter key in a snapshot)
    "django_dbpool_checkouts": ("Connections handed out.", "acquired"),
    "django_dbpool_timeouts": ("Checkouts that gave up after TIMEOUT.", "timeouts"),
    "django_dbpool_exhausted": ("Checkouts refused at once (MAX_WAITING).", "exhausted"),
    "django_dbpool_unavailable": ("Checkouts refused while failing fast.", "unavailable"),
    "django_dbpool_connections_opened": ("Physical connections opened.", "opened"),
    "django_dbpool_connect_errors": ("Failed connects.", "connect_errors"),
    "django_dbpool_leaks": ("Connections held past LEAK_TIMEOUT.", "leaks"),
    "django_dbpool_orphans": ("Connections reclaimed from exited threads.", "orphans_reclaimed"),
    "django_dbpool_pinned_leases": (
        "Transaction leases held past the end of their statement or transaction.",
        "pinned",
    ),
}
CLOSED = "django_dbpool_connections_closed"
PINS = "django_dbpool_lease_pins"
BY_REASON = {
    # metric name (without _total): (help, counter key in a snapshot: a mapping by reason)
    CLOSED: ("Physical connections closed, by reason.", "closed"),
    PINS: ("Pinned leases, by what held them (a lease counts once per reason).", "pins"),
}
HISTOGRAMS = {
    "django_dbpool_acquire_wait_seconds": ("Time callers waited for a connection.", "wait_seconds"),
    "django_dbpool_hold_seconds": ("Time connections were held by their borrower.", "hold_seconds"),
    "django_dbpool_connect_seconds": ("Time physical connects took.", "connect_seconds"),
}
LABELS = ("alias", "vendor")


def query_metrics_enabled() -> bool:
    return _installed


def install() -> None:
    """Register the pool collector (or the multiprocess metrics) once. Idempotent; does
    nothing unless ``django_prometheus`` is in ``INSTALLED_APPS``: installed but not enabled,
    it adds no query metrics (and no per-statement cost), as with Django's stock backends."""
    global _installed, _multiprocess
    from django.apps import apps

    with _lock:
        if _installed or not apps.is_installed("django_prometheus"):
            return
        try:
            import django_prometheus.db  # noqa: F401 - its django_db_* metrics
            import prometheus_client
        except ImportError:
            return
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ:
            _multiprocess = _multiprocess_metrics(prometheus_client)
            # Each publication of this process's snapshot feeds the metrics files.
            snapshots.subscribe(update_multiprocess, forget_process)
        else:
            prometheus_client.REGISTRY.register(PoolCollector())
        _installed = True


# -- scrape-time collector (one process reports the whole host) ---------------------------------


class PoolCollector:
    """Reads every process's snapshot and yields the pool series, summed per alias."""

    def describe(self) -> list[Any]:
        return []  # collected at scrape time: no fixed description up front

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        per_alias = snapshots.totals_by_vendor(snapshots.read_snapshots())
        connections = GaugeMetricFamily(
            "django_dbpool_connections",
            GAUGES["django_dbpool_connections"],
            labels=[*LABELS, "state"],
        )
        maximum = GaugeMetricFamily(
            "django_dbpool_max_connections",
            GAUGES["django_dbpool_max_connections"],
            labels=LABELS,
        )
        waiting = GaugeMetricFamily(
            "django_dbpool_waiting_callers",
            GAUGES["django_dbpool_waiting_callers"],
            labels=LABELS,
        )
        processes = GaugeMetricFamily(
            "django_dbpool_processes", GAUGES["django_dbpool_processes"], labels=LABELS
        )
        lease_mode = GaugeMetricFamily(
            "django_dbpool_lease_mode",
            GAUGES["django_dbpool_lease_mode"],
            labels=[*LABELS, "mode"],
        )
        counters = {
            name: CounterMetricFamily(name, help_text, labels=LABELS)
            for name, (help_text, _) in COUNTERS.items()
        }
        by_reason = {
            name: CounterMetricFamily(name, help_text, labels=[*LABELS, "reason"])
            for name, (help_text, _) in BY_REASON.items()
        }
        histograms = {
            name: HistogramMetricFamily(name, help_text, labels=LABELS)
            for name, (help_text, _) in HISTOGRAMS.items()
        }
        for (alias, vendor), data in sorted(per_alias.items()):
            labels = [alias, vendor]
            gauges = data["gauges"]
            connections.add_metric([*labels, "in_use"], gauges["in_use"])
            connections.add_metric([*labels, "idle"], gauges["idle"])
            connections.add_metric([*labels, "parked"], gauges["parked"])
            maximum.add_metric(labels, gauges["max_size"])
            waiting.add_metric(labels, gauges["waiting"])
            processes.add_metric(labels, data["processes"])
            for mode, count in sorted(data["leases"].items()):
                lease_mode.add_metric([*labels, mode], count)
            for name, (_, key) in COUNTERS.items():
                counters[name].add_metric(labels, data["counters"][key])
            for name, (_, key) in BY_REASON.items():
                for reason, count in sorted(data["counters"].get(key, {}).items()):
                    by_reason[name].add_metric([*labels, reason], count)
            for name, (_, key) in HISTOGRAMS.items():
                histogram = data["histograms"][key]
                histograms[name].add_metric(
                    labels,
                    sorted(histogram["buckets"].items(), key=_le_order),
                    histogram["sum"],
                )
        yield from (
            connections,
            maximum,
            waiting,
            processes,
            lease_mode,
            *counters.values(),
            *by_reason.values(),
            *histograms.values(),
        )


def _le_order(item: tuple[Any, ...]) -> float:
    return float("inf") if item[0] == "+Inf" else float(item[0])


# -- multiprocess mode: the publisher feeds metrics that django-prometheus's view reads ---------


def _multiprocess_metrics(prometheus_client: Any) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "django_dbpool_connections": prometheus_client.Gauge(
            "django_dbpool_connections",
            GAUGES["django_dbpool_connections"],
            [*LABELS, "state"],
            multiprocess_mode="livesum",
        ),
        "django_dbpool_max_connections": prometheus_client.Gauge(
            "django_dbpool_max_connections",
            GAUGES["django_dbpool_max_connections"],
            LABELS,
            multiprocess_mode="livesum",
        ),
        "django_dbpool_waiting_callers": prometheus_client.Gauge(
            "django_dbpool_waiting_callers",
            GAUGES["django_dbpool_waiting_callers"],
            LABELS,
            multiprocess_mode="livesum",
        ),
        "django_dbpool_processes": prometheus_client.Gauge(
            "django_dbpool_processes",
            GAUGES["django_dbpool_processes"],
            LABELS,
            multiprocess_mode="livesum",
        ),
        "django_dbpool_lease_mode": prometheus_client.Gauge(
            "django_dbpool_lease_mode",
            GAUGES["django_dbpool_lease_mode"],
            [*LABELS, "mode"],
            multiprocess_mode="livesum",
        ),
    }
    for name, (help_text, _) in COUNTERS.items():
        metrics[name] = prometheus_client.Counter(name, help_text, LABELS)
    for name, (help_text, _) in BY_REASON.items():
        metrics[name] = prometheus_client.Counter(name, help_text, [*LABELS, "reason"])
    for name, (help_text, _) in HISTOGRAMS.items():
        metrics[name] = prometheus_client.Histogram(
            name, help_text, LABELS, buckets=BUCKETS_SECONDS
        )
    return metrics


def update_multiprocess(alias: str, vendor: str, stats: Mapping[str, Any], lease: str) -> None:
    """Called by the publisher with this process's snapshot of one pool and its LEASE."""
    metrics = _multiprocess
    if metrics is None:
        return
    gauges, counters = stats["gauges"], stats["counters"]
    metrics["django_dbpool_connections"].labels(alias, vendor, "in_use").set(gauges["in_use"])
    metrics["django_dbpool_connections"].labels(alias, vendor, "idle").set(gauges["idle"])
    metrics["django_dbpool_connections"].labels(alias, vendor, "parked").set(gauges["parked"])
    metrics["django_dbpool_max_connections"].labels(alias, vendor).set(gauges["max_size"])
    metrics["django_dbpool_waiting_callers"].labels(alias, vendor).set(gauges["waiting"])
    metrics["django_dbpool_processes"].labels(alias, vendor).set(1)
    key = (alias, str(os.getpid()))
    before = _previous.get(key, {})
    if before.get("lease", lease) != lease:  # the alias's pool was replaced with new settings
        metrics["django_dbpool_lease_mode"].labels(alias, vendor, before["lease"]).set(0)
    metrics["django_dbpool_lease_mode"].labels(alias, vendor, lease).set(1)
    for name, (_, field) in COUNTERS.items():
        delta = counters[field] - before.get(field, 0)
        if delta > 0:
            metrics[name].labels(alias, vendor).inc(delta)
    for name, (_, field) in BY_REASON.items():
        for reason, count in counters[field].items():
            delta = count - before.get(f"{field}:{reason}", 0)
            if delta > 0:
                metrics[name].labels(alias, vendor, reason).inc(delta)
    for name, (_, field) in HISTOGRAMS.items():
        _add_histogram(
            metrics[name].labels(alias, vendor),
            stats["histograms"][field],
            before.get(f"hist:{field}"),
        )
    remembered: dict[str, Any] = {field: counters[field] for _, field in COUNTERS.values()}
    for _, field in BY_REASON.values():
        remembered.update({f"{field}:{r}": c for r, c in counters[field].items()})
    remembered["lease"] = lease
    remembered.update({f"hist:{f}": stats["histograms"][f] for _, f in HISTOGRAMS.values()})
    _previous[key] = remembered


def _add_histogram(child: Any, now: Mapping[str, Any], before: Mapping[str, Any] | None) -> None:
    # prometheus_client keeps one (non-cumulative) value per bucket and a sum; our snapshots
    # are cumulative counts since the pool started: add the difference since the last one.
    previous = before["buckets"] if before else {}
    cumulative_then = 0
    cumulative_now = 0
    for index, le in enumerate(sorted(now["buckets"], key=lambda b: _le_order((b, 0)))):
        then_count = previous.get(le, 0)
        in_bucket_now = now["buckets"][le] - cumulative_now
        in_bucket_then = then_count - cumulative_then
        cumulative_now, cumulative_then = now["buckets"][le], then_count
        delta = in_bucket_now - in_bucket_then
        if delta > 0:
            child._buckets[index].inc(delta)
    sum_delta = now["sum"] - (before["sum"] if before else 0.0)
    if sum_delta > 0:
        child._sum.inc(sum_delta)


def record_connect(alias: str, vendor: str, error: BaseException | None) -> None:
    """Count a physical connect (or a failed one) in django-prometheus's
    ``django_db_new_connections_total`` / ``django_db_new_connection_errors_total``."""
    if not _installed:
        return
    from django_prometheus.db import connection_errors_total, connections_total

    connections_total.labels(alias, vendor).inc()
    if error is not None:
        connection_errors_total.labels(alias, vendor).inc()


def forget_process() -> None:
    """At exit, in multiprocess mode: drop this process's live gauges (prometheus_client's
    ``mark_process_dead``), so that they stop counting once it is gone."""
    if _multiprocess is None:
        return
    from prometheus_client import multiprocess

    # prometheus_client still honours the lower-case spelling of the variable.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir"  # noqa: SIM112
    )
    multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
