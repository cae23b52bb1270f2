"""One source of truth for every view of the pools: per-process snapshots in a directory.

Each process with a pool publishes its stats about once a second (``DBPOOL_STATS_INTERVAL``)
to ``<DBPOOL_STATS_DIR>/<host>-<pid>.json``, from a background thread (never on the
checkout path), written atomically (a new temporary file, then ``os.replace``). Reading the
directory gives every pooled process on the host: ``poolstats``, the metrics and the admin
page all read it through :func:`read_snapshots`. Files of processes that are gone are
skipped and removed.

Whoever can write to the directory can forge, hide or delete the figures, so it must be this
user's alone: a real directory (not a symbolic link), owned by this process's user and
writable by no one else (the default one has the uid in its name; a missing one is created
with mode 0700). Otherwise nothing is published there or read from it, and one warning per
process says why. Files are opened without following symbolic links, and a file that is not
a well-formed snapshot is skipped with a warning naming it: no reader crashes on one.

A process's file: ``{"pid", "host", "process", "started_at", "updated_at", "interval",
"pools": {alias: {"vendor", "lease" (the alias's LEASE), "stats" (PoolStats.as_dict()),
"checkouts_per_second", "wait_p99_seconds", "hold_p99_seconds", "options"}}}``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings

from . import snapshot_schema
from .conf import app_settings
from .pool import PoolStats
from .registry import described_pools
from .snapshot_schema import Invalid

__all__ = [
    "check_stats_dir",
    "disable_publishing",
    "ensure_publisher",
    "publish_now",
    "read_snapshots",
    "stats_dir",
    "subscribe",
    "totals",
]

logger = logging.getLogger("django_dbpool")

_HOST = socket.gethostname()
_started_at = time.time()
_publisher_pid = 0
#: True once this process publishes, or never will (disable_publishing); false again in a
#: forked child (see after_fork_in_child), so that checking it costs no system call.
_publishing = False
_publisher_lock = threading.Lock()
_directory: Path | None = None  # where this process publishes, fixed when publishing starts
_previous: dict[str, tuple[float, int]] = {}  # alias -> (when, acquired) for rates
# (path, message) of the warnings given: the publisher and the readers run every second
# or so, and a refused directory or a bad file is worth one warning per process, not one
# per tick.
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()

#: The largest snapshot file read; ours take a few kilobytes per alias.
MAX_DOCUMENT_BYTES = 1 << 20


def stats_dir() -> Path:
    """``DBPOOL_STATS_DIR``, or a directory under the system temp directory that is distinct
    per user and per project (named after the uid, and derived from the settings module's
    name and file). Only the path: :func:`check_stats_dir` says whether it may be used."""
    configured = app_settings.STATS_DIR
    if configured:
        return Path(configured)
    module_name = getattr(settings, "SETTINGS_MODULE", None) or "django"
    module = sys.modules.get(module_name)
    origin = f"{module_name}:{getattr(module, '__file__', '')}"
    digest = hashlib.sha256(origin.encode()).hexdigest()[:12]
    project = module_name.split(".")[0]
    return Path(tempfile.gettempdir()) / f"django_dbpool-{os.geteuid()}-{project}-{digest}"


def check_stats_dir(directory: Path | None = None) -> str | None:
    """Why ``directory`` (default: :func:`stats_dir`) is refused for pool stats, naming the
    path, what is wrong and how to fix it; None when it may be used or does not exist yet.
    Creates nothing and logs nothing."""
    try:
        handle = _open_directory(directory or stats_dir(), create=False)
    except _Refused as refused:
        return str(refused)
    if handle is not None:
        os.close(handle)
    return None


class _Refused(Exception):
    """The stats directory may not be used; the message says why and how to fix it."""


_FIX = (
    "Set DBPOOL_STATS_DIR to a directory owned by this user that no one else can write "
    "(a missing one is created with mode 0700)"
)


def _refused(directory: Path, what: str, remedy: str = "") -> _Refused:
    return _Refused(
        f"Not publishing or reading pool stats in {directory}: it {what}. {_FIX}{remedy}."
    )


def _open_directory(directory: Path, *, create: bool) -> int | None:
    # A descriptor of the checked directory (None: it does not exist). Every file operation
    # goes through it, so the path cannot be swapped for another directory after the check.
    if create:
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # checked below like any existing one
        except OSError as exc:
            raise _refused(directory, f"cannot be created ({exc.strerror})") from None
    try:
        status = os.lstat(directory)  # lstat: a symbolic link is judged, not its target
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refused(directory, f"cannot be examined ({exc.strerror})") from None
    if stat.S_ISLNK(status.st_mode):
        raise _refused(directory, "is a symbolic link", ", or remove the link")
    if not stat.S_ISDIR(status.st_mode):
        raise _refused(directory, "is not a directory", ", or remove it")
    if status.st_uid != os.geteuid():
        raise _refused(
            directory,
            f"belongs to another user (uid {status.st_uid}; this process runs as uid "
            f"{os.geteuid()}), who could forge, hide or delete the figures",
            ", or remove it",
        )
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _refused(
            directory,
            f"is writable by other users (mode {stat.S_IMODE(status.st_mode):o}), who could "
            "forge, hide or delete the figures",
            f", or make it private: chmod 700 {directory}",
        )
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        handle = os.open(directory, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refused(directory, f"cannot be opened ({exc.strerror})") from None
    opened = os.fstat(handle)
    if (opened.st_dev, opened.st_ino) != (status.st_dev, status.st_ino):
        os.close(handle)
        raise _refused(directory, "was replaced while it was being checked")
    return handle


def _warn_once(path: Path, message: str) -> None:
    with _warned_lock:
        if (str(path), message) in _warned:
            return
        _warned.add((str(path), message))
    logger.warning("%s", message)


OnPublish = Callable[[str, str, Mapping[str, Any], str], object]
#: (on_publish(alias, vendor, stats as a dict, lease), on_forget()) pairs: see subscribe().
_subscribers: list[tuple[OnPublish, Callable[[], object]]] = []


def subscribe(on_publish: OnPublish, on_forget: Callable[[], object]) -> None:
    """Have ``on_publish(alias, vendor, stats, lease)`` called for each pool as this process
    publishes its snapshot (``stats``: ``PoolStats.as_dict()``), and ``on_forget()`` as it
    removes it at exit. Idempotent for the same pair (the metrics subscribe)."""
    if (on_publish, on_forget) not in _subscribers:
        _subscribers.append((on_publish, on_forget))


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


def after_fork_in_child() -> None:
    """In a forked child (``lifecycle``): the parent's publisher thread did not come along,
    and its locks may have been held by a thread that does not exist here. The child's pools
    start its own publisher as they start."""
    global _publishing, _publisher_lock, _warned_lock
    _publishing = False
    _publisher_lock = threading.Lock()
    _warned_lock = threading.Lock()


def _publish_loop(interval: float) -> None:
    pid = os.getpid()
    while _publisher_pid == pid:
        try:
            publish_now()
        except Exception:
            logger.warning("publishing pool stats failed", exc_info=True)
        time.sleep(interval)


def _own_name() -> str:
    return f"{_HOST}-{os.getpid()}.json"


def publish_now(directory: Path | None = None) -> Path | None:
    """Write this process's snapshot now, in ``directory`` (default: where this process
    publishes); returns its path. None without pools, or when the directory is refused
    (see :func:`check_stats_dir`; that is logged once per process, not raised)."""
    current = described_pools()
    if not current:
        return None
    now = time.time()
    entries: dict[str, Any] = {}
    for alias, (pool, vendor, lease) in current.items():
        stats = pool.stats()
        as_dict = stats.as_dict()
        for on_publish, _ in _subscribers:
            on_publish(alias, vendor, as_dict, lease)
        entries[alias] = {
            "vendor": vendor,
            "lease": lease,
            "stats": as_dict,
            "checkouts_per_second": _rate(alias, now, stats.acquired),
            "wait_p99_seconds": percentile(stats, "wait_seconds", 0.99),
            "hold_p99_seconds": percentile(stats, "hold_seconds", 0.99),
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
    directory = directory or _directory or stats_dir()
    try:
        handle = _open_directory(directory, create=True)
    except _Refused as refused:
        _warn_once(directory, str(refused))
        return None
    if handle is None:
        return None  # removed since it was created: the next publication creates it again
    name = _own_name()
    try:
        _write(handle, name, json.dumps(document).encode())
    finally:
        os.close(handle)
    return directory / name


def _write(directory: int, name: str, data: bytes) -> None:
    # A new file (O_EXCL: never one that exists; O_NOFOLLOW: never through a link), renamed
    # over the old one: readers see the old document or the new one, never half of one, and
    # a symbolic link planted at the name is replaced, not written through.
    temporary = f".{name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    handle = os.open(temporary, flags, 0o600, dir_fd=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory)
        raise


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
    """The ``fraction`` quantile of one of ``stats``' histograms (see :func:`quantile`)."""
    snapshot = getattr(stats, histogram)
    return quantile(snapshot.buckets, snapshot.count, snapshot.max, fraction)


def quantile(
    buckets: Iterable[tuple[float, int]], count: int, largest: float, fraction: float
) -> float | None:
    """The ``fraction`` quantile of a histogram given as ``(upper bound, cumulative count)``
    pairs in ascending order, ``count`` values in all, the largest ``largest``: the upper
    bound of the bucket that holds it, capped at ``largest``. None when empty."""
    if not count:
        return None
    wanted = fraction * count
    for bound, cumulative in buckets:
        if cumulative >= wanted:
            return float(min(bound, largest))
    return float(largest)


def forget_own_snapshot() -> None:
    """Remove this process's snapshot (and the directory, if no other process publishes
    there). Called at exit (``lifecycle``), and by a process dying of a signal."""
    for _, on_forget in _subscribers:
        on_forget()
    if _directory is None or _publisher_pid != os.getpid():
        return
    try:
        handle = _open_directory(_directory, create=False)
    except _Refused:
        return  # nothing was published there
    if handle is None:
        return
    try:
        with contextlib.suppress(OSError):
            os.unlink(_own_name(), dir_fd=handle)
    finally:
        os.close(handle)
    with contextlib.suppress(OSError):
        _directory.rmdir()  # only when no other process publishes there any more


def read_snapshots(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every live process's latest snapshot on this host, oldest process first, each a
    well-formed document (every field the readers use is present, of its type and in its
    range). Never raises for what it finds: a refused directory (see
    :func:`check_stats_dir`) gives none and one warning per process; a file that is not a
    well-formed snapshot, or is a symbolic link, is skipped with a warning naming it. Files
    of processes that no longer exist are removed."""
    directory = directory or stats_dir()
    try:
        handle = _open_directory(directory, create=False)
    except _Refused as refused:
        _warn_once(directory, str(refused))
        return []
    if handle is None:
        return []
    snapshots = []
    try:
        try:
            names = sorted(os.listdir(handle))
        except OSError as exc:
            _warn_once(directory, f"Cannot list the pool stats directory {directory}: {exc}")
            names = []
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue  # a publisher's temporary file, or not a snapshot
            try:
                document = _load(handle, name)
            except FileNotFoundError:
                continue  # removed since the listing: its process has just exited
            except (OSError, ValueError) as exc:
                path = directory / name
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                _warn_once(path, f"Skipping the pool stats file {path}: {reason}.")
                continue
            if document["host"] == _HOST and not _alive(document["pid"]):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=handle)
                continue
            snapshots.append(document)
    finally:
        os.close(handle)
    return sorted(snapshots, key=lambda d: (d["started_at"], d["pid"]))


def _load(directory: int, name: str) -> dict[str, Any]:
    # O_NOFOLLOW: a symbolic link is refused, never followed; O_NONBLOCK: a FIFO under a
    # snapshot's name cannot hang the reader (it is refused as not a regular file).
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        handle = os.open(name, flags, dir_fd=directory)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # Linux, BSD: the name is a link
            raise Invalid("it is a symbolic link, which is not followed") from None
        raise
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise Invalid("it is not a regular file")
        data = file.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise Invalid(f"it is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        loaded = json.loads(data, parse_constant=snapshot_schema.not_a_number)
    except RecursionError:
        raise Invalid("it is nested too deeply") from None
    except ValueError as exc:
        raise Invalid(f"it is not JSON ({exc})") from None
    return snapshot_schema.document(loaded)


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
    """Per alias, across processes: summed gauges and counters (those by reason per reason),
    the process count, the processes per lease mode (``leases``) and the lease mode
    (``"mixed"`` when processes differ), and each histogram's summed count, sum and
    cumulative buckets. ``vendor`` is the first process's; see :func:`totals_by_vendor`."""
    return _totals(snapshots, lambda alias, entry: alias)


def totals_by_vendor(
    snapshots: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, str], dict[str, Any]]:
    """:func:`totals` per (alias, vendor): processes whose alias points at another product
    are kept apart (the metrics' labels)."""
    return _totals(snapshots, lambda alias, entry: (alias, str(entry.get("vendor", ""))))


K = TypeVar("K")


def _totals(
    snapshots: Sequence[Mapping[str, Any]], key: Callable[[str, Mapping[str, Any]], K]
) -> dict[K, dict[str, Any]]:
    result: dict[K, dict[str, Any]] = {}
    for document in snapshots:
        for alias, entry in document.get("pools", {}).items():
            total = result.setdefault(
                key(alias, entry),
                {
                    "vendor": entry.get("vendor"),
                    "lease": entry["lease"],
                    "leases": {},
                    "processes": 0,
                    "gauges": {},
                    "counters": {},
                    "histograms": {},
                    "checkouts_per_second": 0.0,
                },
            )
            total["processes"] += 1
            total["checkouts_per_second"] += entry.get("checkouts_per_second") or 0.0
            leases = total["leases"]
            leases[entry["lease"]] = leases.get(entry["lease"], 0) + 1
            if total["lease"] != entry["lease"]:
                total["lease"] = "mixed"
            stats = entry["stats"]
            for name, histogram in stats["histograms"].items():
                summed = total["histograms"].setdefault(
                    name, {"count": 0, "sum": 0.0, "buckets": {}}
                )
                summed["count"] += histogram["count"]
                summed["sum"] += histogram["sum"]
                for le, count in histogram["buckets"].items():
                    summed["buckets"][le] = summed["buckets"].get(le, 0) + count
            for name, value in stats["gauges"].items():
                total["gauges"][name] = total["gauges"].get(name, 0) + int(value)
            for name, value in stats["counters"].items():
                if isinstance(value, dict):
                    by_reason = total["counters"].setdefault(name, {})
                    for reason, count in value.items():
                        by_reason[reason] = by_reason.get(reason, 0) + count
                else:
                    total["counters"][name] = total["counters"].get(name, 0) + value
    return result
