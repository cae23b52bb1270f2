"""A driver-agnostic database connection pool (no Django imports except the error base).

The Django backends build a :class:`Pool` from a ``connect`` callable, a
:class:`ConnectionAdapter` for their driver and the ``POOL`` options of a database alias.
"""

from __future__ import annotations

from .adapter import ConnectionAdapter
from .errors import (
    PoolClosed,
    PoolConfigError,
    PoolError,
    PoolExhausted,
    PoolTimeout,
    PoolUnavailable,
)
from .options import PoolOptions
from .pool import Pool
from .stats import CLOSE_REASONS, CloseResult, HistogramSnapshot, PoolStats

__all__ = [
    "CLOSE_REASONS",
    "CloseResult",
    "ConnectionAdapter",
    "HistogramSnapshot",
    "Pool",
    "PoolClosed",
    "PoolConfigError",
    "PoolError",
    "PoolExhausted",
    "PoolOptions",
    "PoolStats",
    "PoolTimeout",
    "PoolUnavailable",
]
