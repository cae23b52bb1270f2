"""Behaviour 4: idle connections are reused most-recently-used first, so surplus ages out.
Also MAX_LIFETIME (never while checked out) and the MIN_SIZE refill."""

from __future__ import annotations

import pytest

from .fakes import FakeClock, closing, make_pool, wait_until, warm

pytestmark = pytest.mark.usefixtures("manual_housekeeping")


def test_idle_connections_are_handed_out_most_recently_used_first():
    pool, _ = make_pool(MAX_SIZE=3)
    with closing(pool):
        _a, b, c = warm(pool, 3)
        assert pool.acquire() is c
        pool.release(c)
        assert pool.acquire() is c
        assert pool.acquire() is b
        pool.release(b)
        pool.release(c)
        assert pool.acquire() is c
        pool.release(c)


def test_release_of_a_connection_not_checked_out_is_an_error():
    pool, _ = make_pool()
    with closing(pool):
        conn = pool.acquire()
        pool.release(conn)
        with pytest.raises(ValueError, match="not checked out from this pool"):
            pool.release(conn)


def test_surplus_connections_age_out_through_max_idle_down_to_min_size():
    clock = FakeClock()
    pool, _driver = make_pool(clock=clock, MAX_SIZE=3, MIN_SIZE=1, MAX_IDLE=60, KEEPALIVE=0)
    with closing(pool):
        a, b, c = warm(pool, 3)
        for _ in range(7):  # steady light load: one connection is enough
            conn = pool.acquire()
            assert conn is c
            clock.advance(10)
            pool.release(conn)
        pool._housekeep()
        stats = pool.stats()
        assert stats.closed["idle"] == 2
        assert a.closed
        assert b.closed
        assert not c.closed
        assert stats.size == 1

        clock.advance(1000)
        pool._housekeep()
        assert pool.stats().size == 1  # MIN_SIZE is kept even when idle
        assert not c.closed


def test_max_lifetime_retires_idle_connections_and_returned_ones_but_never_held_ones():
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=3, MAX_LIFETIME=100, MAX_IDLE=1000, KEEPALIVE=0)
    with closing(pool):
        idle, held = warm(pool, 2)
        assert pool.acquire() is held
        clock.advance(101)
        pool._housekeep()
        assert idle.closed
        assert not held.closed  # checked out: untouched past its lifetime
        pool.release(held)
        assert held.closed  # closed on return, not reused
        assert pool.stats().closed["lifetime"] == 2
        fresh = pool.acquire(timeout=10)
        assert fresh not in (idle, held)
        pool.release(fresh)


def test_lifetime_has_up_to_2_5_percent_jitter():
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=50, MAX_LIFETIME=1000)
    with closing(pool):
        warm(pool, 50)
        with pool._lock:
            ages = [slot.expires - slot.created for slot in pool._idle]
        assert all(975 <= age <= 1000 for age in ages)
        assert len(set(ages)) > 1


def test_min_size_is_filled_after_first_use_and_refilled_after_a_loss():
    pool, _ = make_pool(MAX_SIZE=5, MIN_SIZE=3)
    with closing(pool):
        conn = pool.acquire()
        assert wait_until(lambda: pool.stats().size == 3)
        pool.release(conn, broken=True)
        assert wait_until(lambda: pool.stats().size == 3 and pool.stats().idle == 3)
        assert pool.stats().closed["broken"] == 1
