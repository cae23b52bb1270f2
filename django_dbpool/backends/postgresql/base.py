"""``ENGINE = "django_dbpool.backends.postgresql"``: Django's PostgreSQL backend (psycopg 3),
pooled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base as stock

from ... import metrics, tagging
from ..base import PooledWrapperMixin
from ..watch import shutdown_socket, stop_watching
from .support import DEAD_SQLSTATE_PREFIXES, support

try:
    from psycopg import Connection, IsolationLevel
    from psycopg.pq import TransactionStatus
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImproperlyConfigured(
        "django_dbpool.backends.postgresql needs psycopg 3: pip install 'dj-dbpool[postgresql]'"
    ) from exc

_IDLE = TransactionStatus.IDLE
_ACTIVE = TransactionStatus.ACTIVE
# How long interrupt() waits for the server to take a cancel request.
_CANCEL_TIMEOUT = 5.0


class PsycopgAdapter:
    """What the pool needs of a psycopg 3 connection; state is read locally, no I/O."""

    def __init__(self, full_reset: bool, configure: Callable[[Connection[Any]], None]) -> None:
        self.full_reset = full_reset
        self.configure = configure

    def is_alive(self, conn: Connection[Any]) -> bool:
        if conn.closed:
            return False
        # A pooled connection is never inside a transaction here (release rolled it back),
        # so switching to autocommit is local, and the probe starts no transaction.
        conn.autocommit = True
        # An empty query: a full round trip that the server answers without parsing,
        # planning or running anything, so it is no statement in pg_stat_statements or the
        # statement log (the counterpart of MySQL's COM_PING).
        conn.execute("")
        return True

    def needs_reset(self, conn: Connection[Any]) -> bool:
        return self.full_reset or conn.pgconn.transaction_status != _IDLE

    def reset(self, conn: Connection[Any]) -> None:
        if conn.pgconn.transaction_status != _IDLE:
            conn.rollback()
        if self.full_reset:
            conn.autocommit = True
            # Drops session state (SET values, prepared statements, temp tables, ...),
            # Django's own time zone and role included: set those up again.
            conn.execute("DISCARD ALL")
            self.configure(conn)

    def close(self, conn: Connection[Any]) -> None:
        try:
            conn.close()
        finally:
            stop_watching(conn)

    def interrupt(self, conn: Connection[Any]) -> None:
        # A statement in progress: ask the server to cancel it (over a connection of its
        # own, without the connection's lock), or the server would notice the lost client
        # only once the statement ends. Then the socket: the holder's wait ends at once.
        try:
            if not conn.closed and conn.pgconn.transaction_status == _ACTIVE:
                conn.cancel_safe(timeout=_CANCEL_TIMEOUT)
        finally:
            shutdown_socket(conn)


class DatabaseWrapper(PooledWrapperMixin, stock.DatabaseWrapper):
    dbpool_support = support

    def make_pool_adapter(self, full_reset: bool) -> PsycopgAdapter:
        return PsycopgAdapter(full_reset, self.dbpool_configure)

    def configure_new_connection(self, connection: Connection[Any]) -> None:
        # Django's own per-connect setup (time zone, role), run in autocommit so that
        # nothing is left in a transaction.
        connection.autocommit = True
        cast(Any, self)._configure_connection(connection)

    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        if not self.dbpool_private:
            return params
        # Physical connections (opened by the private wrapper) carry the process tag,
        # rendered at each connect so that a forked child's connections name the child.
        params.setdefault("application_name", tagging.application_name(self.alias))
        # CONNECT_TIMEOUT and NETWORK_TIMEOUT, as libpq's own parameters: each where OPTIONS
        # does not set it. libpq ignores the TCP ones on a Unix socket.
        options = self.dbpool_private_options
        if options.connect_timeout:
            params.setdefault("connect_timeout", options.connect_timeout)
        tcp = options.tcp_timeouts
        if tcp is not None:
            params.setdefault("tcp_user_timeout", tcp.user_timeout_ms)
            params.setdefault("keepalives", 1)
            params.setdefault("keepalives_idle", tcp.keepalive_idle)
            params.setdefault("keepalives_interval", tcp.keepalive_interval)
            params.setdefault("keepalives_count", tcp.keepalive_count)
        if metrics.query_metrics_enabled():
            # django-prometheus's own instrumented cursors, as its backend does.
            from django_prometheus.db.common import ExportingCursorWrapper

            params["cursor_factory"] = ExportingCursorWrapper(
                params["cursor_factory"], self.alias, self.vendor
            )
        return params

    def check_connection_settings(self) -> None:
        level = self.settings_dict["OPTIONS"].get("isolation_level")
        if level is not None:
            try:
                IsolationLevel(level)
            except ValueError:
                raise ImproperlyConfigured(
                    f"Invalid transaction isolation level {level} specified. Use one of the "
                    "psycopg.IsolationLevel values."
                ) from None

    def _set_autocommit(self, autocommit: bool) -> None:
        # psycopg's setting is local, but taking its lock and running its generator costs a
        # sixth of a checkout: skip it when the connection already has the wanted value
        # (every checkout of a clean pooled connection).
        if self.connection.autocommit != autocommit:
            cast(Any, super())._set_autocommit(autocommit)

    def dbpool_driver_busy(self, connection: Any) -> bool:
        # psycopg holds the connection's lock for the whole of each operation.
        return bool(connection.lock.locked())

    def connection_is_dead_error(self, error: BaseException) -> bool:
        sqlstate = getattr(error, "sqlstate", None) or ""
        if sqlstate.startswith(DEAD_SQLSTATE_PREFIXES):
            return True
        connection = self.connection
        return connection is not None and bool(connection.broken or connection.closed)
