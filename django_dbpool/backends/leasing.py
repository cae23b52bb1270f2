"""Transaction-scoped leases (``"POOL": {"LEASE": "transaction"}``): the wrapper's side.

With request leases a wrapper holds its pooled connection from its first query until
``close()`` (the end of the request). With transaction leases it gives the connection back
at each *release point* and takes one again at the next statement:

- the last open cursor of the wrapper closes, in autocommit and outside ``atomic()``;
- ``set_autocommit(True)`` ends, which is how the outermost ``atomic()`` exits, after its
  commit or rollback and its ``on_commit`` callbacks; and ``commit()``/``rollback()`` in
  autocommit;
- ``pinned()`` exits.

A *pin* keeps the lease past a release point: an open transaction (``atomic()``, autocommit
off), an open cursor (``QuerySet.iterator()``, a raw cursor not yet closed), ``pinned()``,
user code that took the driver's connection (``connection.connection``; sticky until
``close()``), a statement that changed the session (sticky, see :func:`session_statement`),
a wrapper shared between threads.

The wrapper stays logically connected between leases ("parked"): Django's state
(``queries_log``, ``errors_occurred``, ``run_on_commit``, ...) is the wrapper's. Its
connection is parked too (``Pool.park()``): the next lease takes it back with
``Pool.unpark()`` unless another caller needed it meanwhile, and is otherwise one
``Pool.acquire()``, which gives the thread back the connection it used last when that one
is idle. ``close()`` gives a parked connection back for good (``Pool.end_park()``).
``connect()``, and with it ``connection_created``, runs once per logical connection: at the
first statement after ``close()``. A lease that gets a connection never seen by
``connection_created`` sends it too (receivers that set up the driver's connection must see
every one).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from django.db.backends.signals import connection_created
from django.utils.asyncio import async_unsafe

from ..leases import SessionStatementError
from ..pool.stats import PIN_REASONS

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper as _Base

    from ..pool import Pool
else:
    _Base = object

__all__ = ["LeaseCursorMixin", "LeasingMixin", "lease_cursor_mixin", "session_statement"]

logger = logging.getLogger("django_dbpool")

#: Seconds after a release point during which the same connection, leased again, is not
#: checked for a server-side close (see PooledWrapperMixin._dbpool_checkout).
RECHECK_AFTER = 1.0

# Statements that change the session beyond the statement (or the transaction) they run in,
# matched at the start of a query after whitespace, comments and parentheses, and after a
# ";". SET LOCAL and SET CONSTRAINTS last for the transaction; every other SET (a session
# variable, SET TRANSACTION for the next transaction, MySQL's SET @variable) outlives it.
# MySQL's executable comments (/*! ... */) run what they hold. A safety net, not a parser.
_SESSION_HEAD = r"""
    (?: \s | \( | /\*(?!M?!).*?\*/ | (?:\#|--\s)[^\n]*(?:\n|\Z) )*+
    (?:
        (?:BEGIN|START|LOCK|UNLOCK|XA|FLUSH|LISTEN|UNLISTEN|PREPARE|DEALLOCATE|EXECUTE
          |DECLARE|CALL|DISCARD|RESET|USE|HANDLER)\b
      | SET\b(?!\s+(?:LOCAL|CONSTRAINTS)\b)
      | CREATE\s+(?:(?:GLOBAL|LOCAL|OR\s+REPLACE)\s+)*TEMP(?:ORARY)?\b
      | /\*M?!
    )
"""
_SESSION_START = re.compile(_SESSION_HEAD, re.I | re.VERBOSE | re.DOTALL)
_SESSION_LATER = re.compile(f";{_SESSION_HEAD}", re.I | re.VERBOSE | re.DOTALL)
# Session-level locks and settings taken by a function, anywhere in a statement; the
# transaction-level ones (pg_advisory_xact_lock, set_config(..., true)) end with it, but
# set_config is matched whatever its third argument says.
_SESSION_FUNCTION = re.compile(
    r"\b(?:pg_(?:try_)?advisory_lock(?:_shared)?|get_lock|set_config)\s*\(", re.I
)
# How the ORM's statements start: for these only the function test runs, and only when a
# cheap substring test says the statement may name one.
_ORM_VERBS = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "SAVEPOINT ", "RELEASE ", "ROLLBACK TO ")
_FUNCTION_HINTS = ("ock", "OCK", "_config", "_CONFIG")


def session_statement(sql: Any) -> bool:
    """Whether ``sql`` may change the session beyond its transaction: the prefix test of the
    safety net, a string prefix test for a statement the ORM wrote (``make bench-tagging``
    measures it)."""
    if not isinstance(sql, str):
        return False  # bytes or a composed statement: not read
    if not sql.startswith(_ORM_VERBS) and _SESSION_START.match(sql) is not None:
        return True
    if ";" in sql and _SESSION_LATER.search(sql) is not None:
        return True
    for hint in _FUNCTION_HINTS:
        if hint in sql:
            return _SESSION_FUNCTION.search(sql) is not None
    return False


# Where a caller's code starts: the first frame outside Django, django_dbpool and Celery's
# Django fixup. The fixup reads every wrapper's ``connection`` in a new prefork child to close
# the descriptor the child inherited: a parked wrapper must answer None there (the child's
# fork handler has forgotten the inherited connection) rather than lease a new connection for
# the fixup to close the socket of.
_INTERNAL = ("django.", "django_dbpool.", "celery.fixups.django")


# django.db.connection, the proxy to the default alias's wrapper: its reader is the caller.
_PROXY = "django.utils.connection"


def _internal(frame: Any) -> bool:
    name: str = frame.f_globals.get("__name__", "")
    if name == _PROXY:
        name = frame.f_back.f_globals.get("__name__", "")
    return name.startswith(_INTERNAL)


def _place(frame: Any) -> str:
    # Off the hot path: only when a warning names where a statement came from.
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_INTERNAL):
        frame = frame.f_back
    if frame is None:
        return "an unknown place"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} ({frame.f_code.co_name})"


def _first_words(sql: str) -> str:
    words = sql.split(None, 4)[:4]
    text = " ".join(words)
    return text if len(text) <= 60 else text[:57] + "..."


# The places already warned about (a statement run at every request warns once per process).
_warned: set[str] = set()
_MAX_WARNED = 1000


class LeaseCursorMixin:
    """Cursor wrappers of a wrapper with transaction leases: an open cursor pins the lease,
    and statements that change the session go through the safety net."""

    db: Any
    cursor: Any
    #: The wrapper's logical connection this cursor was counted in; -1 once closed.
    _dbpool_generation = -1

    def execute(self, sql: Any, params: Any = None) -> Any:
        db = self.db
        if db._dbpool_net_active() and session_statement(sql):
            db._dbpool_session_statement(sql)
        return super().execute(sql, params)  # type: ignore[misc]

    def executemany(self, sql: Any, param_list: Any) -> Any:
        db = self.db
        if db._dbpool_net_active() and session_statement(sql):
            db._dbpool_session_statement(sql)
        return super().executemany(sql, param_list)  # type: ignore[misc]

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        db = self.db
        if db._dbpool_net_active():
            db._dbpool_session_statement(f"CALL {procname}")
        return super().callproc(procname, params, kparams)  # type: ignore[misc]

    def close(self) -> None:
        try:
            self.cursor.close()
        finally:
            generation, self._dbpool_generation = self._dbpool_generation, -1
            self.db._dbpool_cursor_closed(generation)


_mixins: dict[type, type] = {}


def lease_cursor_mixin(vendor_mixin: type) -> type:
    """``vendor_mixin`` (the vendor's tagging cursor mixin) with :class:`LeaseCursorMixin`
    before it: made on first use, then reused."""
    mixin = _mixins.get(vendor_mixin)
    if mixin is None:
        mixin = type("Lease" + vendor_mixin.__name__, (LeaseCursorMixin, vendor_mixin), {})
        _mixins[vendor_mixin] = mixin
    return mixin


class LeasingMixin(_Base):
    """The release points, pins and re-leases of transaction leases, for
    :class:`~django_dbpool.backends.base.PooledWrapperMixin`. With request leases
    (``_dbpool_transaction`` false) every method here behaves as Django's own."""

    if TYPE_CHECKING:
        _dbpool_lease: Pool[Any] | None
        dbpool_broken: bool
        _thread_sharing_count: int

        def _dbpool_checkout(self, pool: Pool[Any], recent: Any = None) -> Any: ...
        def _dbpool_pool(self) -> Pool[Any]: ...

    #: The driver connection (Django's ``connection`` attribute, see the property).
    _dbpool_conn: Any = None
    #: This logical connection gives its connection back at release points.
    _dbpool_transaction = False
    #: Between two leases of a logical connection: no connection held, next statement
    #: takes one without connect().
    _dbpool_parked = False
    #: Open cursors of this logical connection, and its number (cursors of an earlier one
    #: closing later are not counted).
    _dbpool_cursors = 0
    _dbpool_generation = 0
    #: Depth of pinned() blocks on this wrapper (they outlive close()).
    _dbpool_pins = 0
    #: A pin until close(): "raw_connection" or "session_sql".
    _dbpool_sticky: str | None = None
    #: Watch reads of ``connection`` for user code taking the driver connection.
    _dbpool_watch_raw = False
    #: connect() is running: no release point until it is done.
    _dbpool_connecting = False
    #: The thread that took the current lease (releases happen on it only).
    _dbpool_lease_thread = 0
    #: Pin reasons already counted for the current lease (bits in PIN_REASONS order).
    _dbpool_pins_counted = 0
    #: SESSION_SQL: "pin" or "error".
    _dbpool_session_sql = "pin"
    #: The connection given back at the last release point, and when (time.monotonic()).
    _dbpool_last: tuple[Any, float] = (None, 0.0)
    #: The pool the connection of _dbpool_last is parked in (see Pool.park), or None.
    _dbpool_park_pool: Pool[Any] | None = None

    # -- the driver connection ----------------------------------------------------------------

    @property
    def connection(self) -> Any:
        """The driver connection, as Django's attribute. With transaction leases, user code
        that reads it pins the lease until ``close()`` (taking one first if parked): it may
        keep the object and use it at any time. Django's and django_dbpool's own reads do
        not pin, nor does Celery's Django fixup's as a prefork child starts."""
        conn = self._dbpool_conn
        if self._dbpool_watch_raw and not _internal(sys._getframe(1)):
            conn = self._dbpool_take_raw()
        return conn

    @connection.setter
    def connection(self, value: Any) -> None:
        self._dbpool_conn = value

    def _dbpool_take_raw(self) -> Any:
        self._dbpool_watch_raw = False
        self._dbpool_sticky = "raw_connection"
        if self._dbpool_conn is None and self._dbpool_parked:
            self.ensure_connection()
        return self._dbpool_conn

    # -- logical connection ---------------------------------------------------------------------

    def _dbpool_start_leasing(self, transaction: bool, session_sql: str) -> None:
        # At connect(), before connection_created: a new logical connection.
        self._dbpool_transaction = transaction
        self._dbpool_session_sql = session_sql
        self._dbpool_parked = False
        self._dbpool_cursors = 0
        self._dbpool_generation += 1
        self._dbpool_sticky = None
        self._dbpool_watch_raw = transaction
        self._dbpool_lease_thread = threading.get_ident()
        self._dbpool_pins_counted = 0

    def _dbpool_stop_leasing(self) -> None:
        # The logical connection ended (close(), or lost inside atomic()).
        pool = self._dbpool_park_pool
        if pool is not None:
            self._dbpool_park_pool = None
            pool.end_park(self._dbpool_last[0])
        self._dbpool_last = (None, 0.0)
        self._dbpool_transaction = False
        self._dbpool_parked = False
        self._dbpool_cursors = 0
        self._dbpool_generation += 1
        self._dbpool_sticky = None
        self._dbpool_watch_raw = False

    @async_unsafe
    def ensure_connection(self) -> None:
        if self._dbpool_conn is None:
            if self._dbpool_parked:
                # Raises the pool's errors only, which are Django's OperationalError already.
                self._dbpool_lease_again()
                return
            super().ensure_connection()

    def _dbpool_lease_again(self) -> None:
        # A new lease for a parked logical connection: the connection given back at the
        # release point if it is still parked (Pool.unpark), else a checkout; nothing of
        # connect(). _dbpool_pool() replaces a pool closed or reconfigured meanwhile. The
        # connection given back less than RECHECK_AFTER ago is not checked for a server-side
        # close again (a getsockopt() call, a good part of a lease's cost): a statement on it
        # finds out, as one would a moment later.
        last, released_at = self._dbpool_last
        recent = last if time.monotonic() - released_at < RECHECK_AFTER else None
        pool, self._dbpool_park_pool = self._dbpool_park_pool, None
        connection = None
        unseen = False
        if pool is not None and pool.unpark(last):
            if recent is None and last.dbpool_closed_by_server():
                pool.release(last, broken=True)
            else:
                # Still parked and open: the lease resumes, no checkout.
                connection = last
                self._dbpool_lease = pool
                self.dbpool_broken = False
        if connection is None:
            connection = self._dbpool_checkout(self._dbpool_pool(), recent)
            # The connection resumed above is one this logical connection had: seen.
            unseen = not getattr(connection, "dbpool_created_sent", False)
        self._dbpool_conn = connection
        self._dbpool_parked = False
        self._dbpool_lease_thread = threading.get_ident()
        self._dbpool_pins_counted = 0
        if unseen:
            self._dbpool_send_created(connection)

    def _dbpool_send_created(self, connection: Any) -> None:
        # Off the hot path: a lease gave this logical connection a connection that has never
        # been through connection_created (opened by the pool and handed out by a lease
        # first, not by connect()). Receivers that set up the driver's connection rather
        # than the session (django.contrib.postgres registers its hstore and citext types
        # on it) must see every connection a statement runs on. Once per connection: the
        # next request's connect() sends the signal again anyway.
        self._dbpool_connecting = True
        try:
            connection_created.send(sender=self.__class__, connection=self)
        finally:
            self._dbpool_connecting = False
        connection.dbpool_created_sent = True

    def close(self) -> None:
        super().close()
        if self._dbpool_conn is None:
            self._dbpool_stop_leasing()

    def close_if_unusable_or_obsolete(self) -> None:
        if self._dbpool_parked:
            # Errors concerned a connection already given back (as broken, if it was).
            self.errors_occurred = False
            if self.close_at is not None and time.monotonic() >= self.close_at:
                self.close()
            return
        super().close_if_unusable_or_obsolete()

    # -- release points -------------------------------------------------------------------------

    def commit(self) -> None:
        super().commit()
        if self._dbpool_transaction:
            self._dbpool_release_point()

    def rollback(self) -> None:
        super().rollback()
        if self._dbpool_transaction:
            self._dbpool_release_point()

    def set_autocommit(
        self, autocommit: bool, force_begin_transaction_with_broken_autocommit: bool = False
    ) -> None:
        super().set_autocommit(autocommit, force_begin_transaction_with_broken_autocommit)
        if autocommit and self._dbpool_transaction:
            self._dbpool_release_point()

    def _dbpool_cursor_opened(self, cursor: Any) -> None:
        cursor._dbpool_generation = self._dbpool_generation
        self._dbpool_cursors += 1

    def _dbpool_cursor_closed(self, generation: int) -> None:
        if generation != self._dbpool_generation:
            return  # closed twice, or opened in an earlier logical connection
        self._dbpool_cursors -= 1
        # A release point even with other cursors still open: they pin it (and count).
        self._dbpool_release_point()

    def _dbpool_pin_reason(self) -> str | None:
        """What keeps the current lease past a release point, or None."""
        if self.in_atomic_block or not self.autocommit:
            return "transaction"
        if self._dbpool_cursors:
            return "cursor"
        if self._dbpool_pins:
            return "pinned"
        if self._dbpool_sticky is not None:
            return self._dbpool_sticky
        if self._thread_sharing_count:
            return "shared"
        return None

    def _dbpool_release_point(self) -> None:
        pool = self._dbpool_lease
        if pool is None or self._dbpool_conn is None or self._dbpool_connecting:
            return
        reason = self._dbpool_pin_reason()
        if reason is not None:
            bit = 1 << PIN_REASONS.index(reason)
            counted = self._dbpool_pins_counted
            if not counted & bit:
                self._dbpool_pins_counted = counted | bit
                pool.count_pin(reason, first=not counted)
            return
        if threading.get_ident() != self._dbpool_lease_thread:
            # A cursor closed by the garbage collector on another thread: the lease is
            # given back at the next release point, or by close().
            return
        connection, self._dbpool_conn = self._dbpool_conn, None
        self._dbpool_lease = None
        self._dbpool_parked = True
        if self.dbpool_broken:
            self._dbpool_last = (None, 0.0)
            pool.release(connection, broken=True)
            return
        self._dbpool_last = (connection, time.monotonic())
        self._dbpool_park_pool = pool
        pool.park(connection)

    # -- pins -------------------------------------------------------------------------------------

    def dbpool_pin(self) -> None:
        """Enter a pin (``django_dbpool.pinned()``): the lease, once taken, is held until
        the matching :meth:`dbpool_unpin`. Nestable."""
        self._dbpool_pins += 1

    def dbpool_unpin(self) -> None:
        """Leave a pin; the last one is a release point."""
        self._dbpool_pins = max(self._dbpool_pins - 1, 0)
        if not self._dbpool_pins and self._dbpool_transaction:
            self._dbpool_release_point()

    def _dbpool_net_active(self) -> bool:
        # The safety net runs while nothing else keeps the lease past the next release
        # point: inside a transaction or a pin the session is the caller's already.
        return (
            self._dbpool_transaction
            and self.autocommit
            and not self.in_atomic_block
            and not self._dbpool_pins
            and self._dbpool_sticky is None
        )

    def _dbpool_session_statement(self, sql: str) -> None:
        # Off the hot path: a statement that changes the session, outside any pin.
        words = _first_words(sql)
        place = _place(sys._getframe(2))
        if self._dbpool_session_sql == "error":
            raise SessionStatementError(
                f"DATABASES[{self.alias!r}] has transaction leases (POOL LEASE "
                f"'transaction'), and {words!r} at {place} changes the session outside a "
                "pin: the next statement may run on another connection. Wrap the code that "
                f"needs one session in django_dbpool.pinned(using={self.alias!r}), use SET "
                "LOCAL inside atomic(), or set POOL SESSION_SQL to 'pin'."
            )
        self._dbpool_sticky = "session_sql"
        key = f"{self.alias}\0{place}"
        if key in _warned:
            return
        if len(_warned) < _MAX_WARNED:
            _warned.add(key)
        logger.warning(
            "DATABASES[%r] has transaction leases, and %r at %s changes the session outside "
            "a pin: its connection is held until the end of the request. Wrap the code that "
            "needs one session in django_dbpool.pinned(using=%r) (or use SET LOCAL inside "
            "atomic()) to keep the leases short. Pid %d; warned once per place.",
            self.alias,
            words,
            place,
            self.alias,
            os.getpid(),
        )
