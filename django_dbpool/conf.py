"""App settings: the one place that reads ``DBPOOL_*``. Each is validated at its first read
and cached until Django's ``setting_changed`` signal (``override_settings``) says it changed;
system check ``django_dbpool.E008`` reports bad values at startup (see ``checks.py``).

==================================== ========= =============================================
setting                              default   meaning
==================================== ========= =============================================
``DBPOOL_READY_ALIASES``             ``None``  aliases ``/health/ready`` checks (None: every
                                               pooled alias; every alias when none is
                                               pooled)
``DBPOOL_READY_TIMEOUT``             ``1.0``   seconds readiness waits for a connection and
                                               its probe, independent of the pool's TIMEOUT
``DBPOOL_HEALTH_DETAILS_FOR_STAFF``  ``False`` staff users see probe latency and gauges
``DBPOOL_HEALTH_TOKEN``              ``None``  callers sending ``Authorization: Bearer
                                               <token>`` see them too
``DBPOOL_SHUTDOWN_HANDLERS``         ``True``  install the SIGTERM/SIGINT drain handlers
``DBPOOL_RETRY_AFTER``               ``5``     ``Retry-After`` seconds of the 503 responses
``DBPOOL_APPLICATION_NAME``          see       the process tag's template (``{project}``,
                                     tagging   ``{host}``, ``{pid}``, ``{alias}``)
``DBPOOL_SQL_COMMENT_REQUEST_ID``    ``False`` add the request id to query comments
``DBPOOL_STATS_DIR``                 ``None``  where processes publish their pool stats
                                               (None: a per-user, per-project temp
                                               directory); must be this user's alone
``DBPOOL_STATS_INTERVAL``            ``1.0``   seconds between publications (0: never)
==================================== ========= =============================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

__all__ = ["SETTINGS", "app_settings"]

_DEFAULTS: dict[str, Any] = {
    "DBPOOL_READY_ALIASES": None,
    "DBPOOL_READY_TIMEOUT": 1.0,
    "DBPOOL_HEALTH_DETAILS_FOR_STAFF": False,
    "DBPOOL_HEALTH_TOKEN": None,
    "DBPOOL_SHUTDOWN_HANDLERS": True,
    "DBPOOL_RETRY_AFTER": 5,
    "DBPOOL_APPLICATION_NAME": "{project}:{host}:{pid}:{alias}",
    "DBPOOL_SQL_COMMENT_REQUEST_ID": False,
    "DBPOOL_STATS_DIR": None,
    "DBPOOL_STATS_INTERVAL": 1.0,
}


#: The app's settings, by name.
SETTINGS = tuple(_DEFAULTS)
T = TypeVar("T")


class _setting(Generic[T]):
    """A setting of :class:`AppSettings`: the decorated method reads and validates it at the
    first access; the value is cached on the instance until :meth:`AppSettings.clear`."""

    def __init__(self, read: Callable[[AppSettings], T]) -> None:
        self.read = read
        self.name = read.__name__

    def __get__(self, instance: AppSettings, owner: type[AppSettings]) -> T:
        cache = instance._cache
        try:
            return cast(T, cache[self.name])
        except KeyError:
            value = cache[self.name] = self.read(instance)
            return value


class AppSettings:
    """``app_settings.READY_TIMEOUT`` is ``settings.DBPOOL_READY_TIMEOUT`` (or its default),
    validated: ``ImproperlyConfigured`` names the setting, the value and what is accepted.
    Valid values are cached until the setting changes."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def clear(self, setting: str | None = None) -> None:
        """Forget the cached value of ``setting`` (``DBPOOL_...``), or of every setting."""
        if setting is None:
            self._cache.clear()
        else:
            self._cache.pop(setting.removeprefix("DBPOOL_"), None)

    @_setting
    def READY_ALIASES(self) -> list[str] | None:
        value = self._get("DBPOOL_READY_ALIASES")
        if value is None:
            return None
        if (
            isinstance(value, str)
            or not isinstance(value, Sequence)
            or not all(isinstance(alias, str) for alias in value)
        ):
            self._bad("DBPOOL_READY_ALIASES", value, "a list of database aliases, or None")
        unknown = [alias for alias in value if alias not in django_settings.DATABASES]
        if unknown:
            self._bad("DBPOOL_READY_ALIASES", value, f"aliases of DATABASES (unknown: {unknown})")
        return list(value)

    @_setting
    def READY_TIMEOUT(self) -> float:
        value = self._get("DBPOOL_READY_TIMEOUT")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self._bad("DBPOOL_READY_TIMEOUT", value, "a number of seconds > 0")
        return float(value)

    @_setting
    def HEALTH_DETAILS_FOR_STAFF(self) -> bool:
        return self._bool("DBPOOL_HEALTH_DETAILS_FOR_STAFF")

    @_setting
    def HEALTH_TOKEN(self) -> str | None:
        value = self._get("DBPOOL_HEALTH_TOKEN")
        if value is not None and (not isinstance(value, str) or len(value) < 16):
            self._bad("DBPOOL_HEALTH_TOKEN", "<hidden>", "None, or a string of 16+ characters")
        return value  # type: ignore[no-any-return]

    @_setting
    def SHUTDOWN_HANDLERS(self) -> bool:
        return self._bool("DBPOOL_SHUTDOWN_HANDLERS")

    @_setting
    def RETRY_AFTER(self) -> int:
        value = self._get("DBPOOL_RETRY_AFTER")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self._bad("DBPOOL_RETRY_AFTER", value, "a whole number of seconds >= 0")
        return int(value)

    @_setting
    def APPLICATION_NAME(self) -> str:
        value = self._get("DBPOOL_APPLICATION_NAME")
        fields = {"project": "", "host": "", "pid": "", "alias": ""}
        try:
            if not isinstance(value, str):
                raise TypeError
            value.format(**fields)
        except (TypeError, KeyError, IndexError, ValueError):
            self._bad(
                "DBPOOL_APPLICATION_NAME",
                value,
                "a string using only {project}, {host}, {pid} and {alias}",
            )
        return value  # type: ignore[no-any-return]

    @_setting
    def SQL_COMMENT_REQUEST_ID(self) -> bool:
        return self._bool("DBPOOL_SQL_COMMENT_REQUEST_ID")

    @_setting
    def STATS_DIR(self) -> str | None:
        value = self._get("DBPOOL_STATS_DIR")
        if value is not None and not isinstance(value, (str, os.PathLike)):
            self._bad("DBPOOL_STATS_DIR", value, "a directory path, or None")
        return None if value is None else os.fspath(value)

    @_setting
    def STATS_INTERVAL(self) -> float:
        value = self._get("DBPOOL_STATS_INTERVAL")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self._bad("DBPOOL_STATS_INTERVAL", value, "a number of seconds >= 0 (0: off)")
        return float(value)

    def _get(self, name: str) -> Any:
        return getattr(django_settings, name, _DEFAULTS[name])

    def _bool(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            self._bad(name, value, "True or False")
        return bool(value)

    def _bad(self, name: str, value: object, accepted: str) -> None:
        raise ImproperlyConfigured(f"{name}={value!r} is invalid; expected {accepted}.")


app_settings = AppSettings()


def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in _DEFAULTS:
        app_settings.clear(setting)
    elif setting == "DATABASES":
        # DBPOOL_READY_ALIASES is checked against DATABASES.
        app_settings.clear("DBPOOL_READY_ALIASES")


setting_changed.connect(_setting_changed, dispatch_uid="django_dbpool.conf")
