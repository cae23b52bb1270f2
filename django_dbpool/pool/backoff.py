"""Full-jitter exponential backoff: the pool's reconnects and ``retry``'s attempts wait by
the same rule."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["full_jitter"]


def full_jitter(
    failures: int,
    base: float,
    cap: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait after ``failures`` failures in a row (1 for the first): uniform in
    ``[0, min(cap, base * 2 ** (failures - 1))]``."""
    exponent = min(failures - 1, 30)
    return uniform(0.0, min(cap, base * (2.0**exponent)))
