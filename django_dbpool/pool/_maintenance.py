"""The pool's two background threads, started at the first acquire that has to wait.

The connector opens connections while there is demand and room, each on a short-lived thread
of its own: one at a time while connects are quick, more when one hangs (see
``HEDGE_AFTER_SECONDS``); it applies the backoff, the fail-fast state and its half-open probes
(see ``HALF_OPEN_SECONDS``). The housekeeper retires old connections, trims
idle ones, runs keepalive probes, reports leaks and reclaims orphans. Both are daemons and
exit when the pool closes; a forked child starts its own.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import TypeVar

from ._slots import Holder, Slot, Waiter, format_holder, orphaned
from ._state import PoolState
from .backoff import full_jitter
from .errors import ConnectFailed

logger = logging.getLogger("django_dbpool.pool")

C = TypeVar("C")

#: A further connect starts while callers wait and every connect in flight has taken this
#: long: about 40 times a TLS connect to PostgreSQL on the same host, so a healthy server's
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
#: Maintenance._request_probe_locked).
HALF_OPEN_SECONDS = 0.25


class Maintenance(PoolState[C]):
    def _start_locked(self) -> None:
        if self._started:
            return
        self._started = True
        for target, role in (
            (self._connector_loop, "connector"),
            (self._housekeeper_loop, "housekeeper"),
        ):
            threading.Thread(
                target=target, name=f"django_dbpool[{self.name}] {role}", daemon=True
            ).start()

    # -- connector ----------------------------------------------------------------------------

    def _connector_loop(self) -> None:
        # Decides when to connect; each connect runs on a thread of its own, so that one
        # that hangs (a server that accepts and never answers) does not stop the next.
        wake = self._connector_wake
        while True:
            with self._lock:
                while (wait := self._connect_wait_locked()) > 0:
                    if self._closed:
                        return
                    wake.wait(None if wait == math.inf else wait)
                if self._failures:
                    # Back off before retrying; close() or a caller's half-open probe
                    # request (see Pool.acquire) cuts the wait short.
                    delay = full_jitter(
                        self._failures, BACKOFF_BASE, self.options.backoff_max, self._random.uniform
                    )
                    end = time.monotonic() + delay
                    while (
                        not self._closed
                        and not self._probe_requested
                        and (left := end - time.monotonic()) > 0
                    ):
                        wake.wait(left)
                    if self._connect_wait_locked() > 0:
                        continue
                # Reserve the place before connecting: this is what keeps the bound.
                self._opening += 1
                start = time.monotonic()
                self._connect_starts.append(start)
                self._last_attempt = start
                self._probe_requested = False
            threading.Thread(
                target=self._open_one,
                args=(start,),
                name=f"django_dbpool[{self.name}] connect",
                daemon=True,
            ).start()

    def _connect_wait_locked(self) -> float:
        # 0 to open a connection now, else how long to wait before asking again (inf: until
        # woken). One connect at a time, as long as connects are quick: a returned
        # connection goes to a waiter before a new one opens, so a burst does not end with a
        # pile of new connections. Another starts, up to MAX_CONNECTS_IN_FLIGHT, only while
        # callers wait (or, failing fast, a caller asked for a probe) and every connect in
        # flight has taken HEDGE_AFTER_SECONDS. While connects fail, each waits out the
        # backoff first (see _connector_loop).
        if not self._opening:
            return 0.0 if self._needs_connection() else math.inf
        if (
            self._closed
            or self._opening >= MAX_CONNECTS_IN_FLIGHT
            or self._size + self._opening >= self.options.max_size
        ):
            return math.inf
        if self._probe_requested:
            return 0.0  # asked for only once the connects in flight are HEDGE_AFTER_SECONDS old
        if not self._waiters:
            return math.inf
        return max(HEDGE_AFTER_SECONDS - (time.monotonic() - self._connect_starts[-1]), 0.0)

    def _open_one(self, started: float) -> None:
        start = self._clock()
        try:
            conn = self._connect()
        except BaseException as exc:
            if not isinstance(exc, Exception):
                with self._lock:
                    self._connect_done_locked(started)
                raise
            self._connect_failed(started, exc)
            return
        now = self._clock()
        slot: Slot[C] = Slot(conn, now, self.options.max_lifetime)
        with self._lock:
            self._connect_done_locked(started)
            recovered = self._unavailable
            self._failures = 0
            self._unavailable = False
            self._last_error = None
            self._opened += 1
            self._connect_hist.observe(now - start)
            self._size += 1
            self._all.add(slot)
            usable = self._put_locked(slot, now)
        if recovered:
            logger.warning("pool %r: a connect succeeded, no longer failing fast", self.name)
        if not usable:
            self._close_slot(slot, "shutdown")

    def _connect_done_locked(self, started: float) -> None:
        self._opening -= 1
        self._connect_starts.remove(started)
        self._connector_wake.notify()

    def _connect_failed(self, started: float, exc: Exception) -> None:
        if isinstance(exc, ConnectFailed):
            # Its message says what failed and what to check; the frames are this thread's,
            # which no caller called: a caller's traceback quotes it and the driver's error
            # in one line each.
            exc.__traceback__ = None
            if exc.__cause__ is not None:
                exc.__cause__.__traceback__ = None
        with self._lock:
            self._connect_done_locked(started)
            self._failures += 1
            failures = self._failures
            self._connect_errors += 1
            self._last_error = exc
            now_failing_fast = failures >= self.options.fail_fast_after and not self._unavailable
            failed: list[Waiter[C]] = []
            if now_failing_fast:
                self._unavailable = True
                failed = self._fail_waiters_locked()
            elif self._waiters and not self._transient(exc):
                # A wrong configuration, not an unreachable database: waiting or retrying
                # cannot help the caller, who gets the error itself.
                waiter = self._waiters[0]
                waiter.error = exc
                self._leave_locked(waiter)
                failed = [waiter]
        # Logged before the callers given the error are woken, so that a caller's traceback
        # is not printed through the middle of these lines.
        if failures == 1 or now_failing_fast:
            logger.warning(
                "pool %r: connect failed (%d in a row)%s: %r",
                self.name,
                failures,
                "; failing fast until a connect succeeds" if now_failing_fast else "",
                exc,
            )
        for waiter in failed:
            waiter.wake()

    def _transient(self, exc: BaseException) -> bool:
        if self._is_transient is None:
            return True
        try:
            return self._is_transient(exc)
        except Exception:
            logger.exception("pool %r: is_transient failed", self.name)
            return True

    def _fail_waiters_locked(self) -> list[Waiter[C]]:
        # Gives every waiter the unavailable error; the caller wakes them.
        waiters = list(self._waiters)
        self._waiters.clear()
        for waiter in waiters:
            self._unavailable_count += 1
            waiter.error = self._unavailable_error()
        return waiters

    def _request_probe_locked(self) -> None:
        # The half-open circuit: while failing fast, a caller (who still gets
        # PoolUnavailable at once) has the connector try now, instead of after its backoff,
        # when no attempt started within HALF_OPEN_SECONDS and none in flight is younger
        # than HEDGE_AFTER_SECONDS (one that hangs, through a proxy or load balancer that
        # accepts and never answers, does not hold the probes up). So a busy process notices
        # the database's return within about that, with at most a few attempts per second
        # while it is down.
        now = time.monotonic()
        if (
            not self._probe_requested
            and now - self._last_attempt >= HALF_OPEN_SECONDS
            and (not self._opening or now - self._connect_starts[-1] >= HEDGE_AFTER_SECONDS)
        ):
            self._probe_requested = True
            self._connector_wake.notify()

    # -- housekeeper --------------------------------------------------------------------------

    def _housekeeper_loop(self) -> None:
        if self._on_start is not None:
            # Once per process: the pool's background work starts (again in a forked child).
            try:
                self._on_start()
            except Exception:
                logger.warning("pool %r: on_start failed", self.name, exc_info=True)
        opts = self.options
        periods = [opts.keepalive, opts.max_idle, opts.max_lifetime, opts.leak_timeout]
        # Orphans are looked for every second; more often when an option needs it.
        tick = max(min([1.0, *(p / 4 for p in periods if p > 0)]), 0.01)
        wake = self._housekeeper_wake
        while True:
            with self._lock:
                if not self._closed:
                    wake.wait(tick)
                if self._closed:
                    return
            try:
                self._housekeep()
            except Exception:
                logger.exception("pool %r: housekeeping failed", self.name)

    def _housekeep(self) -> None:
        # One pass: retire and trim idle connections, keepalive probes, leak warnings,
        # orphan reclaim, MIN_SIZE refill. Decides under the lock, acts off it.
        opts = self.options
        now = self._clock()
        expired: list[Slot[C]] = []
        idle_out: list[Slot[C]] = []
        to_probe: list[Slot[C]] = []
        leaks: list[tuple[Holder, float]] = []
        orphans: list[Slot[C]] = []
        retired: list[Slot[C]] = []
        with self._lock:
            if self._closed:
                return
            surplus = self._size - opts.min_size
            keep: deque[Slot[C]] = deque()
            for slot in self._idle:  # least recently used first
                if now >= slot.expires:
                    expired.append(slot)
                    surplus -= 1
                elif surplus > 0 and now - slot.last_used >= opts.max_idle:
                    idle_out.append(slot)
                    surplus -= 1
                else:
                    keep.append(slot)
                    if opts.keepalive and now - slot.last_ok >= opts.keepalive:
                        to_probe.append(slot)
            self._idle = keep
            for key, slot in list(self._out.items()):
                holder = slot.holder
                assert holder is not None
                if orphaned(slot):
                    del self._out[key]
                    orphans.append(slot)
                elif (
                    opts.leak_timeout
                    and not slot.leak_warned
                    and now - slot.acquired_at >= opts.leak_timeout
                ):
                    slot.leak_warned = True
                    self._leaks += 1
                    leaks.append((holder, now - slot.acquired_at))
            self._orphans += len(orphans)
            if self._retiring and not self._out and not self._waiters:
                # Retiring, and the last connection out did not come back through release()
                # (its thread exited: reclaimed below, and closed then): nothing stays idle.
                retired = self._take_idle_locked()
            self._wake_connector_locked()
        for slot in retired:
            self._close_slot(slot, "shutdown")
        for slot in expired:
            self._close_slot(slot, "lifetime")
        for slot in idle_out:
            self._close_slot(slot, "idle")
        self._keepalive(to_probe)
        for holder, held in leaks:
            logger.warning(
                "pool %r: connection held for %.1f s (LEAK_TIMEOUT=%g s) by %s",
                self.name,
                held,
                opts.leak_timeout,
                format_holder(holder),
            )
        for slot in orphans:
            self._reclaim(slot)

    def _keepalive(self, candidates: list[Slot[C]]) -> None:
        # One connection out of the idle list at a time, so callers barely notice.
        for slot in candidates:
            with self._lock:
                if self._closed:
                    return
                try:
                    self._idle.remove(slot)
                except ValueError:
                    continue  # handed out meanwhile: its user will tell us if it is dead
            if self._probe(slot):
                with self._lock:
                    usable = self._put_locked(slot, self._clock())
                if not usable:
                    self._close_slot(slot, "shutdown")

    def _reclaim(self, slot: Slot[C]) -> None:
        assert slot.holder is not None
        logger.warning(
            "pool %r: reclaiming a connection whose thread exited without releasing it; %s",
            self.name,
            format_holder(slot.holder),
        )
        try:
            self._adapter.reset(slot.conn)
        except Exception:
            logger.warning(
                "pool %r: reset of a reclaimed connection failed", self.name, exc_info=True
            )
            self._close_slot(slot, "reset_failed")
            return
        with self._lock:
            now = self._clock()
            slot.last_used = slot.last_ok = now
            usable = self._put_locked(slot, now)
        if not usable:
            self._close_slot(slot, "shutdown")
