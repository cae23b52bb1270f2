"""Pool options of a database alias: ``DATABASES[alias]["POOL"]`` and ``OPTIONS["pool_*"]``.

Options may be written in two places, merged here into one validated
:class:`~django_dbpool.pool.PoolOptions`:

- ``"POOL": {"MAX_SIZE": 10, "TIMEOUT": 5}``, a top-level key of the alias;
- ``"OPTIONS": {"pool_max_size": "10"}``, where django-environ puts a URL's query parameters
  (``?pool_max_size=10``). Strings are cast to the option's type. These keys never reach the
  database driver.

The same option in both places is an error, as is an unknown key or a bad value: each
raises ``ImproperlyConfigured`` naming the alias, the key, the value and what is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .pool import PoolConfigError, PoolOptions

__all__ = ["OPTIONS_PREFIX", "AliasOptions", "alias_options", "driver_options", "pool_options"]

#: Prefix of pool options inside ``OPTIONS`` (django-environ's URL query parameters).
OPTIONS_PREFIX = "pool_"

#: Options of the backend rather than of the pool core.
_BACKEND_OPTIONS = frozenset({"RESET"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

_INTEGER_OPTIONS = frozenset(f.name.upper() for f in fields(PoolOptions) if f.type in ("int", int))


@dataclass(frozen=True)
class AliasOptions:
    """Everything the ``POOL`` settings of one alias say."""

    pool: PoolOptions
    #: Run a full session reset (``DISCARD ALL``; MySQL's COM_CHANGE_USER) on every return.
    reset: bool = False


def alias_options(alias: str, settings_dict: Mapping[str, Any]) -> AliasOptions:
    """The validated options of ``alias``; ``ImproperlyConfigured`` if any is wrong."""
    pool = settings_dict.get("POOL")
    if pool is None:
        pool = {}
    elif not isinstance(pool, Mapping):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['POOL'] must be a dict of pool options such as "
            f"{{'MAX_SIZE': 10}}, not {type(pool).__name__} {pool!r}."
        )
    merged: dict[str, Any] = dict(pool)
    for key, value in (settings_dict.get("OPTIONS") or {}).items():
        if not (isinstance(key, str) and key.startswith(OPTIONS_PREFIX)):
            continue
        name = key[len(OPTIONS_PREFIX) :].upper()
        if name in pool:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}] sets the pool option {name} twice: in POOL "
                f"({pool[name]!r}) and as OPTIONS[{key!r}] ({value!r}). Keep one of them."
            )
        merged[name] = _cast(alias, key, name, value)
    reset = merged.pop("RESET", False)
    if not isinstance(reset, bool):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]: POOL option RESET={reset!r} is invalid; expected True or False."
        )
    try:
        return AliasOptions(PoolOptions.from_mapping(merged), reset=reset)
    except PoolConfigError as exc:
        raise ImproperlyConfigured(f"DATABASES[{alias!r}]: {exc}") from None


def pool_options(alias: str, settings_dict: Mapping[str, Any]) -> PoolOptions:
    """The validated pool core options of ``alias``; ``ImproperlyConfigured`` if wrong."""
    return alias_options(alias, settings_dict).pool


def driver_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the pool's ``pool_*`` keys: what the driver may see."""
    return {
        key: value
        for key, value in options.items()
        if not (isinstance(key, str) and key.startswith(OPTIONS_PREFIX))
    }


def _cast(alias: str, key: str, name: str, value: object) -> object:
    # URL query parameters arrive as strings (django-environ already turns "10" into 10).
    if name in _BACKEND_OPTIONS:
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]: OPTIONS[{key!r}]={value!r} is not a boolean "
            "(true/false, 1/0, yes/no, on/off)."
        )
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return int(text) if name in _INTEGER_OPTIONS else float(text)
    except ValueError:
        kind = "an integer" if name in _INTEGER_OPTIONS else "a number of seconds"
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]: OPTIONS[{key!r}]={value!r} is not {kind} "
            f"(it sets the pool option {name})."
        ) from None
