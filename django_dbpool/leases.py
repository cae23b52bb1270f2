"""Holding and giving back connections outside Django's request cycle:
``django_dbpool.pinned()`` and ``django_dbpool.connection_scope()``.

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

Django gives a thread's connections back at the end of each request. Code that runs outside
a request (a script's ``asyncio.run()``, a worker thread of your own) has no such end: its
connections stay checked out until the thread exits. ``connection_scope()`` gives it one::

    from django_dbpool import connection_scope

    async def main():
        async with connection_scope():
            await Order.objects.filter(paid=False).aupdate(reminded=True)

    asyncio.run(main())
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import ContextDecorator
from typing import Any, TypeVar, overload

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import DEFAULT_DB_ALIAS, ProgrammingError

__all__ = ["ConnectionScope", "Pinned", "SessionStatementError", "connection_scope", "pinned"]

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


def give_back_connections() -> None:
    """Give back every connection of the current thread, as Django does at a request's end:
    a pooled connection goes back to its pool (what it left open is rolled back there);
    another one is closed if it is unusable or past its ``CONN_MAX_AGE``."""
    from django.db import connections

    for wrapper in connections.all(initialized_only=True):
        held = getattr(wrapper, "dbpool_held", None)  # the pooled backends' wrappers
        if held is not None and held() is not None:
            wrapper.close()
        else:
            wrapper.close_if_unusable_or_obsolete()


class ConnectionScope(ContextDecorator):
    """The block or function that :func:`connection_scope` returns."""

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def scoped(*args: Any, **kwargs: Any) -> Any:
                async with ConnectionScope():
                    return await func(*args, **kwargs)

            return scoped  # type: ignore[return-value]
        return super().__call__(func)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        give_back_connections()

    async def __aenter__(self) -> None:
        self._context = ThreadSensitiveContext()
        await self._context.__aenter__()  # type: ignore[no-untyped-call]

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await sync_to_async(give_back_connections)()
        finally:
            await self._context.__aexit__(*exc)  # type: ignore[no-untyped-call]


def connection_scope() -> ConnectionScope:
    """Give back, at the end of the block or of the decorated function, every connection it
    used, as the end of a request does: ``async with connection_scope():``,
    ``with connection_scope():``, ``@connection_scope()`` on a coroutine function or a
    function.

    Async: the block runs in a context of its own for ``sync_to_async`` (asgiref's
    ``ThreadSensitiveContext``, as each request has under Django's ASGI handler), so the
    ORM's async API and ``sync_to_async`` calls in it run on one thread of the block's own,
    whose connections go back at the end; without it, outside a request they run on a
    process-wide thread and keep their connections. Inside a request, which has such a
    context already, the block shares the request's thread, and its end gives back the
    request's connections early (the next query takes one again).

    Sync: the current thread's connections go back at the end of the block (a thread of
    your own, a script, a loop that runs many jobs).

    For every alias: a pooled connection goes back to its pool, an unpooled one is closed if
    it is unusable or past its ``CONN_MAX_AGE``. A block that ends inside ``atomic()`` has
    its transaction rolled back, as a request that ends there would."""
    return ConnectionScope()
