"""The pool's two background threads, started at the first acquire that has to wait.

The connector opens connections one at a time, only while there is demand and room, and
applies the backoff and the fail-fast state. The housekeeper retires old connections, trims
idle ones, runs keepalive probes, reports leaks and reclaims orphans. Both are daemons and
exit when the pool closes; a forked child starts its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TypeVar

from ._records import Holder, Slot, backoff_delay, format_holder, orphaned
from ._state import PoolState
from .errors import ConnectFailed

logger = logging.getLogger("django_dbpool.pool")

C = TypeVar("C")


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
        wake = self._connector_wake
        while True:
            with self._lock:
                while not self._needs_connection():
                    if self._closed:
                        return
                    wake.wait()
                if self._failures:
                    # Back off before retrying; only close() cuts the wait short.
                    delay = backoff_delay(
                        self._failures, self.options.backoff_max, self._random.uniform
                    )
                    end = time.monotonic() + delay
                    while not self._closed and (left := end - time.monotonic()) > 0:
                        wake.wait(left)
                    if not self._needs_connection():
                        continue
                # Reserve the place before connecting: this is what keeps the bound.
                self._opening += 1
            self._open_one()

    def _open_one(self) -> None:
        start = self._clock()
        try:
            conn = self._connect()
        except BaseException as exc:
            if not isinstance(exc, Exception):
                with self._lock:
                    self._opening -= 1
                raise
            # Only this thread changes _failures and _unavailable, so what the lock below
            # records is known now: logged first, a woken caller's traceback cannot be
            # printed through the middle of these lines.
            failures = self._failures + 1
            now_failing_fast = failures >= self.options.fail_fast_after and not self._unavailable
            if isinstance(exc, ConnectFailed):
                # Its message says what failed and what to check; the frames are this
                # thread's, which no caller called: a caller's traceback quotes it and the
                # driver's error in one line each.
                exc.__traceback__ = None
                if exc.__cause__ is not None:
                    exc.__cause__.__traceback__ = None
            if failures == 1 or now_failing_fast:
                logger.warning(
                    "pool %r: connect failed (%d in a row)%s: %r",
                    self.name,
                    failures,
                    "; failing fast until a connect succeeds" if now_failing_fast else "",
                    exc,
                )
            with self._lock:
                self._opening -= 1
                self._failures = failures
                self._connect_errors += 1
                self._last_error = exc
                if now_failing_fast:
                    self._unavailable = True
                    self._fail_waiters_locked()
                elif self._waiters and not self._transient(exc):
                    # A wrong configuration, not an unreachable database: waiting or
                    # retrying cannot help the caller, who gets the error itself.
                    waiter = self._waiters[0]
                    waiter.error = exc
                    self._leave_locked(waiter)
                    waiter.wake()
            return
        now = self._clock()
        slot: Slot[C] = Slot(conn, now, self.options.max_lifetime)
        with self._lock:
            self._opening -= 1
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

    def _transient(self, exc: BaseException) -> bool:
        if self._is_transient is None:
            return True
        try:
            return self._is_transient(exc)
        except Exception:
            logger.exception("pool %r: is_transient failed", self.name)
            return True

    def _fail_waiters_locked(self) -> None:
        waiters = list(self._waiters)
        self._waiters.clear()
        for waiter in waiters:
            self._unavailable_count += 1
            waiter.error = self._unavailable_error()
            waiter.wake()

    # -- housekeeper --------------------------------------------------------------------------

    def _housekeeper_loop(self) -> None:
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
            self._wake_connector_locked()
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
