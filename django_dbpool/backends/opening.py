"""The pool side of a pooled wrapper: which pool an alias has, building it, and the private
wrapper that opens the pool's physical connections.

Each alias's pool is built from its settings and kept in :mod:`django_dbpool.registry`;
it is replaced when those settings change. The pool opens connections through a private
copy of the wrapper (``dbpool_private``): Django's stock connect, then the session setup that
Django's ``connect()`` would otherwise repeat at every checkout, once per physical
connection.
"""

from __future__ import annotations

import copy
import os
import threading
from typing import TYPE_CHECKING, Any

from django.utils.functional import cached_property

from .. import metrics, registry, snapshots, tagging
from ..options import AliasOptions, alias_options, driver_options
from ..pool import ConnectionAdapter, Pool
from ..pool.errors import ConnectFailed
from ..registry import Entry
from .connect_errors import connect_failed
from .watch import watch_for_server_close

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper as _Base

    from .support import VendorSupport
else:
    _Base = object

__all__ = ["OpeningMixin"]


class OpeningMixin(_Base):
    """Part of :class:`~django_dbpool.backends.base.PooledWrapperMixin`: the alias's pool and
    the opening of its connections. The vendor hooks :meth:`make_pool_adapter` and
    :meth:`configure_new_connection` are here."""

    if TYPE_CHECKING:
        Database: Any
        dbpool_private: bool
        dbpool_support: VendorSupport
        _dbpool_params_entry: Entry | None
        _dbpool_configure_lock: threading.Lock
        _dbpool_lock_pid: int

        def _dbpool_enabled(self) -> bool: ...

    def _dbpool_pool(self) -> Pool[Any]:
        return self._dbpool_entry().pool

    def _dbpool_entry(self) -> Entry:
        # The checkout path: the caller already knows pooling is on for this wrapper. A pool
        # closed by hand (pool.close()) is replaced, as close_pool() would have it.
        entry = registry.get(self.alias)
        if entry is not None and not entry.pool.closed and self._dbpool_matches(entry):
            return entry
        return self._dbpool_replace_pool()

    def close_pool(self) -> None:
        """Close this alias's pool, and the pools of other aliases connected to the same
        database: idle connections now, borrowed ones as they come back.

        Django calls it before it drops, clones or renames a database, which PostgreSQL
        refuses while any session is connected to it (a test mirror alias's, say).
        Idempotent. The next connection opens a new pool.
        """
        if not self._dbpool_enabled():
            getattr(super(), "close_pool", lambda: None)()
            return
        database = self._dbpool_database()
        entries = registry.remove(
            lambda alias, entry: alias == self.alias or entry.database == database
        )
        for entry in entries:
            entry.pool.close(timeout=0, force=False)

    # -- vendor hooks ---------------------------------------------------------------------------

    def make_pool_adapter(self, full_reset: bool) -> ConnectionAdapter[Any]:
        """The driver adapter for this alias's pool; with ``full_reset``, every returned
        connection gets a full session reset, then :meth:`dbpool_configure`."""
        raise NotImplementedError

    def configure_new_connection(self, connection: Any) -> None:
        """Set up a new physical connection's session the way Django's stock backend does
        at every connect. Runs once per physical connection, on the private wrapper."""
        raise NotImplementedError

    def connect_error_is_transient(self, error: BaseException) -> bool:
        """Whether a failed connect may succeed if retried (the server is unreachable,
        restarting or refusing sessions), as opposed to a wrong configuration, which is
        raised to the caller at once."""
        if isinstance(error, ConnectFailed):
            error = error.__cause__ or error
        return isinstance(error, self.Database.OperationalError)

    def check_connection_settings(self) -> None:
        """Raise ``ImproperlyConfigured`` for settings the stock backend would reject only
        while connecting (which, pooled, happens in the pool's connector thread)."""

    def _dbpool_database(self) -> tuple[Any, ...]:
        s = self.settings_dict
        return (s["HOST"], str(s["PORT"]), s["NAME"])

    def _dbpool_key(self) -> tuple[Any, ...]:
        s = self.settings_dict
        # timezone_name: the session time zone, a cached property that Django invalidates
        # when the TIME_ZONE or USE_TZ setting changes.
        return (s["NAME"], s["USER"], s["PASSWORD"], s["HOST"], s["PORT"], self.timezone_name)

    def _dbpool_matches(self, entry: Entry) -> bool:
        # Runs at every checkout: plain comparisons, no copies.
        s = self.settings_dict
        return (
            entry.key == self._dbpool_key()
            and entry.options == s["OPTIONS"]
            and entry.pool_settings == s.get("POOL")
        )

    def _dbpool_replace_pool(self) -> Entry:
        # Validate and build outside the lock (no I/O: the pool connects lazily), then
        # install unless another thread won the race.
        options = alias_options(self.alias, self.settings_dict)
        opener = self._dbpool_private_wrapper()
        # Settings errors belong to the caller, not to the pool's connector thread.
        opener.get_connection_params()
        opener.check_connection_settings()
        new_pool: Pool[Any] = Pool(
            opener._dbpool_open,
            opener.make_pool_adapter(full_reset=options.reset),
            options.pool,
            name=self.alias,
            holder_info=tagging.holder_info,
            is_transient=self.connect_error_is_transient,
            # This process's stats publisher starts with its first pool (again in a forked
            # child, where the pools start afresh).
            on_start=snapshots.ensure_publisher,
        )
        entry = Entry(
            self._dbpool_key(),
            copy.deepcopy(self.settings_dict["OPTIONS"]),
            copy.deepcopy(self.settings_dict.get("POOL")),
            self._dbpool_database(),
            new_pool,
            self._dbpool_connection_params(),
            options,
            self.vendor,
        )
        winner, stale = registry.install(self.alias, entry, keep=self._dbpool_matches)
        if stale is not None:
            stale.close(timeout=0, force=False)
        return winner

    def _dbpool_private_wrapper(self) -> OpeningMixin:
        settings_dict = {**self.settings_dict, "OPTIONS": dict(self.settings_dict["OPTIONS"])}
        opener = type(self)(settings_dict, self.alias)
        opener.dbpool_private = True
        # Used from the pool's connector thread (one at a time), created in this one.
        opener.inc_thread_sharing()
        return opener

    @cached_property
    def dbpool_private_options(self) -> AliasOptions:
        """The alias's validated ``POOL`` options, for the private wrapper's connects (the
        backends' driver settings: ``CONNECT_TIMEOUT``, ``NETWORK_TIMEOUT``). Computed once:
        the private wrapper belongs to one pool, whose settings do not change."""
        return alias_options(self.alias, self.settings_dict)

    def _dbpool_open(self) -> Any:
        # Called by the pool's connector thread: stock connect, then the session setup
        # Django's connect() would otherwise repeat at every checkout.
        try:
            connection = super().get_new_connection(self.get_connection_params())
        except Exception as exc:
            metrics.record_connect(self.alias, self.vendor, exc)
            if isinstance(exc, self.Database.OperationalError):
                raise self._dbpool_connect_failed(exc) from exc
            raise
        metrics.record_connect(self.alias, self.vendor, None)
        try:
            self.dbpool_configure(connection)
            watch_for_server_close(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _dbpool_connect_failed(self, error: BaseException) -> ConnectFailed:
        # Off the hot path: runs only when a connect failed.
        support = self.dbpool_support
        cause, fix = support.explain_connect_error(error)
        return connect_failed(self.alias, self.settings_dict, support.default_port, cause, fix)

    def dbpool_configure(self, connection: Any) -> None:
        """Run :meth:`configure_new_connection` on a raw connection. Thread-safe: the pool's
        connector (new connections) and releasing threads (``RESET``) both call it."""
        if self._dbpool_lock_pid != os.getpid():
            # A lock inherited through fork() may be held by a thread that does not exist.
            self._dbpool_configure_lock = threading.Lock()
            self._dbpool_lock_pid = os.getpid()
        with self._dbpool_configure_lock:
            # Django's setup code may go through this wrapper's cursor() (to format SQL).
            self.connection = connection
            try:
                self.configure_new_connection(connection)
            finally:
                self.connection = None

    def get_connection_params(self) -> dict[str, Any]:
        if not self.dbpool_private and self._dbpool_enabled():
            entry = registry.get(self.alias)
            if entry is not None and not entry.pool.closed and self._dbpool_matches(entry):
                self._dbpool_params_entry = entry
                return dict(entry.params)
        return self._dbpool_connection_params()

    def _dbpool_connection_params(self) -> dict[str, Any]:
        return driver_options(super().get_connection_params())
