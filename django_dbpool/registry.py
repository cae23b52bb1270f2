"""The process-wide state: one pool per database alias, with the settings it was built from.

The backends put a pool here the first time an alias connects, and replace it when the
alias's connection settings change (the test runner renames ``NAME`` to ``test_NAME``, say);
everything else (snapshots, shutdown, the health views) reads it. A forked child starts with
a free lock and in a new fork generation (:func:`after_fork_in_child`, called by
``lifecycle``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from .options import AliasOptions
from .pool import Pool

__all__ = [
    "DescribedPool",
    "Entry",
    "described_pools",
    "fork_generation",
    "get",
    "install",
    "pools",
    "remove",
    "take_all_pools",
]


class Entry(NamedTuple):
    """A pool and what it was built from."""

    #: The settings its connections were opened with: scalars, and deep copies of OPTIONS
    #: and POOL compared by equality (so that an edit in place is noticed).
    key: tuple[Any, ...]
    options: dict[str, Any]
    pool_settings: Any
    #: (HOST, PORT, NAME): which database its connections are connected to.
    database: tuple[Any, ...]
    pool: Pool[Any]
    #: What get_connection_params() returns for these settings: Django's connect() asks for
    #: it at every checkout, and building it costs more than the checkout itself.
    params: dict[str, Any]
    #: The alias's validated POOL options (LEASE, SESSION_SQL, ...).
    alias_options: AliasOptions
    vendor: str


class DescribedPool(NamedTuple):
    pool: Pool[Any]
    vendor: str  # "postgresql" or "mysql"
    lease: str  # the alias's LEASE: "request" or "transaction"


_entries: dict[str, Entry] = {}
_lock = threading.Lock()
#: Changes in a forked child: what a wrapper renders once per process (the process tag, which
#: holds the pid) is rendered again when it differs, with no os.getpid() call per query.
_generation = 1


#: ``get(alias)``: the entry of ``alias``, or None. The dict's own method, with no lock: the
#: checkout path reads it (``after_fork_in_child`` keeps the same dict).
get = _entries.get


def install(
    alias: str, entry: Entry, keep: Callable[[Entry], bool]
) -> tuple[Entry, Pool[Any] | None]:
    """Make ``entry`` the pool of ``alias`` unless the current one is open and ``keep(current)``
    says it still fits (another thread won the race). Returns the entry in place and the pool
    the caller must close (the one replaced, or ``entry``'s own if it lost), if any."""
    with _lock:
        current = _entries.get(alias)
        if current is not None and not current.pool.closed and keep(current):
            return current, entry.pool
        _entries[alias] = entry
    return entry, current.pool if current is not None else None


def remove(matches: Callable[[str, Entry], bool]) -> list[Entry]:
    """Take out and return the entries for which ``matches(alias, entry)``."""
    with _lock:
        aliases = [alias for alias, entry in _entries.items() if matches(alias, entry)]
        return [_entries.pop(alias) for alias in aliases]


def take_all_pools() -> dict[str, Pool[Any]]:
    """Remove every pool from the registry and return them by alias, for closing. The next
    connection of an alias opens a new pool."""
    with _lock:
        entries = dict(_entries)
        _entries.clear()
    return {alias: entry.pool for alias, entry in entries.items()}


def described_pools() -> dict[str, DescribedPool]:
    """The open pools of this process by alias, with their vendor and ``LEASE``; read from
    the pools themselves, so also for wrappers of aliases that ``DATABASES`` does not have."""
    with _lock:
        return {
            alias: DescribedPool(entry.pool, entry.vendor, entry.alias_options.lease)
            for alias, entry in _entries.items()
        }


def pools() -> dict[str, Pool[Any]]:
    """The open pools of this process, by alias (none before the first connection)."""
    with _lock:
        return {alias: entry.pool for alias, entry in _entries.items()}


def fork_generation() -> int:
    """A number that changes in each forked child."""
    return _generation


def after_fork_in_child() -> None:
    """In a forked child: a free lock (another thread may have held it at fork()) and a new
    fork generation. The pools themselves forget their inherited connections on their own
    (``django_dbpool.pool``)."""
    global _lock, _generation
    _lock = threading.Lock()
    _generation += 1
