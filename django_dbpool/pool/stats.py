"""The pool's statistics: one immutable snapshot type, and the cheap recorders behind it."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "BUCKETS_SECONDS",
    "CLOSE_REASONS",
    "COUNTERS",
    "GAUGES",
    "HISTOGRAMS",
    "PIN_REASONS",
    "CloseResult",
    "Histogram",
    "HistogramSnapshot",
    "PoolStats",
]

#: Upper bounds (seconds) of the cumulative histogram buckets; a final +Inf bucket is implied.
#: Fixed so that series from different processes and releases can be summed.
BUCKETS_SECONDS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: Why connections were closed; the keys of :attr:`PoolStats.closed`.
#: idle: unused past MAX_IDLE; lifetime: older than MAX_LIFETIME; broken: released as broken
#: or failed a probe; reset_failed: could not be reset on release; shutdown: pool closed, or
#: retiring (Pool.retire).
CLOSE_REASONS: tuple[str, ...] = ("idle", "lifetime", "broken", "reset_failed", "shutdown")

#: Why a lease outlived a point where a transaction-scoped lease is given back; the keys of
#: :attr:`PoolStats.pins`. transaction: a transaction was open (``atomic()``, autocommit
#: off); cursor: a cursor was still open (a server-side cursor being iterated, say);
#: pinned: the caller asked for one session (``django_dbpool.pinned()``); raw_connection:
#: the caller took the driver's connection; session_sql: a statement changed the session
#: (``SET``, a temporary table, a session lock); shared: several threads use the lease.
PIN_REASONS: tuple[str, ...] = (
    "transaction",
    "cursor",
    "pinned",
    "raw_connection",
    "session_sql",
    "shared",
)


class Histogram:
    """A fixed-bucket histogram updated by the pool under the lock it already holds.

    Not thread-safe by itself; :meth:`snapshot` copies it into an immutable value.
    """

    __slots__ = ("counts", "max", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_SECONDS) + 1)  # per bucket, not cumulative
        self.sum = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS_SECONDS, seconds)] += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds

    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self, extra_zeros: int = 0) -> HistogramSnapshot:
        """Copy the histogram; ``extra_zeros`` adds that many observations of 0 seconds."""
        cumulative = []
        running = extra_zeros
        for n in self.counts:
            running += n
            cumulative.append(running)
        return HistogramSnapshot(
            count=running,
            sum=self.sum,
            max=self.max,
            buckets=tuple(zip((*BUCKETS_SECONDS, float("inf")), cumulative, strict=True)),
        )


@dataclass(frozen=True)
class HistogramSnapshot:
    """Observations in seconds, Prometheus style: ``buckets`` is cumulative.

    ``buckets`` is a tuple of ``(upper_bound_seconds, count_le_bound)`` ending with
    ``(inf, count)``.
    """

    count: int
    sum: float
    max: float
    buckets: tuple[tuple[float, int], ...]

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: bucket bounds become Prometheus ``le`` strings (``"+Inf"`` last)."""
        return {
            "count": self.count,
            "sum": self.sum,
            "max": self.max,
            "buckets": {_le(bound): n for bound, n in self.buckets},
        }


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


#: Field names of :class:`PoolStats` by kind, so exporters need no hard-coded lists.
GAUGES: tuple[str, ...] = (
    "size",
    "idle",
    "in_use",
    "parked",
    "waiting",
    "opening",
    "min_size",
    "max_size",
    "unavailable_now",
)
COUNTERS: tuple[str, ...] = (
    "acquired",
    "timeouts",
    "exhausted",
    "unavailable",
    "opened",
    "connect_errors",
    "validations",
    "validations_failed",
    "leaks",
    "orphans_reclaimed",
    "pinned",
)
HISTOGRAMS: tuple[str, ...] = ("wait_seconds", "hold_seconds", "connect_seconds")


@dataclass(frozen=True)
class PoolStats:
    """An immutable, consistent snapshot of one pool, taken by ``Pool.stats()``.

    Gauges describe the present; counters only grow (since the pool was created, or since a
    fork in the child); histograms are in seconds. ``closed`` maps each of
    :data:`CLOSE_REASONS` to the number of connections closed for that reason.
    """

    name: str
    # gauges
    size: int
    """Open physical connections (idle + in use); connections being opened are not counted."""
    idle: int
    """Connections ready to be handed out."""
    in_use: int
    """Open connections neither idle nor parked: checked out, or being probed, reset or closed
    by the pool."""
    parked: int
    """Connections between two leases of one holder (transaction leases, see ``Pool.park``):
    the holder's next statement takes its own back, and callers with no idle connection take
    them."""
    waiting: int
    """Callers queued for a connection."""
    opening: int
    """Connects in progress (the bound is ``size + opening <= max_size``)."""
    min_size: int
    max_size: int
    unavailable_now: bool
    """True while the pool fails fast with PoolUnavailable (the database refuses connects)."""
    # counters
    acquired: int
    timeouts: int
    exhausted: int
    unavailable: int
    opened: int
    closed: Mapping[str, int]
    connect_errors: int
    validations: int
    """Probes run before hand-out and by the keepalive."""
    validations_failed: int
    leaks: int
    orphans_reclaimed: int
    pinned: int
    """Leases held past at least one point where they would have been given back (see
    :data:`PIN_REASONS`); only transaction-scoped leases have such points."""
    pins: Mapping[str, int]
    """Per reason of :data:`PIN_REASONS`, the leases that reason held past such a point (a
    lease counts once per reason)."""
    # histograms
    wait_seconds: HistogramSnapshot
    hold_seconds: HistogramSnapshot
    connect_seconds: HistogramSnapshot

    @property
    def closed_total(self) -> int:
        return sum(self.closed.values())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready nested dict: ``name``, ``gauges``, ``counters``, ``histograms``."""
        counters: dict[str, Any] = {name: getattr(self, name) for name in COUNTERS}
        counters["closed"] = dict(self.closed)
        counters["pins"] = dict(self.pins)
        return {
            "name": self.name,
            "gauges": {name: getattr(self, name) for name in GAUGES},
            "counters": counters,
            "histograms": {name: getattr(self, name).as_dict() for name in HISTOGRAMS},
        }


def closed_mapping(
    counts: Mapping[str, int], reasons: tuple[str, ...] = CLOSE_REASONS
) -> Mapping[str, int]:
    """A read-only mapping with every one of ``reasons`` present, in their order."""
    return MappingProxyType({reason: counts.get(reason, 0) for reason in reasons})


@dataclass(frozen=True)
class CloseResult:
    """What one ``Pool.close()`` call did.

    ``closed``: connections this call closed gracefully (idle ones, and checked-out ones
    returned while it waited, and those of threads that had exited). ``force_closed``:
    checked-out connections it cut off when the drain timeout ran out or a later ``close()``
    cut the wait short: closed if the caller or an exited thread held them, else their socket
    shut down under the live holder, and closed when that holder releases them.
    ``pending``: connections still checked out, and not cut off, when it returned
    (``force=False``); each closes when it is released.
    """

    closed: int
    force_closed: int
    pending: int = 0
