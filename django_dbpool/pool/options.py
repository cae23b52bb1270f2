"""Pool options: the ``DATABASES[alias]["POOL"]`` mapping, validated once into a frozen object."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import PoolConfigError

__all__ = ["PoolOptions", "closest_option"]

#: How alike (difflib's ratio) an unknown option name must be to a known one for "did you
#: mean": a typo of a letter or two (MAX_SZIE), not another option that shares a word with it
#: (IDLE_TIMEOUT is not LEAK_TIMEOUT, MAX_WAIT not MAX_WAITING).
_SUGGEST_CUTOFF = 0.85


@dataclass(frozen=True)
class PoolOptions:
    """Validated pool settings; durations are in seconds.

    Build it from the user's mapping with :meth:`from_mapping`. Constructing it directly with
    keyword arguments validates the same way. Every invalid value raises
    :class:`~django_dbpool.pool.errors.PoolConfigError` naming the upper-case setting.
    """

    #: Hard cap on physical connections of this pool in this process, opening ones included.
    max_size: int = 10
    #: Connections kept open and idle-ready; refilled in the background after any loss.
    min_size: int = 0
    #: Longest a caller waits for a connection before ``PoolTimeout``.
    timeout: float = 10.0
    #: Callers allowed to queue (0: no cap); one more gets ``PoolExhausted`` at once.
    max_waiting: int = 0
    #: A connection is retired after this age (minus up to 2.5 % jitter), never while out.
    max_lifetime: float = 1800.0
    #: Connections idle longer than this are closed, down to ``min_size``.
    max_idle: float = 600.0
    #: A connection idle longer than this is probed before it is handed out.
    validate_after: float = 1.0
    #: Idle connections are probed in the background this often (0 disables).
    keepalive: float = 120.0
    #: A connection held longer than this logs one warning (0 disables).
    leak_timeout: float = 0.0
    #: Consecutive failed connects after which callers get ``PoolUnavailable`` at once.
    fail_fast_after: int = 3
    #: Cap of the exponential backoff (full jitter) between reconnect attempts.
    backoff_max: float = 2.0
    #: How long ``close()`` waits for checked-out connections to come back.
    drain_timeout: float = 25.0

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> PoolOptions:
        """Build options from upper-case setting names (``{"MAX_SIZE": 20}``).

        Missing names take their default. An unknown name or a bad value raises
        ``PoolConfigError``. ``None`` or an empty mapping gives the defaults.
        """
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            raise PoolConfigError(
                "POOL",
                mapping,
                "a dict of options",
                f"POOL must be a dict of options, got {type(mapping).__name__}.",
            )
        known = {f.name.upper(): f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in mapping.items():
            attr = known.get(key) if isinstance(key, str) else None
            if attr is None:
                hint = ""
                match = closest_option(key, known) if isinstance(key, str) else None
                if isinstance(key, str) and match == key.upper():
                    hint = f" Option names are upper case: did you mean {match!r}?"
                elif match is not None:
                    hint = f" Did you mean {match!r}?"
                names = ", ".join(sorted(known))
                raise PoolConfigError(
                    str(key),
                    value,
                    f"one of {names}",
                    f"Unknown POOL option {key!r}.{hint} Known options: {names}.",
                )
            kwargs[attr] = value
        return cls(**kwargs)

    def __post_init__(self) -> None:
        _int("MAX_SIZE", self.max_size, minimum=1)
        _int("MIN_SIZE", self.min_size, minimum=0)
        _int("MAX_WAITING", self.max_waiting, minimum=0, note="0 means no cap")
        _int("FAIL_FAST_AFTER", self.fail_fast_after, minimum=1)
        if self.min_size > self.max_size:
            raise PoolConfigError(
                "MIN_SIZE",
                self.min_size,
                f"an integer between 0 and MAX_SIZE ({self.max_size})",
            )
        for name, positive, note in _DURATIONS:
            value = getattr(self, name)
            _duration(name.upper(), value, positive=positive, note=note)
            # Store floats so arithmetic and repr are uniform whatever the user wrote.
            object.__setattr__(self, name, float(value))

    def as_settings(self) -> dict[str, float | int]:
        """The options under their public upper-case names, as a user would write them."""
        return {f.name.upper(): getattr(self, f.name) for f in fields(self)}


def closest_option(name: str, known: Iterable[str]) -> str | None:
    """The name in ``known`` (upper case) that ``name`` most likely misspells, whatever its
    case; None when none is close enough."""
    matches = difflib.get_close_matches(name.upper(), list(known), n=1, cutoff=_SUGGEST_CUTOFF)
    return matches[0] if matches else None


# (attribute, must be > 0 rather than >= 0, note on the meaning of 0)
_DURATIONS: tuple[tuple[str, bool, str], ...] = (
    ("timeout", True, ""),
    ("max_lifetime", True, ""),
    ("max_idle", True, ""),
    ("validate_after", False, "0 probes every checkout"),
    ("keepalive", False, "0 disables"),
    ("leak_timeout", False, "0 disables"),
    ("backoff_max", True, ""),
    ("drain_timeout", False, "0 force-closes at once"),
)


def _int(option: str, value: object, *, minimum: int, note: str = "") -> None:
    # bool is an int subclass; True as a pool size is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        accepted = f"an integer >= {minimum}" + (f" ({note})" if note else "")
        raise PoolConfigError(option, value, accepted)


def _duration(option: str, value: object, *, positive: bool, note: str) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        accepted = f"a finite number of seconds (int or float) {bound}"
        raise PoolConfigError(option, value, accepted + (f" ({note})" if note else ""))
