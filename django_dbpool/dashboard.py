"""The data behind the admin dashboard: one JSON-ready document for the page and its
refreshes, built from the snapshots every pooled process on this host publishes (never from
this process's pools alone) and from the database's own view of its connections.

It never contains a password: the configuration shown is a fixed list of connection
settings (no ``PASSWORD``, no ``OPTIONS``, which may carry credentials) and the pool options.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from . import snapshots
from .backends.support import support_for_alias
from .checks import pooled_aliases
from .options import alias_options
from .serverview import server_view

__all__ = ["COUNTERS", "GAUGES", "LEASES", "REFRESH_SECONDS", "dashboard_data"]

#: How often the page asks for fresh data; processes publish about once a second.
REFRESH_SECONDS = 2
#: The page asks for the servers' view at every this many refreshes only: it borrows a
#: connection from the very pools it watches, which may be the ones running out.
SERVER_EVERY = 5
#: The longest a refresh waits for the servers' own view before it reports no answer.
SERVER_VIEW_TIMEOUT = 5.0

#: (key, label) of the gauges drawn as bars against the pool's maximum.
GAUGES: tuple[tuple[str, str], ...] = (
    ("in_use", "In use"),
    ("idle", "Idle"),
    ("parked", "Parked"),
    ("waiting", "Waiting"),
    ("size", "Open"),
)
#: (path in an alias's document, label, what it counts, format), in page order. Formats:
#: "count", "rate" (per second), "seconds" (shown in ms below one second) and "text".
COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("counters.acquired", "Checkouts", "connections handed out", "count"),
    ("checkouts_per_second", "Checkouts/s", "over the last publication", "rate"),
    ("wait_p99_seconds", "Wait p99", "99% of checkouts waited at most this", "seconds"),
    ("counters.timeouts", "Timeouts", "callers that waited TIMEOUT and gave up", "count"),
    ("counters.exhausted", "Exhausted", "refused at once: MAX_WAITING reached", "count"),
    ("counters.unavailable", "Unavailable", "refused while the database was down", "count"),
    ("counters.opened", "Opened", "physical connections opened", "count"),
    ("counters.connect_errors", "Connect errors", "failed attempts to open one", "count"),
    ("counters.validations", "Validations", "idle connections probed before use", "count"),
    ("counters.validations_failed", "Failed validations", "probes that found one dead", "count"),
    ("counters.leaks", "Leaks", "held longer than LEAK_TIMEOUT", "count"),
    ("counters.orphans_reclaimed", "Orphans reclaimed", "taken back from dead threads", "count"),
    ("counters.closed.idle", "Closed: idle", "idle longer than MAX_IDLE", "count"),
    ("counters.closed.lifetime", "Closed: lifetime", "older than MAX_LIFETIME", "count"),
    ("counters.closed.broken", "Closed: broken", "found broken", "count"),
    ("counters.closed.reset_failed", "Closed: reset failed", "could not be cleaned", "count"),
    ("counters.closed.shutdown", "Closed: shutdown", "closed with the pool", "count"),
)
#: The same for the leases (LEASE; one checkout is one lease), in page order.
LEASES: tuple[tuple[str, str, str, str], ...] = (
    ("lease", "Lease", "LEASE: held for a request, or for a statement or transaction", "text"),
    ("checkouts_per_second", "Leases/s", "checkouts, over the last publication", "rate"),
    ("hold_mean_seconds", "Hold mean", "how long a lease lasted, on average", "seconds"),
    ("hold_p99_seconds", "Hold p99", "99% of leases lasted at most this", "seconds"),
    ("counters.pinned", "Pinned", "leases kept past a statement or transaction", "count"),
    ("counters.pins.transaction", "Pins: transaction", "a transaction was open", "count"),
    ("counters.pins.cursor", "Pins: cursor", "a cursor was still open", "count"),
    ("counters.pins.pinned", "Pins: pinned()", "the code asked for one session", "count"),
    ("counters.pins.raw_connection", "Pins: raw connection", "the code took the driver's", "count"),
    ("counters.pins.session_sql", "Pins: session SQL", "a statement changed the session", "count"),
    ("counters.pins.shared", "Pins: shared", "several threads used the lease", "count"),
)
# The only connection settings shown; PASSWORD and OPTIONS are deliberately absent.
_CONNECTION_SETTINGS = ("ENGINE", "HOST", "PORT", "NAME", "USER")


def dashboard_data(*, server: bool = True) -> dict[str, Any]:
    """``{"generated_at", "refresh_seconds", "server_every", "aliases": [{"alias", "vendor",
    "lease", "processes", "gauges", "counters", "checkouts_per_second", "wait_p99_seconds",
    "hold_mean_seconds", "hold_p99_seconds", "per_process", "configuration"}], "servers":
    [...]}``: per alias, the totals across every publishing process on this host and one row
    per process; with ``server``, the database's view of its connections once per distinct
    server (see :func:`server_views`). ``lease`` is the processes' LEASE (``"mixed"`` when
    they differ), else the configured one."""
    documents = snapshots.read_snapshots()
    totals = snapshots.totals(documents)
    configured = pooled_aliases()
    aliases = configured + [alias for alias in totals if alias not in configured]
    now = time.time()
    entries = []
    for alias in aliases:
        rows = _per_process(documents, alias, now)
        total = totals.get(alias, {})
        configuration = _configuration(alias)
        hold = total.get("histograms", {}).get("hold_seconds", {})
        entries.append(
            {
                "alias": alias,
                "vendor": total.get("vendor") or _vendor(alias),
                "lease": total.get("lease") or configuration["pool"].get("LEASE"),
                "processes": total.get("processes", 0),
                "gauges": total.get("gauges", {}),
                "counters": total.get("counters", {}),
                "checkouts_per_second": total.get("checkouts_per_second", 0.0),
                "wait_p99_seconds": _merged_percentile([row["wait_seconds"] for row in rows], 0.99),
                "hold_mean_seconds": hold["sum"] / hold["count"] if hold.get("count") else None,
                "hold_p99_seconds": _merged_percentile([row["hold_seconds"] for row in rows], 0.99),
                "per_process": [_public_row(row) for row in rows],
                "configuration": configuration,
            }
        )
    return {
        "generated_at": now,
        "refresh_seconds": REFRESH_SECONDS,
        "server_every": SERVER_EVERY,
        "aliases": entries,
        "servers": server_views(configured) if server else [],
    }


def _per_process(
    documents: Sequence[Mapping[str, Any]], alias: str, now: float
) -> list[dict[str, Any]]:
    rows = []
    for document in documents:
        entry = document.get("pools", {}).get(alias)
        if entry is None:
            continue
        stats = entry["stats"]
        rows.append(
            {
                "pid": document.get("pid"),
                "host": document.get("host"),
                "process": document.get("process", ""),
                "started_at": document.get("started_at"),
                "updated_at": document.get("updated_at"),
                "age_seconds": max(0.0, now - float(document.get("updated_at") or now)),
                "lease": entry["lease"],
                "gauges": stats["gauges"],
                "counters": stats["counters"],
                "checkouts_per_second": entry.get("checkouts_per_second") or 0.0,
                "wait_p99_seconds": entry.get("wait_p99_seconds"),
                "hold_p99_seconds": entry["hold_p99_seconds"],
                "wait_seconds": stats["histograms"]["wait_seconds"],
                "hold_seconds": stats["histograms"]["hold_seconds"],
            }
        )
    return rows


def _public_row(row: Mapping[str, Any]) -> dict[str, Any]:
    # The histograms only feed the merged percentiles; the page shows each process's p99.
    return {k: v for k, v in row.items() if k not in ("wait_seconds", "hold_seconds")}


def _merged_percentile(histograms: Iterable[Mapping[str, Any]], fraction: float) -> float | None:
    """The quantile across processes (:func:`snapshots.quantile`): every process uses the
    same bucket bounds, so the cumulative counts add up."""
    count = 0
    largest = 0.0
    cumulative: dict[float, int] = {}
    for histogram in histograms:
        count += int(histogram["count"])
        largest = max(largest, float(histogram["max"]))
        for bound, n in histogram["buckets"].items():
            key = float("inf") if bound == "+Inf" else float(bound)
            cumulative[key] = cumulative.get(key, 0) + int(n)
    return snapshots.quantile(sorted(cumulative.items()), count, largest, fraction)


def _vendor(alias: str) -> str:
    support = support_for_alias(alias)
    return support.vendor if support is not None else ""


def _configuration(alias: str) -> dict[str, Any]:
    settings_dict = connections.settings.get(alias)
    if settings_dict is None:
        return {"connection": {}, "pool": {}}  # published by a process with other settings
    connection = {key: settings_dict.get(key) or "" for key in _CONNECTION_SETTINGS}
    try:
        options = alias_options(alias, settings_dict)
        pool: dict[str, Any] = {**options.pool.as_settings(), "LEASE": options.lease}
    except ImproperlyConfigured as exc:
        pool = {"error": str(exc)}  # names the option and its value, never a credential
    return {"connection": connection, "pool": pool}


def server_views(aliases: Sequence[str], timeout: float = SERVER_VIEW_TIMEOUT) -> list[Any]:
    """The database's view of its connections (:func:`serverview.server_view`), once per
    distinct server (vendor, host, port, user) with the aliases that use it; an entry with
    ``"error"`` when the server did not answer within ``timeout`` seconds."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for alias in aliases:
        settings_dict = connections.settings[alias]
        key = (
            _vendor(alias),
            *(str(settings_dict.get(name) or "") for name in ("HOST", "PORT", "USER")),
        )
        groups.setdefault(key, []).append(alias)
    results: dict[str, dict[str, Any]] = {}
    # A thread of its own: its connections are its own (server_view closes the connection
    # it used, which must not be the request's, perhaps inside ATOMIC_REQUESTS), and a
    # server that stopped answering cannot hold the admin request past the timeout.
    worker = threading.Thread(
        target=_collect,
        args=([members[0] for members in groups.values()], results),
        daemon=True,
        name="django_dbpool dashboard server view",
    )
    worker.start()
    worker.join(timeout)
    views = []
    for members in groups.values():
        found = results.get(members[0]) or {"error": f"no answer within {timeout:g} s"}
        views.append({"aliases": members, **found})
    return views


def _collect(aliases: Sequence[str], results: dict[str, dict[str, Any]]) -> None:
    for alias in aliases:
        try:
            view = server_view(alias)
        except Exception as exc:  # shown on the page; the other servers still answer
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            view = {"error": f"{type(exc).__name__}: {first_line}"[:300]}
        finally:
            connections[alias].close()  # back to the pool even when the query failed
        results[alias] = view


def page_context(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The aliases of :func:`dashboard_data` with what the template shows first (the
    script keeps it current with the same formats): gauge, counter, lease and process rows."""
    pools = []
    for entry in data["aliases"]:
        gauges = entry["gauges"]
        maximum = int(gauges.get("max_size", 0))
        pools.append(
            {
                **entry,
                "gauge_rows": [
                    {
                        "key": key,
                        "label": label,
                        "value": int(gauges.get(key, 0)),
                        "max": maximum,
                        "percent": _percent(int(gauges.get(key, 0)), maximum),
                        "level": gauge_level(key, int(gauges.get(key, 0)), maximum),
                    }
                    for key, label in GAUGES
                ],
                "counter_rows": _figure_rows(entry, COUNTERS),
                "lease_rows": _figure_rows(entry, LEASES),
                "process_rows": [
                    {
                        **row,
                        "rate_text": display(row["checkouts_per_second"], "rate"),
                        "p99_text": display(row["wait_p99_seconds"], "seconds"),
                        "age_text": f"{row['age_seconds']:.1f} s ago",
                    }
                    for row in entry["per_process"]
                ],
            }
        )
    return pools


def _figure_rows(
    entry: Mapping[str, Any], table: Sequence[tuple[str, str, str, str]]
) -> list[dict[str, str]]:
    return [
        {
            "path": path,
            "label": label,
            "help": help_text,
            "kind": kind,
            "text": display(_lookup(entry, path), kind),
        }
        for path, label, help_text, kind in table
    ]


def _lookup(document: Mapping[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _percent(value: int, maximum: int) -> int:
    return min(100, round(100 * value / maximum)) if maximum > 0 else 0


def gauge_level(key: str, value: int, maximum: int) -> str:
    """``bad`` for any waiting caller or a pool at its bound, ``warn`` from 75% of it."""
    if key == "waiting":
        return "bad" if value > 0 else ""
    if key != "in_use" or maximum <= 0:
        return ""
    if value >= maximum:
        return "bad"
    return "warn" if value >= 0.75 * maximum else ""


def display(value: Any, kind: str) -> str:
    """A value as the page shows it: ``count`` 12, ``rate`` 3.4, ``seconds`` 2.5 ms,
    ``text`` as it is."""
    if value is None:
        return "-"
    if kind == "text":
        return str(value)
    if kind == "rate":
        return f"{float(value):.1f}"
    if kind == "seconds":
        seconds = float(value)
        return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
    return str(int(value))
