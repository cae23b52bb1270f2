"""``ENGINE = "django_dbpool.backends.mysql"``: Django's MySQL/MariaDB backend (mysqlclient),
pooled."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Callable, Iterable
from typing import Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.mysql import base as stock
from django.db.backends.mysql import client as stock_client
from django.utils.functional import cached_property

from ... import metrics
from ...options import TcpTimeouts
from ..base import PooledWrapperMixin
from ..cursors import TaggingCursorMixin
from ..watch import shutdown_socket, stop_watching
from .support import support

# Raw statements after which a connection may hold a transaction or table locks that
# mysqlclient cannot see. The server reports autocommit in every reply, and Django's own
# transactions (and SET autocommit = 0) turn it off; but START TRANSACTION leaves it on,
# and mysqlclient does not expose the "in transaction" flag of the same reply. Matched at
# the start of each query run through a Django cursor, after whitespace and plain comments,
# and after each ";" of a query that has one (mysqlclient allows several statements per
# query). What Django's ORM runs (SELECT, INSERT, UPDATE, DELETE, SAVEPOINT, RELEASE
# SAVEPOINT, ROLLBACK TO SAVEPOINT; never a ";") does not match, so its connections go back
# with no round trip. A safety net, not a parser: a query matched wrongly (a ";" in a
# string literal) costs one round trip on return.
#   START, BEGIN, XA   open a transaction (BEGIN also starts a compound statement)
#   COMMIT, ROLLBACK   open the next one with AND CHAIN, or with completion_type = CHAIN
#   LOCK, FLUSH        LOCK TABLES, FLUSH TABLES ... WITH READ LOCK: held after the
#                      transaction ends
#   CALL, EXECUTE      a procedure or a prepared statement may do any of the above
#   /*! and /*M!       executable comments run what they hold
_TRANSACTION_STATEMENT = r"""
    (?: \s | /\*(?!M?!).*?\*/ | (?:\#|--\s)[^\n]*(?:\n|\Z) )*+
    (?:
        /\*M?!
      | (?:START|BEGIN|XA|LOCK|FLUSH|CALL|EXECUTE|COMMIT)\b
      | ROLLBACK\b(?!\s+(?:WORK\s+)?TO\b)
    )
"""
_MAY_OPEN_TRANSACTION = re.compile(_TRANSACTION_STATEMENT, re.I | re.VERBOSE | re.DOTALL)
_LATER_MAY_OPEN_TRANSACTION = re.compile(
    f";{_TRANSACTION_STATEMENT}", re.I | re.VERBOSE | re.DOTALL
)
# How the ORM's statements start, as it writes them: a str.startswith() says no sooner than
# the regex, on nearly every statement.
_ORM_VERBS = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "SAVEPOINT ", "RELEASE ", "ROLLBACK TO ")
# What a connection so marked gets on return, in one round trip. ROLLBACK AND NO CHAIN: a
# plain ROLLBACK opens the next transaction when completion_type is CHAIN. UNLOCK TABLES
# after it (before, it would commit a transaction LOCK TABLES began): ROLLBACK does not
# release LOCK TABLES, nor FLUSH TABLES ... WITH READ LOCK. An XA transaction still ACTIVE
# refuses the ROLLBACK: the error has the pool close the connection, and the server rolls
# the transaction back as the session ends.
_ROLLBACK_AND_UNLOCK = "ROLLBACK AND NO CHAIN; UNLOCK TABLES"
# mysqlclient turns executemany("INSERT ... VALUES (%s, ...)") into one multi-row INSERT
# only if the statement starts with the keyword and nothing but ON DUPLICATE KEY UPDATE
# follows the VALUES list: a query comment goes right after the keyword.
_LEADING_INSERT = re.compile(r"\s*(?:INSERT|REPLACE)\b", re.IGNORECASE)


def _may_open_transaction(sql: Any) -> bool:
    try:
        return (
            not sql.startswith(_ORM_VERBS) and _MAY_OPEN_TRANSACTION.match(sql) is not None
        ) or (";" in sql and _LATER_MAY_OPEN_TRANSACTION.search(sql) is not None)
    except TypeError:  # bytes: not read, assumed to
        return True


def _run(connection: Any, sql: str) -> None:
    # One round trip, however many statements: every result is read, so that the
    # connection is ready for the next query.
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
        while cursor.nextset():
            pass
    finally:
        cursor.close()


def _tcp_socket_options(timeouts: TcpTimeouts) -> list[tuple[int, int, int]]:
    # (level, option, value) for setsockopt(); an option this system lacks is left out.
    tcp = socket.IPPROTO_TCP
    wanted = [
        (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
        (tcp, "TCP_USER_TIMEOUT", timeouts.user_timeout_ms),
        (tcp, "TCP_KEEPIDLE", timeouts.keepalive_idle),
        (tcp, "TCP_KEEPINTVL", timeouts.keepalive_interval),
        (tcp, "TCP_KEEPCNT", timeouts.keepalive_count),
    ]
    return [
        (level, option, value)
        for level, name, value in wanted
        if (option := getattr(socket, name, None)) is not None
    ]


def set_network_timeouts(connection: Any, timeouts: TcpTimeouts) -> None:
    """Give a mysqlclient connection's TCP socket ``timeouts`` (a connection over a Unix
    socket is left as it is). mysqlclient has no such settings: they are set through a
    duplicate of its descriptor, which shares the socket, then closed."""
    with socket.socket(fileno=os.dup(connection.fileno())) as sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        for level, option, value in _tcp_socket_options(timeouts):
            sock.setsockopt(level, option, value)


class MySQLTaggingCursorMixin(TaggingCursorMixin):
    """Django's cursor wrappers on MySQL/MariaDB: tagging, with executemany()'s comment where
    mysqlclient's batching still sees the statement, and a mark on the connection when a
    statement may have opened a transaction or taken table locks the driver cannot see (the
    pool then rolls back and unlocks it on return)."""

    def execute(self, sql: Any, params: Any = None) -> Any:
        # Every statement of the alias passes here: _may_open_transaction() inlined.
        try:
            opens = (
                not sql.startswith(_ORM_VERBS) and _MAY_OPEN_TRANSACTION.match(sql) is not None
            ) or (";" in sql and _LATER_MAY_OPEN_TRANSACTION.search(sql) is not None)
        except TypeError:  # bytes: not read, assumed to
            opens = True
        if opens:
            self._dbpool_needs_rollback()
        # The next class in every composed wrapper's MRO, called without super()'s cost.
        return TaggingCursorMixin.execute(self, sql, params)

    def executemany(self, sql: Any, param_list: Any) -> Any:
        if _may_open_transaction(sql):
            self._dbpool_needs_rollback()
        return super().executemany(sql, param_list)

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        # The driver runs CALL itself, not through execute().
        self._dbpool_needs_rollback()
        return super().callproc(procname, params, kparams)  # type: ignore[misc]

    def _many_comment_at(self, sql: str) -> int | None:
        keyword = _LEADING_INSERT.match(sql)
        return None if keyword is None else keyword.end()

    def _dbpool_needs_rollback(self) -> None:
        # Marked before the statement runs: one that fails may still have opened a
        # transaction (a procedure that began one, then failed).
        connection = self.db.connection
        if connection is not None:
            connection.dbpool_rollback_needed = True


class MySQLdbAdapter:
    """What the pool needs of a mysqlclient connection."""

    def __init__(
        self, full_reset: bool, restore: Callable[[Any], None], login: dict[str, Any]
    ) -> None:
        self.full_reset = full_reset
        self.restore = restore  # sets a session up again after COM_CHANGE_USER
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
        # atomic blocks and set_autocommit(False), so this covers every Django transaction;
        # raw statements that may open one under autocommit mark the connection as they run
        # (MySQLTaggingCursorMixin). One without the mark (not set up by
        # configure_new_connection) counts as marked.
        return (
            self.full_reset
            or getattr(conn, "dbpool_rollback_needed", True)
            or not conn.get_autocommit()
        )

    def reset(self, conn: Any) -> None:
        if self.full_reset:
            # COM_CHANGE_USER to the same user: the server rolls back (an XA transaction
            # too), unlocks tables, releases named locks and resets the session (variables,
            # temporary tables, prepared statements, character set) to its defaults; then
            # the session is set up again as at connect. mysqlclient has no binding for
            # mysql_reset_connection, the lighter equivalent.
            conn.change_user(self._login["user"], self._login["password"], self._login["db"])
            self.restore(conn)
        else:
            if getattr(conn, "dbpool_rollback_needed", True):
                _run(conn, _ROLLBACK_AND_UNLOCK)
            else:
                conn.rollback()
            conn.autocommit(True)  # no round trip when the last reply says it is on
        conn.dbpool_rollback_needed = False

    def close(self, conn: Any) -> None:
        try:
            conn.close()
        finally:
            stop_watching(conn)

    def interrupt(self, conn: Any) -> None:
        # The socket only: the server notices the lost client when it next reads or
        # writes (SLEEP() and GET_LOCK() check every few seconds).
        shutdown_socket(conn)


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
            options = support.driver_options("", options)
        return super().settings_to_cmd_args_env({**settings_dict, "OPTIONS": options}, parameters)


class DatabaseWrapper(PooledWrapperMixin, stock.DatabaseWrapper):
    dbpool_support = support
    client_class = DatabaseClient
    dbpool_cursor_mixin = MySQLTaggingCursorMixin

    def make_pool_adapter(self, full_reset: bool) -> MySQLdbAdapter:
        params = self.get_connection_params()
        login = {
            "user": params.get("user", ""),
            "password": params.get("password", ""),
            "db": params.get("database"),
        }
        return MySQLdbAdapter(full_reset, self.dbpool_restore_session, login)

    def _dbpool_connection_params(self) -> dict[str, Any]:
        # TLS files written as flat OPTIONS keys (a database URL's ?ssl_ca=...) go into the
        # ssl dict mysqlclient takes.
        return support.driver_options(self.alias, super()._dbpool_connection_params())

    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        # CONNECT_TIMEOUT, on the connections the pool opens (the private wrapper's), unless
        # OPTIONS sets the driver's own. Never read_timeout or write_timeout: those would cut
        # a long statement on a healthy link (NETWORK_TIMEOUT is set on the socket instead).
        if self.dbpool_private and self.dbpool_private_options.connect_timeout:
            params.setdefault("connect_timeout", self.dbpool_private_options.connect_timeout)
        return params

    def configure_new_connection(self, connection: Any) -> None:
        # NETWORK_TIMEOUT first: the setup below is already a round trip.
        tcp = self.dbpool_private_options.tcp_timeouts
        if tcp is not None:
            set_network_timeouts(connection, tcp)
        # What Django's stock init_connection_state runs at every connect, in one round trip.
        _run(connection, "; ".join(self._dbpool_django_setup()))
        connection.autocommit(True)
        connection.dbpool_rollback_needed = False

    def dbpool_restore_session(self, connection: Any) -> None:
        """Set a session that COM_CHANGE_USER reset to the server's defaults up again as the
        first connect did, in the same order: ``OPTIONS["init_command"]`` (which the client
        library runs only at connect), the character set and ``collation`` and the
        ``sql_mode`` option (mysqlclient's, at connect), then Django's own setup. Runs on the
        private wrapper, from the thread that returns the connection; it needs none of
        dbpool_configure's locking, as it goes through the raw connection only."""
        init_command, driver_setup = self._dbpool_driver_setup
        if init_command:
            # On its own: it may hold several statements, or end in a comment.
            _run(connection, init_command)
        # The client library keeps the character set it negotiated; the server does not.
        charset = driver_setup.get("charset") or connection.character_set_name()
        names = f"SET NAMES {charset}"
        if driver_setup.get("collation"):
            names += f" COLLATE {driver_setup['collation']}"
        statements = [names]
        if driver_setup.get("sql_mode"):
            statements.append(f"SET SESSION sql_mode='{driver_setup['sql_mode']}'")
        _run(connection, "; ".join([*statements, *self._dbpool_django_setup()]))
        connection.autocommit(True)
        connection.dbpool_rollback_needed = False

    @cached_property
    def _dbpool_driver_setup(self) -> tuple[str | None, dict[str, str]]:
        # The session setup the driver does at connect, from the connection parameters:
        # (init_command, {charset, collation, sql_mode}). The private wrapper that uses it
        # belongs to one pool, whose settings do not change.
        params = self.get_connection_params()
        return params.get("init_command"), {
            key: params[key] for key in ("charset", "collation", "sql_mode") if params.get(key)
        }

    def _dbpool_django_setup(self) -> list[str]:
        # Django's stock init_connection_state, without its feature check: setting
        # SQL_AUTO_IS_NULL where it is already off costs nothing in the same round trip.
        assignments = ["SET SQL_AUTO_IS_NULL = 0"]
        if self.isolation_level:
            assignments.append(
                f"SET SESSION TRANSACTION ISOLATION LEVEL {self.isolation_level.upper()}"
            )
        return assignments

    def connection_is_dead_error(self, error: BaseException) -> bool:
        return support.dead_error(error)

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
