"""What a well-formed stats snapshot document is: every field the readers use, of its type
and within its range (see ``snapshots.read_snapshots``). A document from another process is
untrusted input: it is rebuilt from the fields checked, and only those.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .pool.stats import CLOSE_REASONS, COUNTERS, GAUGES, HISTOGRAMS, PIN_REASONS, Histogram

__all__ = ["Invalid", "document", "not_a_number"]


class Invalid(ValueError):
    """A snapshot file that is not a well-formed document; the message says what is wrong."""


def not_a_number(name: str) -> float:
    """For ``json.loads(parse_constant=...)``: NaN and infinities are refused."""
    raise Invalid(f"it holds {name}, which no snapshot has")


def document(value: object) -> dict[str, Any]:
    """``value`` (a parsed snapshot) checked against the schema; :class:`Invalid` otherwise."""
    # The document rebuilt from the fields checked, and only those: the readers may index it
    # and add its figures up without checking again. Unknown keys (a newer release's) are
    # left out rather than refused.
    if not isinstance(value, dict):
        raise Invalid("it is not a JSON object")
    return _checked(value, _SCHEMA, "")  # type: ignore[no-any-return]


def _checked(value: Any, schema: Any, where: str) -> Any:
    if callable(schema):
        return schema(value, where)
    if not isinstance(value, dict):
        raise Invalid(f"{where} is {_shown(value)}, not an object")
    checked = {}
    for key, inner in schema.items():
        at = f"{where}.{key}" if where else key
        if key not in value:
            if key in _ADDED:
                # Written by a process of an earlier release (a deploy in progress).
                checked[key] = _ADDED[key]
                continue
            raise Invalid(f"{at} is missing")
        checked[key] = _checked(value[key], inner, at)
    return checked


def _shown(value: object) -> str:
    text = repr(value)  # repr: no control character reaches the log
    return text if len(text) <= 40 else f"{text[:37]}..."


def _count_in(minimum: int, maximum: int) -> Callable[[Any, str], int]:
    def count(value: Any, where: str) -> int:
        # bool is an int subclass, and never a count.
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise Invalid(
                f"{where} is {_shown(value)}, not a whole number in [{minimum}, {maximum}]"
            )
        return value

    return count


def _number(value: Any, where: str) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_COUNT:
        return value
    if isinstance(value, float) and 0 <= value < math.inf:  # NaN fails every comparison
        return value
    raise Invalid(f"{where} is {_shown(value)}, not a finite number >= 0")


def _number_or_none(value: Any, where: str) -> float | None:
    return None if value is None else _number(value, where)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"{where} is {_shown(value)}, not true or false")
    return value


def _text(limit: int) -> Callable[[Any, str], str]:
    def text(value: Any, where: str) -> str:
        if not isinstance(value, str) or len(value) > limit:
            raise Invalid(f"{where} is {_shown(value)}, not a text of at most {limit} characters")
        return value

    return text


def _options(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise Invalid(f"{where} is {_shown(value)}, not an object")
    return {_text(64)(key, where): _number(n, f"{where}[{key!r}]") for key, n in value.items()}


def _histogram(value: Any, where: str) -> dict[str, Any]:
    histogram: dict[str, Any] = _checked(value, _HISTOGRAM, where)
    cumulative = list(histogram["buckets"].values())
    if cumulative != sorted(cumulative) or cumulative[-1] != histogram["count"]:
        raise Invalid(f"{where}.buckets are not cumulative counts up to {where}.count")
    return histogram


def _pools(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{where} is {_shown(value)}, not an object")
    return {
        _text(200)(alias, where): _checked(entry, _POOL, f"{where}[{alias!r}]")
        for alias, entry in value.items()
    }


#: Keys a document of an earlier release lacks, and the value read in their place.
_ADDED = {"parked": 0}
_MAX_COUNT = 2**63 - 1
_count = _count_in(0, _MAX_COUNT)
_HISTOGRAM = {
    "count": _count,
    "sum": _number,
    "max": _number,
    # The bucket bounds are fixed, so that processes (and releases) can be summed.
    "buckets": dict.fromkeys(Histogram().snapshot().as_dict()["buckets"], _count),
}
_POOL = {
    "vendor": _text(64),
    "lease": _text(64),  # any word: a newer release's mode is shown, not refused
    "stats": {
        "name": _text(200),
        "gauges": {name: _flag if name == "unavailable_now" else _count for name in GAUGES},
        "counters": {
            **dict.fromkeys(COUNTERS, _count),
            "closed": dict.fromkeys(CLOSE_REASONS, _count),
            "pins": dict.fromkeys(PIN_REASONS, _count),
        },
        "histograms": dict.fromkeys(HISTOGRAMS, _histogram),
    },
    "checkouts_per_second": _number,
    "wait_p99_seconds": _number_or_none,
    "hold_p99_seconds": _number_or_none,
    "options": _options,
}
_SCHEMA = {
    "pid": _count_in(1, 2**31 - 1),  # os.kill() overflows past a C int
    "host": _text(255),
    "process": _text(1000),
    "started_at": _number,
    "updated_at": _number,
    "interval": _number,
    "pools": _pools,
}
