"""``ENGINE = "django_dbpool.backends.mysql"``: Django's MySQL/MariaDB backend (mysqlclient),
pooled."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.mysql import base as stock
from django.db.backends.mysql import client as stock_client
from django.utils.functional import cached_property

from ... import metrics
from ...options import mysql_tls_options
from ..base import (
    AUTH_HINT,
    CONNECT_HINT,
    NAME_HINT,
    UNREACHABLE_HINT,
    PooledWrapperMixin,
    stop_watching,
)

# Client and server error codes after which the session is gone: server has gone away,
# lost connection (during query / at handshake), server shutdown, connection killed,
# disconnected for inactivity.
_DEAD_ERRORS = frozenset({2006, 2013, 2055, 1053, 1927, 4031, 2026})

# What to check after a failed connect, by error code.
_CONNECT_HINTS = {
    1045: AUTH_HINT,  # access denied
    1044: "Check NAME and USER: the user may not use this database.",
    1049: NAME_HINT,  # unknown database
    1130: "The server admits USER only from other hosts: check USER, or the user's grants.",
    2002: UNREACHABLE_HINT,  # no server at the socket or port
    2003: UNREACHABLE_HINT,
    2005: UNREACHABLE_HINT,  # unknown host
    2026: "TLS failed: check OPTIONS['ssl_mode'] and OPTIONS['ssl'] ({'ca': the CA "
    "certificate that signed the server's certificate}; ssl_ca= in a database URL), and that "
    "the server has TLS on.",
}


class MySQLdbAdapter:
    """What the pool needs of a mysqlclient connection."""

    def __init__(
        self, full_reset: bool, configure: Callable[[Any], None], login: dict[str, Any]
    ) -> None:
        self.full_reset = full_reset
        self.configure = configure
        self._login = login  # user, password, database: for COM_CHANGE_USER

    def __repr__(self) -> str:
        return f"<MySQLdbAdapter full_reset={self.full_reset}>"

    def is_alive(self, conn: Any) -> bool:
        # COM_PING: the cheapest round trip the protocol has.
        conn.ping()
        return True

    def needs_reset(self, conn: Any) -> bool:
        # mysqlclient exposes no transaction status, but autocommit is read from the last
        # server reply: off means a transaction may be open. Django turns autocommit off for
        # atomic blocks and set_autocommit(False), so this covers every Django transaction.
        return self.full_reset or not conn.get_autocommit()

    def reset(self, conn: Any) -> None:
        conn.rollback()
        if self.full_reset:
            # COM_CHANGE_USER to the same user: the server resets the session (variables,
            # temporary tables, locks, prepared statements). mysqlclient has no binding for
            # mysql_reset_connection, the lighter equivalent.
            conn.change_user(self._login["user"], self._login["password"], self._login["db"])
            self.configure(conn)
        else:
            conn.autocommit(True)

    def close(self, conn: Any) -> None:
        try:
            conn.close()
        finally:
            stop_watching(conn)


class DatabaseClient(stock_client.DatabaseClient):
    """Django's ``dbshell`` client, also given the TLS files of flat ``OPTIONS`` keys
    (``ssl_ca``, from a database URL)."""

    @classmethod
    def settings_to_cmd_args_env(
        cls, settings_dict: dict[str, Any], parameters: Iterable[str]
    ) -> tuple[list[str], dict[str, str] | None]:
        options = settings_dict["OPTIONS"]
        # A TLS file given twice is left as written: the alias's connections raise it,
        # naming the alias, and so does system check E007.
        with contextlib.suppress(ImproperlyConfigured):
            options = mysql_tls_options("", options)
        return super().settings_to_cmd_args_env({**settings_dict, "OPTIONS": options}, parameters)


class DatabaseWrapper(PooledWrapperMixin, stock.DatabaseWrapper):
    client_class = DatabaseClient

    def make_pool_adapter(self, full_reset: bool) -> MySQLdbAdapter:
        params = self.get_connection_params()
        login = {
            "user": params.get("user", ""),
            "password": params.get("password", ""),
            "db": params.get("database"),
        }
        return MySQLdbAdapter(full_reset, self.dbpool_configure, login)

    def _dbpool_connection_params(self) -> dict[str, Any]:
        # TLS files written as flat OPTIONS keys (a database URL's ?ssl_ca=...) go into the
        # ssl dict mysqlclient takes.
        return mysql_tls_options(self.alias, super()._dbpool_connection_params())

    def configure_new_connection(self, connection: Any) -> None:
        # What Django's stock init_connection_state runs at every connect, in one round trip.
        assignments = ["SET SQL_AUTO_IS_NULL = 0"]
        if self.isolation_level:
            assignments.append(
                f"SET SESSION TRANSACTION ISOLATION LEVEL {self.isolation_level.upper()}"
            )
        cursor = connection.cursor()
        try:
            cursor.execute("; ".join(assignments))
            while cursor.nextset():
                pass
        finally:
            cursor.close()
        connection.autocommit(True)

    def explain_connect_error(self, error: BaseException) -> tuple[str, str]:
        args: tuple[Any, ...] = getattr(error, "args", ())
        if len(args) != 2 or not isinstance(args[0], int):
            return super().explain_connect_error(error)
        cause = f"{' '.join(str(args[1]).split()).rstrip('.')} (error {args[0]})"
        return cause, _CONNECT_HINTS.get(args[0], CONNECT_HINT)

    def connection_is_dead_error(self, error: BaseException) -> bool:
        args: tuple[Any, ...] = getattr(error, "args", ())
        return bool(args) and args[0] in _DEAD_ERRORS

    @cached_property
    def _dbpool_exporting_cursor(self) -> type[Any] | None:
        if not metrics.query_metrics_enabled():
            return None
        from django_prometheus.db.common import ExportingCursorWrapper

        return ExportingCursorWrapper(stock.CursorWrapper, self.alias, self.vendor)  # type: ignore[no-any-return]

    def create_cursor(self, name: Any = None) -> Any:
        exporting = self._dbpool_exporting_cursor
        if exporting is None:
            return super().create_cursor(name)
        # django-prometheus's own instrumented cursor, made once per wrapper.
        return exporting(self.connection.cursor())

    def _set_autocommit(self, autocommit: bool) -> None:
        # The server reports autocommit in every reply: skip the round trip when it
        # already has the wanted value (every checkout of a clean pooled connection).
        if self.connection.get_autocommit() != autocommit:
            cast(Any, super())._set_autocommit(autocommit)
