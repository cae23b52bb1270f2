"""The connection pool: acquire, release, close and stats.

``Pool`` is one class: its state and the bookkeeping done under its lock are in ``_state``
(the base it is built on), its background work is composed of two workers it owns, the
connector (``_connector``) and the housekeeper (``_housekeeper``). The checkout and return
fast paths are written out inline on purpose: they run on every database use (``make
bench-pool`` measures them).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType
from typing import Generic, TypeVar

from . import _fork
from ._slots import Holder, Slot, Waiter, capture_stack, orphaned
from ._state import PoolState
from .errors import PoolClosed, PoolExhausted
from .stats import BUCKETS_SECONDS, PIN_REASONS, CloseResult, PoolStats, closed_mapping

__all__ = ["Pool"]

logger = logging.getLogger("django_dbpool.pool")

C = TypeVar("C")

_getframe = sys._getframe

#: Bounded barging. A connection returned while callers wait goes straight to the oldest of
#: them once that waiter has been passed over this many times. Until then the connection goes
#: idle and the oldest waiter is woken to take it, but a running thread that asks first gets
#: it. Handing every connection to a sleeping thread makes every checkout under contention
#: sleep and wait for a thread switch; this bound keeps the order fair all the same. Each
#: pass adds a connection hold time to that waiter's wait: more than one pass raised the p99
#: latency over strict order for the same throughput (README, Benchmarks).
MAX_PASSES = 1

#: How often a draining close() looks for connections whose holder thread has exited.
_ORPHAN_LOOK_SECONDS = 0.05


class Pool(PoolState[C]):
    """A bounded, fair, fork-safe pool of connections made by ``connect``.

    ``Pool(connect, adapter, options=None, *, name="default", holder_info=None,
    is_transient=None, on_start=None)``:
    ``connect()`` opens a new connection (called from a background thread); ``adapter``
    probes, resets and closes connections (see
    :class:`~django_dbpool.pool.adapter.ConnectionAdapter`); ``options`` is a
    :class:`~django_dbpool.pool.options.PoolOptions` or the ``POOL`` mapping of upper-case
    settings; ``name`` (the database alias) appears in log messages and stats;
    ``holder_info``, if given, is called at each acquire and what it returns (a request tag,
    say) is included in leak and orphan warnings. ``is_transient``, if given, classifies
    connect errors: one it calls not transient (a wrong configuration rather than an
    unreachable database) is raised at once to the oldest waiting caller instead of being
    retried behind the caller's back; by default every connect error is transient (backoff,
    then ``PoolUnavailable`` after ``FAIL_FAST_AFTER``). ``on_start``, if given, is called
    once per process from the pool's housekeeper thread as the background work starts (a
    forked child starts its own). A ``clock`` argument replaces ``time.monotonic`` for
    connection ages (tests).

    Nothing connects at construction: the first acquire that finds no idle connection starts
    the background connector and housekeeper. All methods are thread-safe.
    """

    def _start_locked(self) -> None:
        # The background work, at the first acquire that finds no idle connection (again in
        # a forked child, whose state starts afresh).
        if self._started:
            return
        self._started = True
        for worker, role in ((self._connector, "connector"), (self._housekeeper, "housekeeper")):
            threading.Thread(
                target=worker.run, name=f"django_dbpool[{self.name}] {role}", daemon=True
            ).start()

    def acquire(self, timeout: float | None = None, *, stacklevel: int = 1) -> C:
        """Check a connection out; the caller must :meth:`release` it exactly once.

        Waits at most ``timeout`` seconds (default ``TIMEOUT``), first in first out; a running
        thread may take a returned connection ahead of the oldest waiter, at most
        :data:`MAX_PASSES` times. A connection idle longer than ``VALIDATE_AFTER`` is probed
        first; dead ones are replaced transparently.

        Raises :class:`PoolTimeout` when the wait runs out, :class:`PoolExhausted` at once when
        ``MAX_WAITING`` callers already wait, :class:`PoolUnavailable` at once while the
        database refuses connections, :class:`PoolClosed` after :meth:`close`.

        ``stacklevel`` picks the frame recorded as the place of acquisition in leak and orphan
        warnings, as in :func:`warnings.warn`: 1 is the caller of ``acquire``.
        """
        caller = _getframe(stacklevel)
        now = self._clock()
        # Always-on holder record, kept cheap: the thread, and the caller's code and
        # bytecode offset (its line number is computed only if a warning needs it). As
        # _holder(), written out: this is the hot path.
        if self._bare_holder:
            holder: Holder = (
                threading.current_thread(),
                caller.f_code,
                caller.f_lasti,
                None,
                None,
            )
        else:
            holder = self._full_holder(caller)
        with self._lock:
            # Fast path. Closing empties _idle, so no closed check is needed here.
            idle = self._idle
            if idle:
                # The most recently used connection, unless it is not this thread's and
                # another one suits better (thread affinity, see _pick_idle_locked).
                slot = idle[-1]
                last = slot.holder
                if (last is None or last[0] is not holder[0]) and (
                    picked := self._pick_idle_locked(holder[0], now)
                ) is not None:
                    slot = picked
                else:
                    idle.pop()
                if now - slot.last_ok < self._validate_after and now < slot.expires:  # Slot.fresh
                    slot.acquired_at = now
                    slot.holder = holder
                    slot.leak_warned = False
                    self._out[id(slot.conn)] = slot
                    self._acquired += 1
                    return slot.conn
            else:
                slot = None
        return self._checkout_slow(slot, timeout, holder, now)

    def release(self, conn: C, broken: bool = False) -> None:
        """Return a checked-out connection.

        Pass ``broken=True`` when the connection must not be reused (the driver reported it
        lost); it is closed and replaced. A connection inside a transaction or in an error
        state is reset first; if that fails it is closed. With callers waiting, the oldest is
        woken for the connection, or handed it directly once passed over ``MAX_PASSES`` times.

        Not idempotent: releasing a connection that is not checked out from this pool raises
        ``ValueError``, except after :meth:`close` (force-closed connections) and in a forked
        child (inherited connections), where it is ignored.
        """
        reason: str | None = "broken" if broken else None
        if reason is None:
            try:
                # needs_reset only reads local state: harmless even on a connection that turns
                # out not to be ours. reset does I/O, so _reset checks ownership first.
                if self._adapter.needs_reset(conn):
                    reason = self._reset(conn)
            except Exception:
                logger.warning("pool %r: reset check failed", self.name, exc_info=True)
                reason = "reset_failed"
        now = self._clock()
        retired: Sequence[Slot[C]] = ()
        with self._lock:
            slot = self._out.pop(id(conn), None)
            if slot is not None:
                # Histogram.observe inlined: this is the hot path.
                held = now - slot.acquired_at
                hist = self._hold_hist
                hist.counts[bisect_left(BUCKETS_SECONDS, held)] += 1
                hist.sum += held
                if held > hist.max:
                    hist.max = held
                if reason is None and now < slot.expires and not self._closed:
                    slot.last_used = slot.last_ok = now
                    waiters = self._waiters
                    if not waiters:
                        if not self._retiring or self._in_use_locked():
                            self._idle.append(slot)
                            return
                        # Retiring and this was the last one in use: it goes back to the
                        # server, and every idle one with it (see retire()).
                        reason = "shutdown"
                    elif waiters[0].passed >= MAX_PASSES:
                        self._serve_oldest_locked(slot, now)
                        return
                    else:
                        # Bounded barging (see MAX_PASSES): idle, and the oldest waiter is
                        # woken to come for it.
                        oldest = waiters[0]
                        oldest.passed += 1
                        self._idle.append(slot)
                        oldest.wake()
                        return
                elif self._closed:
                    reason = "shutdown"
                    self._returned_after_close += 1
                    self._drained.notify_all()
                elif reason is None:
                    reason = "lifetime"
                elif reason == "broken":
                    self._mark_suspects_locked(slot.created)
                retired = self._retired_locked()
        if slot is None:
            self._release_unknown(conn)
            return
        assert reason is not None
        for other in retired:
            self._close_slot(other, "shutdown")
        self._close_slot(slot, reason)

    def park(self, conn: C) -> None:
        """End the lease of a checked-out connection but keep the connection aside for the
        caller: :meth:`unpark` takes it back, with no checkout, if it is still parked then.

        For callers that give their connection back between statements and usually want it
        again moments later (transaction-scoped leases). A parked connection is the caller's
        only while nobody else needs it:

        - while callers wait, a park is a :meth:`release` (the waiters get it as they would
          any returned connection), so no connection is ever parked while a caller waits;
        - a caller that finds no idle connection takes a parked one (the oldest) rather than
          wait or open another: under the GIL it runs only while the parked connection's
          holder is not running (a sleep, an ``await``, a socket); a holder that goes on with
          its next statement at once has taken its connection back first;
        - the housekeeper makes a connection parked for a whole tick idle again.

        A connection that needs a reset or has reached its lifetime, or a pool that is
        closed, is released instead too. While the pool retires, a parked connection counts
        as in use (its holder's request is still running). Raises as :meth:`release` for a
        connection not checked out here.
        """
        try:
            needs_reset = self._adapter.needs_reset(conn)
        except Exception:
            needs_reset = True
        if not needs_reset:
            now = self._clock()
            with self._lock:
                slot = self._out.get(id(conn))
                if (
                    slot is not None
                    and not self._waiters
                    and now < slot.expires
                    and not self._closed
                ):
                    del self._out[id(conn)]
                    self._hold_hist.observe(now - slot.acquired_at)
                    slot.last_used = slot.last_ok = now
                    self._parked[id(conn)] = slot
                    return
        self.release(conn)

    def unpark(self, conn: C, *, stacklevel: int = 1) -> bool:
        """Take back a connection the calling thread parked (see :meth:`park`): True if it is
        checked out to the caller again, a lease of its own (holder, place and
        ``holder_info`` as :meth:`acquire` records them); False if it went to another caller
        meanwhile (or was closed, or reached its lifetime): then :meth:`acquire` as usual."""
        caller = _getframe(stacklevel)
        now = self._clock()
        holder = self._holder(caller)
        with self._lock:
            slot = self._parked.get(id(conn))
            if slot is None or slot.conn is not conn:
                return False
            last = slot.holder
            if last is None or last[0] is not holder[0]:
                return False
            del self._parked[id(conn)]
            if now < slot.expires:
                slot.holder = holder
                slot.acquired_at = now
                slot.leak_warned = False
                self._out[id(conn)] = slot
                self._acquired += 1
                return True
            retired = self._retired_locked()
        for other in retired:
            self._close_slot(other, "shutdown")
        self._close_slot(slot, "lifetime")
        return False

    def end_park(self, conn: C) -> None:
        """Give back for good a connection :meth:`park` kept, if it is still parked: the
        caller's lease is over (the end of a request)."""
        with self._lock:
            slot = self._parked.get(id(conn))
            if slot is None or slot.conn is not conn:
                return
            del self._parked[id(conn)]
            if self._put_locked(slot, self._clock()):
                return
            retired = self._retired_locked()
        for other in retired:
            self._close_slot(other, "shutdown")
        self._close_slot(slot, "shutdown")

    def probe(self, conn: C) -> None:
        """Check a connection checked out from this pool with a round trip (the adapter's
        ``is_alive``), for health checks; raises the driver's error, or ``ConnectionError``
        when the adapter reports the connection dead. The caller releases it, as broken if
        this raised."""
        if not self._adapter.is_alive(conn):
            raise ConnectionError("the probe found the connection dead")

    def share(self, conn: C) -> None:
        """Mark a checked-out connection as used by more threads than the one that acquired
        it, until it is released.

        A connection whose holder thread has exited is normally an orphan, reclaimed by the
        housekeeper; a shared one is left to whichever thread releases it (leak warnings
        after ``LEAK_TIMEOUT`` still apply). The Django backends call it when a
        ``DatabaseWrapper`` with thread sharing on (``inc_thread_sharing()``) holds the
        connection, or when a thread other than the wrapper's own opened it.

        Raises ``ValueError`` for a connection that is not checked out from this pool, with
        the same exceptions as :meth:`release`.
        """
        with self._lock:
            slot = self._out.get(id(conn))
            if slot is not None:
                slot.shared = slot.holder
                return
        self._release_unknown(conn, "share()")

    def count_pin(self, reason: str, *, first: bool) -> None:
        """Count a lease held past a point where it would have been given back, because of
        ``reason`` (one of :data:`~django_dbpool.pool.stats.PIN_REASONS`); ``first``: the
        lease's first such reason. For the statistics only: the caller counts each reason
        once per lease."""
        with self._lock:
            self._pin_counts[reason] = self._pin_counts.get(reason, 0) + 1
            if first:
                self._pinned += 1

    def connection(self, timeout: float | None = None) -> _Lease[C]:
        """Context manager: ``with pool.connection() as conn:`` acquires and always releases.

        Same waiting and errors as :meth:`acquire`. An exception in the block does not mark
        the connection broken (the reset on release rolls back an open transaction); use
        :meth:`acquire` and ``release(conn, broken=True)`` to report a lost connection.
        """
        return _Lease(self, timeout)

    def close(self, timeout: float | None = None, *, force: bool = True) -> CloseResult:
        """Close the pool. Idempotent and thread-safe.

        New acquires and queued callers get :class:`PoolClosed`; idle connections close at
        once; checked-out ones close as they are released, and those of threads that have
        exited (orphans, unless shared) at once, also while the call waits. The call waits up
        to ``timeout`` seconds (default ``DRAIN_TIMEOUT``; 0 does not wait) for them to come
        back; then, if ``force``, it cuts off those still out: the caller's own and orphans
        are closed, and a connection that another live thread holds has its socket shut down
        (:meth:`ConnectionAdapter.interrupt`), so that the holder's next or current I/O fails
        with the driver's connection-lost error, and is closed when the holder releases it
        (the driver itself is never closed under a thread that may be inside it). Else it
        leaves them to close on release. A second call while the first is still waiting ends
        that wait at once (and, if ``force``, cuts off right away). Returns what this call
        did.
        """
        with self._lock:
            first = not self._closed
            self._closed = True
            self._abort_drain = not first
            waiters = list(self._waiters)
            self._waiters.clear()
            for waiter in waiters:
                waiter.error = PoolClosed(f"pool {self.name!r} was closed while waiting")
                waiter.wake()
            idle = self._take_idle_locked()
            self._connector_wake.notify_all()
            self._housekeeper_wake.notify_all()
            self._drained.notify_all()
        for slot in idle:
            self._close_slot(slot, "shutdown")
        closed = len(idle)
        drain = self.options.drain_timeout if timeout is None else max(timeout, 0.0)
        deadline = time.monotonic() + drain
        while True:
            with self._lock:
                orphans = self._take_out_locked(orphaned)
                if not orphans:
                    remaining = deadline - time.monotonic()
                    awaited = any(not slot.cut_off for slot in self._out.values())
                    if not first or not awaited or self._abort_drain or remaining <= 0:
                        break
                    # Released connections notify; a holder thread's exit does not, so look
                    # for orphans again now and then.
                    self._drained.wait(min(remaining, _ORPHAN_LOOK_SECONDS))
                    continue
            for slot in orphans:
                self._close_slot(slot, "shutdown")
            closed += len(orphans)
        me = threading.current_thread()
        forced: list[Slot[C]] = []
        cutting: list[Slot[C]] = []
        with self._lock:
            if first:
                closed += self._returned_after_close
            if force:
                # The caller's own (it is here, not inside the driver) and orphans close now.
                forced = self._take_out_locked(
                    lambda slot: slot.holder is not None and slot.holder[0] is me
                ) + self._take_out_locked(orphaned)
                cutting = self._cut_off_locked(lambda slot: True)
            pending = sum(not slot.cut_off for slot in self._out.values())
        for slot in forced:
            self._close_slot(slot, "shutdown")
        self._interrupt(cutting)
        if first or forced or cutting:
            logger.info(
                "pool %r closed: %d connections closed, %d force-closed, %d cut off from "
                "their holders, %d still out",
                self.name,
                closed,
                len(forced),
                len(cutting),
                pending,
            )
        return CloseResult(closed=closed, force_closed=len(forced) + len(cutting), pending=pending)

    def retire(self) -> int:
        """Give every connection back to the database as soon as nothing uses it, while
        checkouts go on: for a process that its server is about to end, on the server's
        schedule rather than through :meth:`close` (uvicorn, say, kills itself with the
        signal it caught once its requests are done, which skips ``atexit``). Idempotent.

        From this call on, the pool keeps idle connections only while another is in use,
        checked out or parked (a request still running will likely want one; with
        transaction leases its connection is parked between statements): when the last
        connection in use comes back and no caller waits, it is closed, and every idle one
        with it. Nothing in flight is refused a connection: a checkout that finds none idle
        opens one as usual. ``MIN_SIZE`` is no longer kept up. Closed connections count as
        ``closed["shutdown"]``. Returns how many idle connections this call closed (all of
        them when none is in use, else none).
        """
        with self._lock:
            self._retiring = True
            idle = self._retired_locked()
        for slot in idle:
            self._close_slot(slot, "shutdown")
        return len(idle)

    @property
    def retiring(self) -> bool:
        """True once :meth:`retire` has been called (in this process)."""
        return self._retiring

    def cut_off(self, thread: threading.Thread) -> int:
        """Cut off the connections ``thread`` has checked out, as ``close(force=True)``
        does for a live holder: the socket is shut down under it (its I/O fails with the
        driver's connection-lost error, the server ends the session) and each connection
        is closed when released. For a process about to die whose thread is stuck inside the
        driver. Returns how many were cut off; idempotent.
        """
        with self._lock:
            slots = self._cut_off_locked(
                lambda slot: slot.holder is not None and slot.holder[0] is thread
            )
        self._interrupt(slots)
        return len(slots)

    def _cut_off_locked(self, which: Callable[[Slot[C]], bool]) -> list[Slot[C]]:
        # Marks the checked-out slots `which` picks and that are not cut off yet; the caller
        # interrupts them off the lock.
        slots = [slot for slot in self._out.values() if not slot.cut_off and which(slot)]
        for slot in slots:
            slot.cut_off = True
        return slots

    def _interrupt(self, slots: list[Slot[C]]) -> None:
        # Off the lock: interrupt() may do I/O (PostgreSQL's cancel request). A holder that
        # releases meanwhile closes the connection itself; interrupt() is safe on a closed
        # one.
        for slot in slots:
            try:
                self._adapter.interrupt(slot.conn)
            except Exception:
                logger.debug("pool %r: interrupt failed", self.name, exc_info=True)

    def _take_out_locked(self, which: Callable[[Slot[C]], bool]) -> list[Slot[C]]:
        taken = [slot for slot in self._out.values() if which(slot)]
        for slot in taken:
            del self._out[id(slot.conn)]
        return taken

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def stats(self) -> PoolStats:
        """A consistent, immutable snapshot of the gauges, counters and histograms."""
        with self._lock:
            idle = len(self._idle)
            parked = len(self._parked)
            return PoolStats(
                name=self.name,
                size=self._size,
                idle=idle,
                in_use=self._size - idle - parked,
                parked=parked,
                waiting=len(self._waiters),
                opening=self._opening,
                min_size=self.options.min_size,
                max_size=self.options.max_size,
                unavailable_now=self._unavailable,
                acquired=self._acquired,
                timeouts=self._timeouts,
                exhausted=self._exhausted,
                unavailable=self._unavailable_count,
                opened=self._opened,
                closed=closed_mapping(self._closed_counts),
                connect_errors=self._connect_errors,
                validations=self._validations,
                validations_failed=self._validations_failed,
                leaks=self._leaks,
                orphans_reclaimed=self._orphans,
                pinned=self._pinned,
                pins=closed_mapping(self._pin_counts, PIN_REASONS),
                # Fast-path checkouts waited zero seconds and are not recorded one by one.
                wait_seconds=self._wait_hist.snapshot(self._acquired - self._wait_hist.count()),
                hold_seconds=self._hold_hist.snapshot(),
                connect_seconds=self._connect_hist.snapshot(),
            )

    def __enter__(self) -> Pool[C]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"size={self._size} idle={len(self._idle)}"
        return f"<{type(self).__name__} {self.name!r} {state} max={self.options.max_size}>"

    # -- checkout ------------------------------------------------------------------------

    def _pick_idle_locked(self, thread: threading.Thread, now: float) -> Slot[C] | None:
        """Take out of ``_idle`` the connection for ``thread`` when the most recently used
        one is not its own; None to take the most recently used one.

        Thread affinity: each of a server's threads keeps to one session, as with persistent
        connections. Handing connections from thread to thread made gunicorn's threads block
        more often per request than persistent connections; with affinity, as often
        (benchmarks/web.py). A thread's own connection is the one it returned
        last: the slot's last holder, which a checkout sets anyway, so nothing is kept per
        thread and the common case (the most recently used connection is this thread's)
        costs one comparison in :meth:`acquire`.

        - Its own connection, if idle and fresh. A thread that has not been back within
          ``VALIDATE_AFTER`` (or whose connection is suspect) gets the most recently used
          one, which needs no probe: light load concentrates on few connections and the
          surplus ages out.
        - A thread with no idle connection of its own (another thread took it) gets a
          spare, see :meth:`_take_spare_idle_locked`.
        """
        idle = self._idle
        for i in range(len(idle) - 1, -1, -1):
            last = idle[i].holder
            if last is not None and last[0] is thread:
                slot = idle[i]
                if now - slot.last_ok >= self._validate_after:
                    return None  # needs a probe, where the most recently used may not
                del idle[i]
                return slot
        return self._take_spare_idle_locked(now)

    def _take_spare_idle_locked(self, now: float) -> Slot[C] | None:
        """Take out of ``_idle`` a connection that no other thread will come back for; None
        if there is none to take.

        Spare: never used, not used within ``VALIDATE_AFTER`` (its last holder, back, would
        take the most recently used one anyway), or its last holder has returned a more
        recent one since, or holds one now. Taking another thread's own connection instead
        leaves that thread without one, and it takes a third thread's in turn: once threads
        outnumbered the idle connections for a moment (a warm-up, the first requests after a
        quiet spell), connections went on changing threads at 30 %-50 % of checkouts for
        good, with 8 connections for gunicorn's 8 threads, 4 of them using one at a time
        (benchmarks/web.py). A spare ends the chain.

        The most recently used fresh spare. A stale one costs a probe: it is taken only by a
        thread that already came without a connection of its own less than
        ``VALIDATE_AFTER`` ago, so one probe ends the chain under load, while a thread back
        after a quiet spell takes the most recently used connection as before, without one.
        """
        idle = self._idle
        holding = {slot.holder[0] for slot in self._out.values() if slot.holder is not None}
        seen: set[threading.Thread] = set()
        mark = self._slotless
        stale_ok = now - getattr(mark, "at", -math.inf) < self._validate_after
        mark.at = now
        stale: int | None = None  # where the most recently used stale spare is
        for i in range(len(idle) - 1, -1, -1):
            slot = idle[i]
            last = slot.holder
            if last is not None and now - slot.last_used < self._validate_after:
                thread = last[0]
                if thread not in seen and thread not in holding:
                    seen.add(thread)
                    continue
            if slot.fresh(now, self._validate_after):
                del idle[i]
                return slot
            if stale_ok and stale is None:
                stale = i
        if stale is None:
            return None
        slot = idle[stale]
        del idle[stale]
        return slot

    def _holder(self, caller: FrameType) -> Holder:
        # The holder record of a checkout by ``caller`` (see acquire()).
        if self._bare_holder:
            return (threading.current_thread(), caller.f_code, caller.f_lasti, None, None)
        return self._full_holder(caller)

    def _full_holder(self, caller: FrameType) -> Holder:
        return (
            threading.current_thread(),
            caller.f_code,
            caller.f_lasti,
            None if self._holder_info is None else self._holder_info(),
            # The full stack only when someone will read it: LEAK_TIMEOUT is set.
            capture_stack(caller) if self.options.leak_timeout else None,
        )

    def _checkout_slow(
        self, slot: Slot[C] | None, timeout: float | None, holder: Holder, start: float
    ) -> C:
        if timeout is None:
            timeout = self.options.timeout
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            # We own `slot` (taken from idle, stale or expired): check it off the lock.
            if slot is not None:
                if self._clock() >= slot.expires:
                    self._close_slot(slot, "lifetime")
                elif self._probe(slot):
                    now = self._clock()
                    with self._lock:
                        if not self._closed:
                            self._register(slot, holder, now, start)
                            return slot.conn
                    self._close_slot(slot, "shutdown")
                slot = None
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                if self._idle or self._parked:
                    # An idle connection, else a parked one, whose holder is not running (see
                    # park()). Nobody waits while one is parked.
                    slot = self._idle.pop() if self._idle else self._take_parked_locked()
                    now = self._clock()
                    if slot.fresh(now, self._validate_after):
                        self._register(slot, holder, now, start)
                        return slot.conn
                    continue
                if self._unavailable:
                    self._unavailable_count += 1
                    self._connector.request_probe_locked()
                    raise self._unavailable_error()
                max_waiting = self.options.max_waiting
                if max_waiting and len(self._waiters) >= max_waiting:
                    self._exhausted += 1
                    raise PoolExhausted(
                        f"pool {self.name!r}: {len(self._waiters)} callers already waiting "
                        f"(MAX_WAITING={max_waiting}); raise MAX_SIZE or MAX_WAITING"
                    )
                waiter: Waiter[C] = Waiter(holder, start)
                self._waiters.append(waiter)
                self._start_locked()
                self._wake_connector_locked()
            return self._wait(waiter, deadline, timeout)

    def _wait(self, waiter: Waiter[C], deadline: float, timeout: float) -> C:
        while True:
            try:
                woken = waiter.wakeup.acquire(timeout=max(deadline - time.monotonic(), 0.0))
            except BaseException:
                # Interrupted (KeyboardInterrupt, gevent Timeout): never lose a handed-off slot.
                with self._lock:
                    slot = waiter.slot
                    if slot is not None:
                        self._out.pop(id(slot.conn), None)
                        if self._put_locked(slot, self._clock()):
                            slot = None
                    elif waiter.error is None:
                        self._leave_locked(waiter)
                if slot is not None:
                    self._close_slot(slot, "shutdown")
                raise
            # Served: the slot was registered for us before the wake-up, no lock needed.
            if woken and waiter.slot is not None:
                return waiter.slot.conn
            with self._lock:
                waiter.woken = False
                if waiter.slot is not None:
                    return waiter.slot.conn
                if waiter.error is None:
                    if self._idle:
                        # Nudged and a connection is still idle: take it as a checkout would.
                        slot = self._idle.pop()
                        self._leave_locked(waiter)
                        now = self._clock()
                        if slot.fresh(now, self._validate_after):
                            self._register(slot, waiter.holder, now, waiter.since)
                            return slot.conn
                        break
                    if not woken:
                        self._leave_locked(waiter)
                        self._timeouts += 1
                        raise self._timeout_error(timeout)
                    # Nudged, but a running thread took the connection first: wait on, in
                    # our place in the queue.
                    continue
            raise waiter.error
        # An idle connection due for a check: the usual checkout path probes it off the lock.
        return self._checkout_slow(slot, deadline - time.monotonic(), waiter.holder, waiter.since)

    def _reset(self, conn: C) -> str | None:
        # Off the lock. A connection we do not own (released twice, force-closed, inherited
        # through fork) is never touched: release() then finds it unknown.
        if self._closed or id(conn) not in self._out:
            return None
        try:
            self._adapter.reset(conn)
        except Exception:
            logger.warning(
                "pool %r: reset failed, closing the connection", self.name, exc_info=True
            )
            return "reset_failed"
        return None

    def _release_unknown(self, conn: C, call: str = "release()") -> None:
        if self._closed or _fork.is_inherited(conn):
            return
        raise ValueError(
            f"pool {self.name!r}: {call} of a connection that is not checked out from this "
            "pool (released twice, or acquired from another pool?)"
        )


class _Lease(Generic[C]):
    __slots__ = ("_conn", "_pool", "_timeout")
    _conn: C

    def __init__(self, pool: Pool[C], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout

    def __enter__(self) -> C:
        self._conn = self._pool.acquire(self._timeout, stacklevel=2)
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.release(self._conn)
