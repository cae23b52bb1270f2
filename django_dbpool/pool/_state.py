"""The pool's state and the bookkeeping done under its lock.

Locking: one lock (``_lock``) guards all of it. It is held only for bookkeeping, never while
connecting, probing, resetting or closing a connection, so a slow or hanging database call
delays only the thread that makes it. Methods named ``*_locked``, and the ones whose comment
says so, expect the lock held.

The bound: checked-out, idle and in-maintenance connections (being probed, reset or closed)
all count in ``_size`` until they are really closed, and the connector reserves its place in
``_opening`` under the lock before it connects; so ``_size + _opening <= max_size`` holds
under any interleaving.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from . import _fork
from ._connector import Connector
from ._housekeeper import Housekeeper
from ._slots import Holder, Slot, Waiter
from .adapter import ConnectionAdapter
from .errors import PoolTimeout, PoolUnavailable
from .options import PoolOptions
from .stats import CLOSE_REASONS, PIN_REASONS, Histogram

logger = logging.getLogger("django_dbpool.pool")

C = TypeVar("C")


class PoolState(Generic[C]):
    def __init__(
        self,
        connect: Callable[[], C],
        adapter: ConnectionAdapter[C],
        options: PoolOptions | Mapping[str, Any] | None = None,
        *,
        name: str = "default",
        holder_info: Callable[[], str | None] | None = None,
        is_transient: Callable[[BaseException], bool] | None = None,
        on_start: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(options, PoolOptions):
            options = PoolOptions.from_mapping(options)
        self.name = name
        self.options = options
        self._connect = connect
        self._is_transient = is_transient
        self._on_start = on_start
        self._adapter = adapter
        self._holder_info = holder_info
        self._clock = clock
        self._closed = False
        # The background work, composed: each runs on a thread of its own once started.
        self._connector: Connector[C] = Connector(self)
        self._housekeeper: Housekeeper[C] = Housekeeper(self)
        self._reset_state()
        _fork.register(self)

    def _reset_state(self) -> None:
        # Runs at construction and in a forked child: every primitive is created here,
        # looked up through the threading module at call time so that gevent's
        # monkey-patching applies even when this module was imported before patching.
        self._lock = threading.Lock()
        self._connector_wake = threading.Condition(self._lock)
        self._housekeeper_wake = threading.Condition(self._lock)  # notified only by close()
        self._drained = threading.Condition(self._lock)  # a checked-out slot left after close
        self._random = random.Random()  # not shared with a parent process
        self._idle: deque[Slot[C]] = deque()  # right end = most recently used
        self._out: dict[int, Slot[C]] = {}  # id(conn) -> slot, for checked-out connections
        # id(conn) -> slot, for connections parked by their holder (see Pool.park), oldest first
        self._parked: dict[int, Slot[C]] = {}
        self._all: set[Slot[C]] = set()  # every open connection, for the fork hand-over
        self._waiters: deque[Waiter[C]] = deque()
        # Per thread: when it last found no idle connection of its own (see _pick_idle_locked).
        self._slotless = threading.local()
        self._size = 0
        self._opening = 0
        self._started = False
        self._failures = 0
        # When each connect in flight started (time.monotonic), oldest first; when the last
        # attempt started; whether a caller asked for a half-open probe.
        self._connect_starts: list[float] = []
        self._last_attempt = -math.inf
        self._probe_requested = False
        self._unavailable = False
        self._last_error: BaseException | None = None
        self._abort_drain = False
        self._retiring = False  # see Pool.retire
        self._returned_after_close = 0
        self._acquired = 0
        self._timeouts = 0
        self._exhausted = 0
        self._unavailable_count = 0
        self._opened = 0
        self._closed_counts = dict.fromkeys(CLOSE_REASONS, 0)
        self._connect_errors = 0
        self._validations = 0
        self._validations_failed = 0
        self._leaks = 0
        self._orphans = 0
        self._pinned = 0
        self._pin_counts = dict.fromkeys(PIN_REASONS, 0)
        self._wait_hist = Histogram()
        self._hold_hist = Histogram()
        self._connect_hist = Histogram()
        # Hot-path copies of options, read as plain attributes.
        self._validate_after = self.options.validate_after
        self._bare_holder = self._holder_info is None and not self.options.leak_timeout

    def _after_fork_in_child(self) -> None:
        _fork.keep_forever([slot.conn for slot in self._all])
        self._reset_state()

    # -- hand-out and return (lock held) ------------------------------------------------------

    def _register(self, slot: Slot[C], holder: Holder, now: float, start: float) -> None:
        # Lock held. Records a checkout that did not go through the fast path.
        slot.acquired_at = now
        slot.holder = holder
        slot.leak_warned = False
        self._out[id(slot.conn)] = slot
        self._acquired += 1
        self._wait_hist.observe(max(now - start, 0.0))

    def _give(self, waiter: Waiter[C], slot: Slot[C], now: float) -> None:
        # Lock held. Direct hand-off: the slot is registered for the waiter before it wakes,
        # so the releasing thread can never take it back and the waiter needs no lock to run.
        self._register(slot, waiter.holder, now, waiter.since)
        waiter.slot = slot
        waiter.wake()

    def _serve_oldest_locked(self, slot: Slot[C], now: float) -> None:
        # Direct hand-off to the oldest waiter, who leaves the queue like any other: if a
        # connection is idle too (the waiter had been woken to take it and was served this
        # way first), the next waiter is woken for it.
        waiter = self._waiters[0]
        self._give(waiter, slot, now)
        self._leave_locked(waiter)

    def _leave_locked(self, waiter: Waiter[C]) -> None:
        # A waiter leaves the queue (served from idle, timed out or interrupted). If a
        # connection is still idle, the new oldest waiter is woken to take it.
        self._waiters.remove(waiter)
        if self._idle and self._waiters:
            self._waiters[0].wake()

    def _put_locked(self, slot: Slot[C], now: float) -> bool:
        # Hands an owned, usable slot to the oldest waiter, else makes it idle at its place in
        # last-used order. False if the pool is closed, or retiring with nothing in use: the
        # caller must close the slot, and what _retired_locked() returns.
        if self._closed:
            return False
        if self._waiters:
            self._serve_oldest_locked(slot, now)
            return True
        if self._retiring and not self._in_use_locked():
            return False  # nothing in use: back to the server (see Pool.retire)
        idle = self._idle
        i = len(idle)
        while i and idle[i - 1].last_used > slot.last_used:
            i -= 1
        idle.insert(i, slot)
        return True

    def _in_use_locked(self) -> bool:
        # Checked out, or parked between two leases of a holder that is still running.
        return bool(self._out or self._parked)

    def _retired_locked(self) -> list[Slot[C]]:
        # Retiring, with nothing in use any more and nobody waiting: every idle connection
        # goes back to the server (see Pool.retire). Empties the idle list; the caller
        # closes what it returns, off the lock.
        if self._retiring and not self._waiters and not self._in_use_locked():
            return self._take_idle_locked()
        return []

    def _take_parked_locked(self) -> Slot[C]:
        # Takes the connection parked longest from its holder (there is one).
        key = next(iter(self._parked))
        return self._parked.pop(key)

    def _take_idle_locked(self) -> list[Slot[C]]:
        # Empties the idle list and the parked connections; the caller closes what it
        # returns, off the lock.
        idle = [*self._idle, *self._parked.values()]
        self._idle.clear()
        self._parked.clear()
        return idle

    def _mark_suspects_locked(self, created: float) -> None:
        # One dead connection usually means the server restarted or a middlebox dropped its
        # state: every idle connection at least as old gets probed before it is handed out.
        for other in self._idle:
            if other.created <= created:
                other.last_ok = float("-inf")

    # -- connection I/O (lock not held) -------------------------------------------------------

    def _probe(self, slot: Slot[C]) -> bool:
        """Probe a slot we own; a dead one is closed (and its elders marked suspect)."""
        try:
            alive = bool(self._adapter.is_alive(slot.conn))
        except Exception:
            logger.debug("pool %r: probe raised", self.name, exc_info=True)
            alive = False
        with self._lock:
            self._validations += 1
            if alive:
                slot.last_ok = self._clock()
            else:
                self._validations_failed += 1
                self._mark_suspects_locked(slot.created)
        if not alive:
            logger.info("pool %r: discarding a dead connection", self.name)
            self._close_slot(slot, "broken")
        return alive

    def _close_slot(self, slot: Slot[C], reason: str) -> None:
        # Closing may block on the network, so it runs off the lock; the slot counts in
        # _size until it is really closed, so the bound covers connections being closed.
        try:
            self._adapter.close(slot.conn)
        except Exception:
            logger.debug("pool %r: error closing a connection", self.name, exc_info=True)
        with self._lock:
            self._size -= 1
            self._all.discard(slot)
            self._closed_counts[reason] += 1
            self._wake_connector_locked()

    # -- connector demand (lock held) ---------------------------------------------------------

    def _needs_connection(self) -> bool:
        # Open only on demand: waiters, MIN_SIZE, or the fail-fast state (the connector keeps
        # trying then, so that the pool recovers without a caller having to wait for it).
        total = self._size + self._opening
        if total >= self.options.max_size or self._closed:
            return False
        return (
            len(self._waiters) > self._opening
            or (total < self.options.min_size and not self._retiring)
            or self._unavailable
        )

    def _wake_connector_locked(self) -> None:
        if self._started and self._needs_connection():
            self._connector_wake.notify()

    # -- errors (lock held, so the state they describe is consistent) ------------------------

    def _timeout_error(self, waited: float) -> PoolTimeout:
        msg = (
            f"pool {self.name!r}: no connection available after waiting {waited:g} s "
            f"(size {self._size}, in use {self._size - len(self._idle) - len(self._parked)}, "
            f"waiting {len(self._waiters)}, max {self.options.max_size}). Raise MAX_SIZE (or "
            "TIMEOUT), look for connections held too long or never returned (set "
            "LEAK_TIMEOUT to log them), or check that the database accepts connections."
        )
        if self._last_error is not None:
            msg += f" Last connect error: {self._last_error!r}."
        return PoolTimeout(msg)

    def _unavailable_error(self) -> PoolUnavailable:
        err = PoolUnavailable(
            f"pool {self.name!r}: the database is unavailable, {self._failures} consecutive "
            f"connects failed (FAIL_FAST_AFTER={self.options.fail_fast_after}); retrying in "
            f"the background. Last error: {self._last_error!r}"
        )
        err.__cause__ = self._last_error
        return err
