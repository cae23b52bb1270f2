"""Persistent connections, at most ``POOL_SIZE`` of a process's threads using theirs at a time.

The "bound" contender of the benchmark site: Django's own backends with ``CONN_MAX_AGE=None``,
and a semaphore of ``POOL_SIZE`` that a thread takes before its first cursor of a request and
gives back at the request's end (``close_old_connections``), where a pool's connection would
be checked out and given back. Each thread keeps its own connection, so nothing is checked
out or handed from thread to thread: what is left is the bound alone, threads waiting for one
of ``POOL_SIZE`` places.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings

_PLACES = threading.Semaphore(settings.POOL_SIZE)


class BoundWrapperMixin:
    _holds_place = False

    def _cursor(self, *args: Any, **kwargs: Any) -> Any:
        if not self._holds_place:
            _PLACES.acquire()
            self._holds_place = True
        return super()._cursor(*args, **kwargs)  # type: ignore[misc]

    def close_if_unusable_or_obsolete(self) -> None:
        try:
            super().close_if_unusable_or_obsolete()  # type: ignore[misc]
        finally:
            if self._holds_place:
                self._holds_place = False
                _PLACES.release()


def bound(wrapper: type[Any]) -> type[Any]:
    """``wrapper`` (a Django ``DatabaseWrapper``) with the bound."""
    return type("DatabaseWrapper", (BoundWrapperMixin, wrapper), {})
