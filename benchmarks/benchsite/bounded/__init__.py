"""Persistent connections, at most ``POOL_SIZE`` of a process's threads using theirs at a time.

The "bound" contender of the benchmark site: Django's own backends with ``CONN_MAX_AGE=None``,
and a semaphore of ``POOL_SIZE`` places. Each thread keeps its own connection, so nothing is
checked out or handed from thread to thread: what is left is the bound alone, threads waiting
for one of ``POOL_SIZE`` places.

``BOUND_SCOPE`` (the site's ``BENCH_BOUND_SCOPE``) says how long a thread keeps its place:

- ``"request"``: from its first cursor of a request to the request's end
  (``close_old_connections``), where a pool's connection would be checked out and given back
  with request leases;
- ``"statement"``: from each cursor's opening to its closing, where a connection would be
  leased and given back with transaction leases outside a transaction. For views that run
  their statements outside ``atomic()`` only: a transaction is not held as one.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.db.backends.utils import CursorWrapper

_PLACES = threading.Semaphore(settings.POOL_SIZE)
_PER_STATEMENT = settings.BOUND_SCOPE == "statement"


class _StatementCursor(CursorWrapper):
    """A cursor that gives its wrapper's place back when the wrapper's last open cursor
    closes."""

    _open = True

    def close(self) -> None:
        try:
            self.cursor.close()
        finally:
            if self._open:
                self._open = False
                self.db._open_cursors -= 1
                if not self.db._open_cursors:
                    _PLACES.release()


class BoundWrapperMixin:
    _holds_place = False
    #: Per statement: the wrapper's open cursors; it holds a place while there is one (a
    #: cursor opened inside another, as Django's connection setup does, takes no second one).
    _open_cursors = 0

    def _cursor(self, *args: Any, **kwargs: Any) -> Any:
        if _PER_STATEMENT:
            if not self._open_cursors:
                _PLACES.acquire()
            self._open_cursors += 1
            try:
                return super()._cursor(*args, **kwargs)  # type: ignore[misc]
            except BaseException:
                self._open_cursors -= 1
                if not self._open_cursors:
                    _PLACES.release()
                raise
        if not self._holds_place:
            _PLACES.acquire()
            self._holds_place = True
        return super()._cursor(*args, **kwargs)  # type: ignore[misc]

    def make_cursor(self, cursor: Any) -> Any:
        if _PER_STATEMENT:
            return _StatementCursor(cursor, self)
        return super().make_cursor(cursor)  # type: ignore[misc]

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
