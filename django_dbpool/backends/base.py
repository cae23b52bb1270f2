"""The mixin that puts a Django database wrapper on top of a process-wide pool.

Django opens a connection with ``connect()`` → ``get_new_connection()`` and closes it with
``close()`` → ``_close()``; the mixin borrows from the alias's pool in the first and gives
back in the second, so "end of request", ``connection.close()`` and
``close_old_connections()`` all return the connection. It keeps Django's own pool
vocabulary (``pool``, ``close_pool()``), so Django's test-database code, which calls
``close_pool()`` before it renames, clones or drops a database, closes ours.

Per-connection session setup (time zone, role, isolation level, ...) runs once per physical
connection, in the pool's connect callable, through a private wrapper that is never used
for anything else: a checkout then costs no round trip at all.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from django.db import DEFAULT_DB_ALIAS
from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.utils import DatabaseErrorWrapper
from django.utils.asyncio import async_unsafe
from django.utils.functional import cached_property

# lifecycle: imported for its fork hook, which must be in place wherever the backends are.
from .. import lifecycle, registry, tagging  # noqa: F401
from ..pool import Pool, _fork
from ..registry import Entry
from .cursors import CursorsMixin
from .leasing import LeasingMixin
from .opening import OpeningMixin
from .support import VendorSupport

__all__ = ["PooledWrapperMixin"]


class _PoolErrorWrapper(DatabaseErrorWrapper):
    """Django's error wrapper, also noting errors that mean the connection is dead."""

    wrapper: PooledWrapperMixin

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_type is None:
            # Every statement passes here: when nothing failed, return as Django's does,
            # without a second call.
            return
        if self.wrapper.connection_is_dead_error(exc_value):
            self.wrapper.dbpool_broken = True
            # Noted on the driver's error (Django's keeps it as __cause__) while the
            # connection is at hand: the end of an atomic() block gives the connection back
            # before the error reaches PoolUnavailableMiddleware (retry.lost_connection_alias).
            with contextlib.suppress(AttributeError):  # an exception type with __slots__
                exc_value.dbpool_lost_alias = self.wrapper.alias
        super().__exit__(exc_type, exc_value, traceback)


class PooledWrapperMixin(LeasingMixin, OpeningMixin, CursorsMixin):
    """Pooling for a Django ``DatabaseWrapper``: ``class W(PooledWrapperMixin, Stock)``.

    A vendor sets :attr:`dbpool_support` and implements :meth:`make_pool_adapter`,
    :meth:`configure_new_connection` and :meth:`connection_is_dead_error`. Checkout, return
    and Django's connection state are here; transaction leases in
    :class:`~django_dbpool.backends.leasing.LeasingMixin`; the pool and the opening of its
    connections in :class:`~django_dbpool.backends.opening.OpeningMixin`; the cursors (tagging)
    in :class:`~django_dbpool.backends.cursors.CursorsMixin`.
    """

    #: What the project knows about the product (``backends/<vendor>/support.py``).
    dbpool_support: VendorSupport

    if TYPE_CHECKING:
        # Attributes of Django's wrappers that django-stubs does not declare.
        Database: Any
        health_check_enabled: bool
        health_check_done: bool
        _thread_sharing_count: int
        _thread_ident: int

        def _set_autocommit(self, autocommit: bool) -> None: ...

    #: True on the private wrapper that opens physical connections for the pool.
    dbpool_private = False
    #: Set when an error on the current connection means the connection itself is dead.
    dbpool_broken = False

    def __init__(self, settings_dict: dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> None:
        super().__init__(settings_dict, alias)
        self._dbpool_lease: Pool[Any] | None = None
        self._dbpool_configured = False
        self._dbpool_params_entry: Entry | None = None
        self._dbpool_configure_lock = threading.Lock()
        self._dbpool_lock_pid = os.getpid()
        self._dbpool_app_tag: tuple[int, str] = (0, "")  # (fork generation, tag)

    # -- Django's pool vocabulary -------------------------------------------------------------

    @property
    def pool(self) -> Any:
        """This alias's pool in this process (created on first use).

        Not pooled: the maintenance connections Django opens to create and drop test
        databases (``NO_DB_ALIAS``), and an alias that configures Django's own pool in
        ``OPTIONS["pool"]`` (system check ``django_dbpool.E002``), which gets Django's
        stock behaviour.
        """
        if not self._dbpool_enabled():
            return getattr(super(), "pool", None)
        return self._dbpool_pool()

    # -- borrowing and returning ---------------------------------------------------------------

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self._dbpool_enabled():
            return super().get_new_connection(conn_params)
        entry, self._dbpool_params_entry = self._dbpool_params_entry, None
        # connect() asked get_connection_params() for these settings just now: if that
        # matched the current pool, it is still the one (compared by identity).
        pool = entry.pool if entry is not None and registry.get(self.alias) is entry else None
        if pool is None or pool.closed:
            pool = self._dbpool_pool()
        self._dbpool_configured = True
        return self._dbpool_checkout(pool)

    def _dbpool_checkout(self, pool: Pool[Any], recent: Any = None) -> Any:
        # recent: a connection this wrapper gave back moments ago, not checked again if it
        # comes back (transaction leases: the next statement's lease).
        # The place of acquisition in warnings: connect() (or get_new_connection()).
        connection = pool.acquire(stacklevel=2)
        if connection is not recent and connection.dbpool_closed_by_server():
            connection = self._dbpool_replace_closed(pool, connection)
        if self._thread_sharing_count or self._thread_ident != threading.get_ident():
            # The connection belongs to the wrapper, and this thread is not (or not the only
            # one) using it: it must outlive this thread (see Pool.share). Django opens the
            # connection before it checks that the thread may use the wrapper at all.
            pool.share(connection)
        self._dbpool_lease = pool
        self.dbpool_broken = False
        return connection

    def inc_thread_sharing(self) -> None:
        super().inc_thread_sharing()
        # A connection already held stays with the wrapper when the thread that opened it
        # exits: the pool must not reclaim it as an orphan (see Pool.share).
        pool, connection = self._dbpool_lease, self.connection
        if pool is not None and connection is not None:
            pool.share(connection)

    @async_unsafe
    def connect(self) -> None:
        """Django's ``connect()`` for a pooled checkout, without the steps a checkout makes
        redundant.

        Django's version asks for the connection parameters, goes through
        ``set_autocommit()``'s checks (no atomic block, health check, ensure_connection)
        and sets the session up in ``init_connection_state()``; a pooled connection was set
        up when it was opened, so only the state Django resets at every connect is reset
        here, in the same order. About 30 calls fewer per checkout. The stock path still
        runs for unpooled wrappers and for ``AUTOCOMMIT = False``, whose ``BEGIN`` Django
        logs. ``tests/backends/test_pooling.py`` compares the state both leave behind, so
        that a Django release that resets more is noticed.
        """
        s = self.settings_dict
        if not s["AUTOCOMMIT"] or not self._dbpool_enabled():
            super().connect()
            return
        self.check_settings()
        self.in_atomic_block = False
        self.savepoint_ids = []
        self.atomic_blocks = []
        self.needs_rollback = False
        self.health_check_enabled = s["CONN_HEALTH_CHECKS"]
        max_age = s["CONN_MAX_AGE"]
        self.close_at = None if max_age is None else time.monotonic() + max_age
        self.closed_in_transaction = False
        self.errors_occurred = False
        self.health_check_done = True
        entry = self._dbpool_entry()
        connection = self.connection = self._dbpool_checkout(entry.pool)
        options = entry.alias_options
        self._dbpool_start_leasing(options.lease == "transaction", options.session_sql)
        # No release point until connect() is done (a connection_created receiver's query).
        self._dbpool_connecting = True
        try:
            self._set_autocommit(True)
            self.autocommit = True
            if self.run_commit_hooks_on_set_autocommit_on:
                self.run_and_clear_commit_hooks()
                self.run_commit_hooks_on_set_autocommit_on = False
            # What remains of init_connection_state(): Django's once-per-alias version check.
            BaseDatabaseWrapper.init_connection_state(self)
            connection_created.send(sender=self.__class__, connection=self)
        finally:
            self._dbpool_connecting = False
        connection.dbpool_created_sent = True
        self.run_on_commit = []

    def init_connection_state(self) -> None:
        if self._dbpool_configured:
            # Called by connect() right after a checkout: the session was set up when the
            # physical connection was opened; only Django's once-per-alias server version
            # check is left. An explicit call later runs the stock setup again.
            self._dbpool_configured = False
            BaseDatabaseWrapper.init_connection_state(self)
        else:
            super().init_connection_state()

    def is_usable(self) -> bool:
        # A pooled connection is given back (and forgotten) by _close(); Django's stock
        # backends would dereference None here.
        return self.connection is not None and super().is_usable()

    def close_if_health_check_failed(self) -> None:
        if self.connection is None:
            # Nothing to check: the usual case, before the first query of a request.
            return
        if self._dbpool_lease is None:
            super().close_if_health_check_failed()
            return
        # Django's own logic (the stock PostgreSQL backend skips it whenever a pool is
        # configured), plus: a connection that failed its check goes back as broken.
        if self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        if not self.is_usable():
            self.dbpool_broken = True
            self.close()
        self.health_check_done = True

    def _close(self) -> None:
        pool, self._dbpool_lease = self._dbpool_lease, None
        if self._dbpool_conn is None or pool is None:
            cast(Any, super())._close()
            return
        connection, self._dbpool_conn = self._dbpool_conn, None
        pool.release(connection, broken=self.dbpool_broken)

    def dbpool_forget_inherited(self) -> None:
        """In a forked child (``lifecycle``), after the pools' own fork handling: a
        connection checked out from the parent's pool would talk on the parent's session.
        Drop it as close() would (the pool ignores inherited ones), so that the next query
        checks out one of the child's own."""
        if self._dbpool_lease is None or not _fork.is_inherited(self.connection):
            return
        self._dbpool_lease = None
        self.run_on_commit = []
        if self.in_atomic_block:
            # Django's state for a connection lost inside atomic(): queries fail until the
            # outermost block exits. The connection can no longer reach the parent.
            self.closed_in_transaction = True
            self.needs_rollback = True
        else:
            self.connection = None

    def dbpool_held(self) -> tuple[Pool[Any], Any, bool] | None:
        """``(pool, connection, busy)`` for the pooled connection this wrapper holds, None if
        it holds none; ``busy``: a thread is inside the driver with it right now (see
        :meth:`dbpool_driver_busy`). Reads attributes only, takes no lock: for a signal
        handler."""
        pool, connection = self._dbpool_lease, self._dbpool_conn
        if pool is None or connection is None:
            return None
        return pool, connection, self.dbpool_driver_busy(connection)

    def dbpool_driver_busy(self, connection: Any) -> bool:
        """Whether a thread is inside the driver with ``connection`` right now, as far as the
        driver lets one see without taking a lock; False when it cannot tell."""
        return False

    @cached_property
    def wrap_database_errors(self) -> DatabaseErrorWrapper:
        return _PoolErrorWrapper(self)

    # -- vendor hooks ---------------------------------------------------------------------------

    def connection_is_dead_error(self, error: BaseException) -> bool:
        """Whether ``error`` means the connection itself is unusable."""
        raise NotImplementedError

    # -- internals ------------------------------------------------------------------------------

    def _dbpool_enabled(self) -> bool:
        return not (
            self.dbpool_private
            or self.alias == NO_DB_ALIAS
            or self.settings_dict["OPTIONS"].get("pool")
        )

    def _dbpool_replace_closed(self, pool: Pool[Any], connection: Any) -> Any:
        # Off the hot path: the server ended this connection's session while it sat idle
        # (killed, restarted). Closed as broken, which also has the pool probe every idle
        # connection as old before handing it out; bounded: each turn closes one of at
        # most MAX_SIZE connections.
        for _ in range(pool.options.max_size):
            pool.release(connection, broken=True)
            connection = pool.acquire(stacklevel=3)
            if not connection.dbpool_closed_by_server():
                break
        return connection
