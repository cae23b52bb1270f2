"""Pinning a connection with transaction-scoped leases: ``django_dbpool.pinned()``.

With ``"POOL": {"LEASE": "transaction"}`` a thread holds a connection only while a
statement or a transaction runs, so two statements outside ``atomic()`` may run on two
different server sessions. Code that needs one session across statements (``SET``,
temporary tables, session advisory locks, ``LISTEN``, prepared statements) runs inside
``pinned()``::

    from django_dbpool import pinned

    with pinned(using="default"):
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 1000")
            ...

    @pinned  # or @pinned(using="reports")
    def rebuild_report(): ...

With request leases (the default), and for aliases that are not pooled, ``pinned()`` changes
nothing: the connection is held for the whole request anyway.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import ContextDecorator
from typing import Any, TypeVar, overload

from django.db import DEFAULT_DB_ALIAS, ProgrammingError

__all__ = ["Pinned", "SessionStatementError", "pinned"]

F = TypeVar("F", bound=Callable[..., Any])


class SessionStatementError(ProgrammingError):
    """A statement that changes the session ran outside a pin, on an alias with
    transaction leases and ``"SESSION_SQL": "error"``. Raised before the statement runs."""


class Pinned(ContextDecorator):
    """Holds the connection of alias ``using`` in the current thread from its first
    statement inside the block to the block's end (see :func:`pinned`). Re-entrant and
    nestable; the state lives on the thread's own connection wrapper."""

    def __init__(self, using: str | None = None) -> None:
        self.using = using or DEFAULT_DB_ALIAS

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):
            raise TypeError(
                f"pinned() cannot decorate the coroutine function {func.__qualname__}: an "
                "async function runs its queries on another thread (sync_to_async). Use "
                "pinned() inside the synchronous function you pass to sync_to_async."
            )
        return super().__call__(func)

    def __enter__(self) -> None:
        wrapper = self._wrapper()
        if wrapper is not None:
            wrapper.dbpool_pin()

    def __exit__(self, *exc: object) -> None:
        wrapper = self._wrapper()
        if wrapper is not None:
            wrapper.dbpool_unpin()

    def _wrapper(self) -> Any:
        from django.db import connections

        wrapper = connections[self.using]
        return wrapper if hasattr(wrapper, "dbpool_pin") else None


@overload
def pinned(using: F) -> F: ...
@overload
def pinned(using: str | None = None) -> Pinned: ...
def pinned(using: Any = None) -> Any:
    """Keep one connection (one server session) of alias ``using`` for the block or the
    decorated function, in the current thread, with transaction leases: a context manager
    and a decorator, written ``@pinned`` or ``@pinned(using="other")``.

    A pin connects nothing by itself; the connection is taken at the
    first statement, as usual, and given back at the block's end (or at the end of the
    outermost ``atomic()`` or the last open cursor, whichever comes last). Other threads are
    not affected. Raises ``TypeError`` when decorating a coroutine function, and
    ``ConnectionDoesNotExist`` from ``connections[using]`` for an unknown alias, at entry."""
    if callable(using):
        return Pinned()(using)
    if using is not None and not isinstance(using, str):
        raise TypeError(f"pinned(using=...) takes a database alias, not {using!r}.")
    return Pinned(using)
