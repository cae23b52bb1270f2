"""Retrying idempotent database work when the connection died under it.

Two forms of one mechanism::

    from django_dbpool.retry import retry_on_disconnect, retrying

    @retry_on_disconnect                     # or @retry_on_disconnect("replica", attempts=5)
    def report(request): ...

    for attempt in retrying("default"):      # a ``with`` block cannot run itself again,
        with attempt:                        # so the loop runs it, once per attempt
            rows = list(Account.objects.all())

An attempt is retried only when all of these hold:

- the error it raised means the connection was lost (:func:`connection_lost`);
- the alias was not already in a transaction when the attempt began (an outer ``atomic``
  block or ``set_autocommit(False)``): that transaction is gone with the connection, and only
  its owner can start it again;
- the attempt did not commit (the outermost ``atomic`` block it opened, or a
  ``commit()``): what it committed is durable, and running it again would do it twice;
- attempts are left.

Before the next attempt, the dead connection is given back to the pool as broken (so it is
closed, not reused) and the wrapper forgets it: the next query borrows a fresh connection.
Waits between attempts grow exponentially with full jitter, up to ``max_backoff``.

Statements run in autocommit mode commit one by one, and no helper can tell a read from a
write: only idempotent work may be wrapped.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from django.db import DEFAULT_DB_ALIAS, connections

from .backends.mysql.support import DEAD_ERRORS
from .backends.postgresql.support import DEAD_SQLSTATE_PREFIXES
from .backends.support import all_supports
from .pool.backoff import full_jitter
from .pool.errors import PoolError

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = [
    "MYSQL_LOST_CODES",
    "POSTGRES_LOST_SQLSTATES",
    "Attempt",
    "connection_lost",
    "lost_connection_alias",
    "retry_on_disconnect",
    "retrying",
]

logger = logging.getLogger("django_dbpool.retry")

P = ParamSpec("P")
R = TypeVar("R")

#: SQLSTATE prefixes of PostgreSQL errors after which the session is gone (the PostgreSQL
#: backend's own list).
POSTGRES_LOST_SQLSTATES = DEAD_SQLSTATE_PREFIXES

#: MySQL/MariaDB error codes that mean the session is gone (the MySQL backend's own list).
MYSQL_LOST_CODES = DEAD_ERRORS

DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF = 0.05
DEFAULT_MAX_BACKOFF = 1.0


def connection_lost(error: BaseException, connection: Any = None) -> bool:
    """Whether ``error`` means that the database connection died under the code that got it.

    ``error`` and its ``__cause__`` chain are inspected, so Django's ``OperationalError``
    (raised from the driver's error) is recognised like the driver's own:

    - psycopg: an error with a SQLSTATE of class 08 or 57P01-57P03; or an
      ``OperationalError`` without SQLSTATE (``server closed the connection unexpectedly``,
      ``consuming input failed``) when ``connection``, the psycopg connection it came from,
      is now closed or broken;
    - mysqlclient: an error whose code is in :data:`MYSQL_LOST_CODES`.

    The pool's own errors (``PoolTimeout`` and the like) are not: no connection was handed
    out. Pure; reads only the error and ``connection``'s local state.
    """
    supports = all_supports()
    for current in _chain(error):
        if isinstance(current, PoolError):
            return False
        if any(support.connection_lost(current, connection) for support in supports):
            return True
    return False


def lost_connection_alias(error: BaseException) -> str | None:
    """The alias whose connection ``error`` says was lost (:func:`connection_lost`), among
    the database connections this thread has used; None for any other error.

    The pooled backends note the alias on the driver's error as the statement fails, while
    its connection is at hand: that answer is exact, even inside an ``atomic`` block (whose
    end gives the dead connection back and borrows another before the error reaches the
    caller). For other backends, each alias is asked with the connection it holds now: a
    psycopg error without SQLSTATE counts only if it left that connection closed or broken;
    where several aliases of the same driver could have raised ``error``, the one still
    holding a connection that has seen an error is named, failing that the first in
    ``DATABASES``. Reads local state only: no I/O, never connects.
    """
    chain = _chain(error)
    for current in chain:
        # Noted by the pooled backends' error wrapper when the statement failed, while the
        # connection was at hand: exact, wherever the error was raised.
        noted = getattr(current, "dbpool_lost_alias", None)
        if isinstance(noted, str):
            return noted
    first: str | None = None
    for wrapper in connections.all(initialized_only=True):
        driver_error = getattr(getattr(wrapper, "Database", None), "Error", BaseException)
        if not any(isinstance(current, driver_error) for current in chain):
            continue  # another driver's error: not this alias's
        if connection_lost(error, wrapper.connection):
            # Django sets errors_occurred on the wrapper an error went through, and clears
            # it only when it connects again or finds the connection usable.
            if wrapper.errors_occurred and wrapper.connection is not None:
                return wrapper.alias
            first = first or wrapper.alias
    return first


def _chain(error: BaseException) -> list[BaseException]:
    # ``error`` and its causes, each once: a cycle of causes ends the walk.
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__
    return chain


def _check_arguments(attempts: Any, backoff: Any, max_backoff: Any) -> None:
    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise ValueError(f"attempts={attempts!r} is invalid; expected an integer >= 1.")
    if not number(backoff) or backoff < 0:
        raise ValueError(f"backoff={backoff!r} is invalid; expected seconds >= 0.")
    if not number(max_backoff) or max_backoff < 0:
        raise ValueError(f"max_backoff={max_backoff!r} is invalid; expected seconds >= 0.")


class Attempt:
    """One run of the block, as a context manager; made by :func:`retrying`.

    On leaving the ``with`` block with an error that may be retried, it discards the dead
    connection, logs a warning and swallows the error, and :func:`retrying` runs the next
    attempt. Every other error propagates at once.
    """

    def __init__(self, using: str, number: int, attempts: int, backoff: float, cap: float):
        self.using = using
        #: 1 for the first attempt.
        self.number = number
        self.attempts = attempts
        #: The error this attempt swallowed to be retried, else None.
        self.error: BaseException | None = None
        #: Seconds :func:`retrying` waits before the next attempt, when retried.
        self.delay = 0.0
        self._backoff = backoff
        self._cap = cap
        self._state = "new"  # then "running", and "retry" or "done"
        self._wrapper: BaseDatabaseWrapper | None = None
        self._outer_transaction = False
        self._committed = False
        self._lost: list[BaseException] = []
        self._lost_connection: Any = None
        self._commit_before: tuple[bool, Any] = (False, None)

    def __repr__(self) -> str:
        return f"<Attempt {self.number} of {self.attempts} on {self.using!r}: {self._state}>"

    def __enter__(self) -> Attempt:
        if self._state != "new":
            raise RuntimeError("An Attempt runs once; retrying() makes one per attempt.")
        self._state = "running"
        wrapper = connections[self.using]
        self._wrapper = wrapper
        # Read without connecting: no connection means no transaction.
        self._outer_transaction = wrapper.in_atomic_block or (
            wrapper.connection is not None and not wrapper.autocommit
        )
        if not self._outer_transaction:
            wrapper.execute_wrappers.append(self._observe)
            # Every commit goes through the wrapper's commit(): the outermost atomic block's
            # exit, transaction.commit(), ... Shadowed on this (thread-local) wrapper for the
            # attempt only; an attempt nested in this one shadows this shadow in turn.
            instance = vars(wrapper)
            self._commit_before = ("commit" in instance, instance.get("commit"))
            original = wrapper.commit

            def commit() -> None:
                # Set first: a commit that fails may still have happened on the server.
                self._committed = True
                original()

            instance["commit"] = commit
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        wrapper = self._wrapper
        assert wrapper is not None
        if not self._outer_transaction:
            wrapper.execute_wrappers.remove(self._observe)
            had_commit, previous = self._commit_before
            if had_commit:
                vars(wrapper)["commit"] = previous
            else:
                vars(wrapper).pop("commit", None)
        retry = exc is not None and self._may_retry(wrapper, exc)
        if retry:
            self._discard(wrapper)
        # Let go of the errors seen and of the dead connection.
        self._lost.clear()
        self._lost_connection = None
        if exc is None or not retry:
            self._state = "done"
            return False
        self.error = exc
        self.delay = full_jitter(self.number, self._backoff, self._cap)
        self._state = "retry"
        logger.warning(
            "Connection to database %r lost (attempt %d of %d): %s: %s; retrying in %.3f s.",
            self.using,
            self.number,
            self.attempts,
            type(exc).__name__,
            " ".join(str(exc).split()),  # one line: libpq's messages span several
            self.delay,
        )
        return True

    def _may_retry(self, wrapper: BaseDatabaseWrapper, exc: BaseException) -> bool:
        if (
            not isinstance(exc, Exception)
            or self._outer_transaction
            or self._committed
            or self.number >= self.attempts
        ):
            return False
        chain: list[BaseException] = []
        current: BaseException | None = exc
        while current is not None and len(chain) < 100:
            chain.append(current)
            current = current.__cause__
        if any(seen is error for seen in self._lost for error in chain):
            return True
        return connection_lost(exc, wrapper.connection)

    def _observe(
        self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
    ) -> Any:
        # Classify where the error happens, while the connection it came from is still
        # attached: an atomic block inside the attempt may close it and borrow another
        # before the error reaches __exit__.
        try:
            return execute(sql, params, many, context)
        except Exception as exc:
            connection = context["connection"].connection
            if connection_lost(exc, connection):
                self._lost.append(exc)
                self._lost_connection = connection
            raise

    def _discard(self, wrapper: BaseDatabaseWrapper) -> None:
        current = wrapper.connection
        if current is None:
            return
        # The connection that failed goes back as broken (closed by the pool, never lent
        # again); one borrowed since then (by an atomic block's cleanup) goes back as usual.
        if hasattr(wrapper, "dbpool_broken") and (
            self._lost_connection is None or current is self._lost_connection
        ):
            wrapper.dbpool_broken = True
        wrapper.close()


def retrying(
    using: str = DEFAULT_DB_ALIAS,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
) -> Iterator[Attempt]:
    """Attempts of a block of idempotent work on database ``using``; run each one in
    ``with attempt:``::

        for attempt in retrying("default", attempts=3):
            with attempt:
                ...

    The loop ends after the first attempt that does not lose its connection. When an
    attempt may be retried (see the module's docstring), its error is swallowed and the
    next attempt follows after a random wait of up to ``backoff * 2 ** (n - 1)`` seconds
    (``n``: the failed attempt's number), capped at ``max_backoff``. Every other error,
    including the last attempt's, propagates out of the ``with`` block and ends the loop.

    Raises ``ValueError`` for a bad argument, and ``RuntimeError`` if the loop body skipped
    its attempt's ``with`` block.
    """
    _check_arguments(attempts, backoff, max_backoff)
    for number in range(1, attempts + 1):
        attempt = Attempt(using, number, attempts, backoff, max_backoff)
        yield attempt
        if attempt._state in ("new", "running"):
            raise RuntimeError(
                "retrying(): each attempt must run its work in `with attempt:` "
                "inside the loop body."
            )
        if attempt._state != "retry":
            return
        if attempt.delay > 0:
            time.sleep(attempt.delay)


@overload
def retry_on_disconnect(using: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def retry_on_disconnect(
    using: str = ...,
    *,
    attempts: int = ...,
    backoff: float = ...,
    max_backoff: float = ...,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def retry_on_disconnect(
    using: str | Callable[..., Any] = DEFAULT_DB_ALIAS,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
) -> Any:
    """Decorate a function of idempotent database work so that a call that loses its
    connection to ``using`` runs again, by the rules of :func:`retrying`.

    ``@retry_on_disconnect``, ``@retry_on_disconnect()`` and
    ``@retry_on_disconnect("replica", attempts=5, backoff=0.1, max_backoff=2)`` all work.
    Settings are not read until the function is called. Raises ``ValueError`` for a bad
    argument and ``TypeError`` for a coroutine function (wrap the synchronous function
    given to ``sync_to_async`` instead).
    """
    if callable(using):
        return retry_on_disconnect(attempts=attempts, backoff=backoff, max_backoff=max_backoff)(
            using
        )
    if not isinstance(using, str):
        raise TypeError(f"using={using!r} is invalid; expected a database alias (a str).")
    _check_arguments(attempts, backoff, max_backoff)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func):
            raise TypeError(
                f"retry_on_disconnect cannot wrap the coroutine function {func.__qualname__}: "
                "database work runs synchronously; decorate the function given to "
                "sync_to_async instead."
            )

        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            for attempt in retrying(
                using, attempts=attempts, backoff=backoff, max_backoff=max_backoff
            ):
                with attempt:
                    return func(*args, **kwargs)
            # Unreachable: the last attempt either returns or raises.
            raise AssertionError("retrying() ended without a result")

        return run

    return decorate
