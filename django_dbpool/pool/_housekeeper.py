"""The pool's housekeeper: retires old connections, trims idle ones, runs keepalive probes,
reports leaks, reclaims orphans and makes long-parked connections idle, about once a second
(more often when an option needs it). Its thread is a daemon, started with the pool's
background work, and exits when the pool closes; a forked child starts its own. It decides
under the pool's lock and acts off it.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

from ._slots import Holder, Slot, format_holder, orphaned

if TYPE_CHECKING:
    from ._state import PoolState

logger = logging.getLogger("django_dbpool.pool")

C = TypeVar("C")


class Housekeeper(Generic[C]):
    """The housekeeper of ``pool``."""

    def __init__(self, pool: PoolState[C]) -> None:
        self.pool = pool
        self.tick = 1.0

    def run(self) -> None:
        pool = self.pool
        if pool._on_start is not None:
            # Once per process: the pool's background work starts (again in a forked child).
            try:
                pool._on_start()
            except Exception:
                logger.warning("pool %r: on_start failed", pool.name, exc_info=True)
        opts = pool.options
        periods = [opts.keepalive, opts.max_idle, opts.max_lifetime, opts.leak_timeout]
        # Orphans are looked for every second; more often when an option needs it.
        tick = self.tick = max(min([1.0, *(p / 4 for p in periods if p > 0)]), 0.01)
        wake = pool._housekeeper_wake
        while True:
            with pool._lock:
                if not pool._closed:
                    wake.wait(tick)
                if pool._closed:
                    return
            try:
                self.run_once()
            except Exception:
                logger.exception("pool %r: housekeeping failed", pool.name)

    def run_once(self) -> None:
        pool = self.pool
        # One pass: retire and trim idle connections, keepalive probes, leak warnings,
        # orphan reclaim, MIN_SIZE refill. Decides under the lock, acts off it.
        opts = pool.options
        now = pool._clock()
        expired: list[Slot[C]] = []
        idle_out: list[Slot[C]] = []
        to_probe: list[Slot[C]] = []
        leaks: list[tuple[Holder, float]] = []
        orphans: list[Slot[C]] = []
        retired: list[Slot[C]] = []
        with pool._lock:
            if pool._closed:
                return
            surplus = pool._size - opts.min_size
            keep: deque[Slot[C]] = deque()
            for slot in pool._idle:  # least recently used first
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
            pool._idle = keep
            # Parked for a whole tick: the holder is not coming back soon (or its thread has
            # exited). Idle again, under the idle connections' rules (see Pool.park).
            for key, slot in list(pool._parked.items()):
                if now - slot.last_used >= self.tick:
                    del pool._parked[key]
                    if not pool._put_locked(slot, now):
                        retired.append(slot)
            for key, slot in list(pool._out.items()):
                holder = slot.holder
                assert holder is not None
                if orphaned(slot):
                    del pool._out[key]
                    orphans.append(slot)
                elif (
                    opts.leak_timeout
                    and not slot.leak_warned
                    and now - slot.acquired_at >= opts.leak_timeout
                ):
                    slot.leak_warned = True
                    pool._leaks += 1
                    leaks.append((holder, now - slot.acquired_at))
            pool._orphans += len(orphans)
            # Retiring, and the last connection in use did not come back through release()
            # (parked for a tick, or its thread exited: reclaimed below, and closed then):
            # nothing stays idle.
            retired += pool._retired_locked()
            pool._wake_connector_locked()
        for slot in retired:
            pool._close_slot(slot, "shutdown")
        for slot in expired:
            pool._close_slot(slot, "lifetime")
        for slot in idle_out:
            pool._close_slot(slot, "idle")
        self._keepalive(to_probe)
        for holder, held in leaks:
            logger.warning(
                "pool %r: connection held for %.1f s (LEAK_TIMEOUT=%g s) by %s",
                pool.name,
                held,
                opts.leak_timeout,
                format_holder(holder),
            )
        for slot in orphans:
            self._reclaim(slot)

    def _keepalive(self, candidates: list[Slot[C]]) -> None:
        pool = self.pool
        # One connection out of the idle list at a time, so callers barely notice.
        for slot in candidates:
            with pool._lock:
                if pool._closed:
                    return
                try:
                    pool._idle.remove(slot)
                except ValueError:
                    continue  # handed out meanwhile: its user will tell us if it is dead
            if pool._probe(slot):
                with pool._lock:
                    usable = pool._put_locked(slot, pool._clock())
                if not usable:
                    pool._close_slot(slot, "shutdown")

    def _reclaim(self, slot: Slot[C]) -> None:
        pool = self.pool
        assert slot.holder is not None
        logger.warning(
            "pool %r: reclaiming a connection whose thread exited without releasing it; %s",
            pool.name,
            format_holder(slot.holder),
        )
        try:
            pool._adapter.reset(slot.conn)
        except Exception:
            logger.warning(
                "pool %r: reset of a reclaimed connection failed", pool.name, exc_info=True
            )
            pool._close_slot(slot, "reset_failed")
            return
        with pool._lock:
            now = pool._clock()
            slot.last_used = slot.last_ok = now
            usable = pool._put_locked(slot, now)
        if not usable:
            pool._close_slot(slot, "shutdown")
