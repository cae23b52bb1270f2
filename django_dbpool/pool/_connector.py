"""The pool's connector: opens connections while there is demand and room.

Each connect runs on a short-lived thread of its own: one at a time while connects are
quick, more when one hangs (see ``HEDGE_AFTER_SECONDS``). The connector applies the backoff,
the fail-fast state and its half-open probes (see ``HALF_OPEN_SECONDS``). Its thread is a
daemon, started with the pool's background work, and exits when the pool closes; a forked
child starts its own. It works on the pool's state under the pool's lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Generic, TypeVar

from ._slots import Slot, Waiter
from .backoff import full_jitter
from .errors import ConnectFailed

if TYPE_CHECKING:
    from ._state import PoolState

logger = logging.getLogger("django_dbpool.pool")

C = TypeVar("C")

#: A further connect starts while callers wait and every connect in flight has taken this
#: long: many times what a TLS connect to a healthy server on the same network takes, so its
#: connects stay one at a time, while callers wait at most this long behind one that hangs
#: (a server or load balancer that accepts and never answers, a PgBouncer waiting on its
#: own server) instead of until its CONNECT_TIMEOUT.
HEDGE_AFTER_SECONDS = 0.5
#: Connects in flight at most (and at most MAX_SIZE in all). Three, as psycopg_pool's
#: workers: two connects hanging at once still leave one that can get through.
MAX_CONNECTS_IN_FLIGHT = 3
#: The first wait after a failed connect, doubled at each further failure up to BACKOFF_MAX.
BACKOFF_BASE = 0.05
#: While failing fast, a caller has a connect tried at most this often (see
#: Connector.request_probe_locked).
HALF_OPEN_SECONDS = 0.25


class Connector(Generic[C]):
    """The connector of ``pool``."""

    def __init__(self, pool: PoolState[C]) -> None:
        self.pool = pool

    def run(self) -> None:
        pool = self.pool
        # Decides when to connect; each connect runs on a thread of its own, so that one
        # that hangs (a server that accepts and never answers) does not stop the next.
        wake = pool._connector_wake
        while True:
            with pool._lock:
                while (wait := self.wait_locked()) > 0:
                    if pool._closed:
                        return
                    wake.wait(None if wait == math.inf else wait)
                if pool._failures:
                    # Back off before retrying; close() or a caller's half-open probe
                    # request (see Pool.acquire) cuts the wait short.
                    delay = full_jitter(
                        pool._failures, BACKOFF_BASE, pool.options.backoff_max, pool._random.uniform
                    )
                    end = time.monotonic() + delay
                    while (
                        not pool._closed
                        and not pool._probe_requested
                        and (left := end - time.monotonic()) > 0
                    ):
                        wake.wait(left)
                    if self.wait_locked() > 0:
                        continue
                # Reserve the place before connecting: this is what keeps the bound.
                pool._opening += 1
                start = time.monotonic()
                pool._connect_starts.append(start)
                pool._last_attempt = start
                pool._probe_requested = False
            threading.Thread(
                target=self._open_one,
                args=(start,),
                name=f"django_dbpool[{pool.name}] connect",
                daemon=True,
            ).start()

    def wait_locked(self) -> float:
        pool = self.pool
        # 0 to open a connection now, else how long to wait before asking again (inf: until
        # woken). One connect at a time, as long as connects are quick: a returned
        # connection goes to a waiter before a new one opens, so a burst does not end with a
        # pile of new connections. Another starts, up to MAX_CONNECTS_IN_FLIGHT, only while
        # callers wait (or, failing fast, a caller asked for a probe) and every connect in
        # flight has taken HEDGE_AFTER_SECONDS. While connects fail, each waits out the
        # backoff first (see run).
        if not pool._opening:
            return 0.0 if pool._needs_connection() else math.inf
        if (
            pool._closed
            or pool._opening >= MAX_CONNECTS_IN_FLIGHT
            or pool._size + pool._opening >= pool.options.max_size
        ):
            return math.inf
        if pool._probe_requested:
            return 0.0  # asked for only once the connects in flight are HEDGE_AFTER_SECONDS old
        if not pool._waiters:
            return math.inf
        return max(HEDGE_AFTER_SECONDS - (time.monotonic() - pool._connect_starts[-1]), 0.0)

    def _open_one(self, started: float) -> None:
        pool = self.pool
        start = pool._clock()
        try:
            conn = pool._connect()
        except BaseException as exc:
            if not isinstance(exc, Exception):
                with pool._lock:
                    self._done_locked(started)
                raise
            self._failed(started, exc)
            return
        now = pool._clock()
        slot: Slot[C] = Slot(conn, now, pool.options.max_lifetime)
        with pool._lock:
            self._done_locked(started)
            recovered = pool._unavailable
            pool._failures = 0
            pool._unavailable = False
            pool._last_error = None
            pool._opened += 1
            pool._connect_hist.observe(now - start)
            pool._size += 1
            pool._all.add(slot)
            usable = pool._put_locked(slot, now)
        if recovered:
            logger.warning("pool %r: a connect succeeded, no longer failing fast", pool.name)
        if not usable:
            pool._close_slot(slot, "shutdown")

    def _done_locked(self, started: float) -> None:
        pool = self.pool
        pool._opening -= 1
        pool._connect_starts.remove(started)
        pool._connector_wake.notify()

    def _failed(self, started: float, exc: Exception) -> None:
        pool = self.pool
        if isinstance(exc, ConnectFailed):
            # Its message says what failed and what to check; the frames are this thread's,
            # which no caller called: a caller's traceback quotes it and the driver's error
            # in one line each.
            exc.__traceback__ = None
            if exc.__cause__ is not None:
                exc.__cause__.__traceback__ = None
        with pool._lock:
            self._done_locked(started)
            pool._failures += 1
            failures = pool._failures
            pool._connect_errors += 1
            pool._last_error = exc
            now_failing_fast = failures >= pool.options.fail_fast_after and not pool._unavailable
            failed: list[Waiter[C]] = []
            if now_failing_fast:
                pool._unavailable = True
                failed = self._fail_waiters_locked()
            elif pool._waiters and not self._transient(exc):
                # A wrong configuration, not an unreachable database: waiting or retrying
                # cannot help the caller, who gets the error itself.
                waiter = pool._waiters[0]
                waiter.error = exc
                pool._leave_locked(waiter)
                failed = [waiter]
        # Logged before the callers given the error are woken, so that a caller's traceback
        # is not printed through the middle of these lines.
        if failures == 1 or now_failing_fast:
            logger.warning(
                "pool %r: connect failed (%d in a row)%s: %r",
                pool.name,
                failures,
                "; failing fast until a connect succeeds" if now_failing_fast else "",
                exc,
            )
        for waiter in failed:
            waiter.wake()

    def _transient(self, exc: BaseException) -> bool:
        pool = self.pool
        if pool._is_transient is None:
            return True
        try:
            return pool._is_transient(exc)
        except Exception:
            logger.exception("pool %r: is_transient failed", pool.name)
            return True

    def _fail_waiters_locked(self) -> list[Waiter[C]]:
        pool = self.pool
        # Gives every waiter the unavailable error; the caller wakes them.
        waiters = list(pool._waiters)
        pool._waiters.clear()
        for waiter in waiters:
            pool._unavailable_count += 1
            waiter.error = pool._unavailable_error()
        return waiters

    def request_probe_locked(self) -> None:
        pool = self.pool
        # The half-open circuit: while failing fast, a caller (who still gets
        # PoolUnavailable at once) has the connector try now, instead of after its backoff,
        # when no attempt started within HALF_OPEN_SECONDS and none in flight is younger
        # than HEDGE_AFTER_SECONDS (one that hangs, through a proxy or load balancer that
        # accepts and never answers, does not hold the probes up). So a busy process notices
        # the database's return within about that, with at most a few attempts per second
        # while it is down.
        now = time.monotonic()
        if (
            not pool._probe_requested
            and now - pool._last_attempt >= HALF_OPEN_SECONDS
            and (not pool._opening or now - pool._connect_starts[-1] >= HEDGE_AFTER_SECONDS)
        ):
            pool._probe_requested = True
            pool._connector_wake.notify()
