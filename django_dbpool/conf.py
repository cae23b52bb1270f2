"""App settings, read lazily (``override_settings`` works) and validated on every read.

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
from collections.abc import Sequence
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["app_settings"]

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


class AppSettings:
    """``app_settings.READY_TIMEOUT`` reads ``settings.DBPOOL_READY_TIMEOUT`` (or its
    default) at each access and raises ``ImproperlyConfigured`` for a bad value."""

    @property
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

    @property
    def READY_TIMEOUT(self) -> float:
        value = self._get("DBPOOL_READY_TIMEOUT")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self._bad("DBPOOL_READY_TIMEOUT", value, "a number of seconds > 0")
        return float(value)

    @property
    def HEALTH_DETAILS_FOR_STAFF(self) -> bool:
        return self._bool("DBPOOL_HEALTH_DETAILS_FOR_STAFF")

    @property
    def HEALTH_TOKEN(self) -> str | None:
        value = self._get("DBPOOL_HEALTH_TOKEN")
        if value is not None and (not isinstance(value, str) or len(value) < 16):
            self._bad("DBPOOL_HEALTH_TOKEN", "<hidden>", "None, or a string of 16+ characters")
        return value  # type: ignore[no-any-return]

    @property
    def SHUTDOWN_HANDLERS(self) -> bool:
        return self._bool("DBPOOL_SHUTDOWN_HANDLERS")

    @property
    def RETRY_AFTER(self) -> int:
        value = self._get("DBPOOL_RETRY_AFTER")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self._bad("DBPOOL_RETRY_AFTER", value, "a whole number of seconds >= 0")
        return int(value)

    @property
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

    @property
    def SQL_COMMENT_REQUEST_ID(self) -> bool:
        return self._bool("DBPOOL_SQL_COMMENT_REQUEST_ID")

    @property
    def STATS_DIR(self) -> str | None:
        value = self._get("DBPOOL_STATS_DIR")
        if value is not None and not isinstance(value, (str, os.PathLike)):
            self._bad("DBPOOL_STATS_DIR", value, "a directory path, or None")
        return None if value is None else os.fspath(value)

    @property
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
