"""One source of truth for every view of the pools: per-process snapshots in a directory.

Each process with a pool publishes its stats about once a second (``DBPOOL_STATS_INTERVAL``)
to ``<DBPOOL_STATS_DIR>/<host>-<pid>.json``, from a background thread (never on the
checkout path), written atomically (a temporary file, then ``os.replace``). Reading the
directory gives every pooled process on the host: ``poolstats``, the metrics and the admin
page all read it. Files of processes that are gone are skipped and removed.

A process's file: ``{"pid", "host", "process", "started_at", "updated_at", "interval",
"pools": {alias: {"vendor", "stats" (PoolStats.as_dict()), "checkouts_per_second",
"wait_p99_seconds", "options"}}}``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings

from .pool import PoolStats

__all__ = [
    "disable_publishing",
    "ensure_publisher",
    "publish_now",
    "read_snapshots",
    "stats_dir",
    "totals",
]

logger = logging.getLogger("django_dbpool")

_HOST = socket.gethostname()
_started_at = time.time()
_publisher_pid = 0
#: True once this process publishes, or never will (disable_publishing); false again in a
#: forked child (see _forget_parent_publisher), so that checking it costs no system call.
_publishing = False
_publisher_lock = threading.Lock()
_directory: Path | None = None  # where this process publishes, fixed when publishing starts
_previous: dict[str, tuple[float, int]] = {}  # alias -> (when, acquired) for rates


def stats_dir() -> Path:
    """``DBPOOL_STATS_DIR``, or a directory under the system temp directory that is distinct
    per project (derived from the settings module's name and file)."""
    from .conf import app_settings

    configured = app_settings.STATS_DIR
    if configured:
        return Path(configured)
    module_name = getattr(settings, "SETTINGS_MODULE", None) or "django"
    module = sys.modules.get(module_name)
    origin = f"{module_name}:{getattr(module, '__file__', '')}"
    digest = hashlib.sha256(origin.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"django_dbpool-{module_name.split('.')[0]}-{digest}"


def disable_publishing() -> None:
    """This process never publishes (``poolstats`` itself, for one)."""
    global _publishing
    _publishing = True


def ensure_publisher() -> None:
    """Start this process's publisher thread if it is not running (cheap to call often:
    one global read once it runs). A forked child starts its own."""
    if not _publishing:
        _start_publisher()


def _start_publisher() -> None:
    global _directory, _publisher_pid, _publishing
    with _publisher_lock:
        if _publishing:
            return
        from .conf import app_settings

        interval = app_settings.STATS_INTERVAL
        _publisher_pid = os.getpid()
        _publishing = True
        _previous.clear()
        if interval <= 0:
            return
        _directory = stats_dir()
        thread = threading.Thread(
            target=_publish_loop, args=(interval,), name="django_dbpool publisher", daemon=True
        )
        thread.start()
        atexit.register(forget_own_snapshot)


def _forget_parent_publisher() -> None:
    # In a forked child: the parent's publisher thread did not come along, and its lock may
    # have been held by a thread that does not exist here.
    global _publishing, _publisher_lock
    _publishing = False
    _publisher_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_parent_publisher)


def _publish_loop(interval: float) -> None:
    pid = os.getpid()
    while _publisher_pid == pid:
        try:
            publish_now()
        except Exception:
            logger.warning("publishing pool stats failed", exc_info=True)
        time.sleep(interval)


def _own_file(directory: Path) -> Path:
    return directory / f"{_HOST}-{os.getpid()}.json"


def publish_now() -> Path | None:
    """Write this process's snapshot now; returns its path (None without pools)."""
    from .backends.base import pools
    from .conf import app_settings

    current = pools()
    if not current:
        return None
    from django.db import connections

    now = time.time()
    entries: dict[str, Any] = {}
    from .metrics import update_multiprocess

    for alias, pool in current.items():
        stats = pool.stats()
        vendor = connections[alias].vendor
        as_dict = stats.as_dict()
        update_multiprocess(alias, vendor, as_dict)
        entries[alias] = {
            "vendor": vendor,
            "stats": as_dict,
            "checkouts_per_second": _rate(alias, now, stats.acquired),
            "wait_p99_seconds": percentile(stats, "wait_seconds", 0.99),
            "options": pool.options.as_settings(),
        }
    document = {
        "pid": os.getpid(),
        "host": _HOST,
        "process": process_name(sys.argv),
        "started_at": _started_at,
        "updated_at": now,
        "interval": app_settings.STATS_INTERVAL,
        "pools": entries,
    }
    directory = _directory or stats_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = _own_file(directory)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(document, out)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target


def process_name(argv: list[str]) -> str:
    """``gunicorn example_project.wsgi`` rather than ``__main__.py example_project.wsgi``."""
    if not argv:
        return ""
    program = os.path.basename(argv[0])
    if program == "__main__.py":  # python -m package
        program = os.path.basename(os.path.dirname(argv[0]))
    return " ".join([program, *argv[1:3]])[:200]


def _rate(alias: str, now: float, acquired: int) -> float:
    previous = _previous.get(alias)
    _previous[alias] = (now, acquired)
    if previous is None or now <= previous[0] or acquired < previous[1]:
        return 0.0
    return (acquired - previous[1]) / (now - previous[0])


def percentile(stats: PoolStats, histogram: str, fraction: float) -> float | None:
    """The upper bound of the bucket holding the ``fraction`` quantile (None if empty)."""
    snapshot = getattr(stats, histogram)
    if not snapshot.count:
        return None
    wanted = fraction * snapshot.count
    for bound, cumulative in snapshot.buckets:
        if cumulative >= wanted:
            return float(min(bound, snapshot.max)) if bound != float("inf") else snapshot.max
    return float(snapshot.max)


def forget_own_snapshot() -> None:
    """Remove this process's snapshot (and the directory, if no other process publishes
    there). Called at exit."""
    from .metrics import forget_process

    forget_process()
    if _directory is None or _publisher_pid != os.getpid():
        return
    with contextlib.suppress(OSError):
        _own_file(_directory).unlink()
    with contextlib.suppress(OSError):
        _directory.rmdir()  # only when no other process publishes there any more


def read_snapshots(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every live process's latest snapshot on this host, oldest process first. Files of
    processes that no longer exist are removed."""
    directory = directory or stats_dir()
    snapshots = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or not ours
        if document.get("host") == _HOST and not _alive(int(document.get("pid", 0))):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        snapshots.append(document)
    return sorted(snapshots, key=lambda d: (d.get("started_at", 0), d.get("pid", 0)))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def totals(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per alias, across processes: summed gauges and counters, and the process count."""
    result: dict[str, dict[str, Any]] = {}
    for document in snapshots:
        for alias, entry in document.get("pools", {}).items():
            total = result.setdefault(
                alias,
                {
                    "vendor": entry.get("vendor"),
                    "processes": 0,
                    "gauges": {},
                    "counters": {},
                    "checkouts_per_second": 0.0,
                },
            )
            total["processes"] += 1
            total["checkouts_per_second"] += entry.get("checkouts_per_second") or 0.0
            stats = entry["stats"]
            for name, value in stats["gauges"].items():
                total["gauges"][name] = total["gauges"].get(name, 0) + int(value)
            for name, value in stats["counters"].items():
                if isinstance(value, dict):
                    closed = total["counters"].setdefault(name, {})
                    for reason, count in value.items():
                        closed[reason] = closed.get(reason, 0) + count
                else:
                    total["counters"][name] = total["counters"].get(name, 0) + value
    return result
