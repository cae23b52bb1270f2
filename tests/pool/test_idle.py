"""Behaviour 4: idle connections are reused most-recently-used first, so surplus ages out;
a thread gets back the connection it returned last while that one is idle and fresh, and a
thread without one takes a spare rather than another thread's.
Also MAX_LIFETIME (never while checked out) and the MIN_SIZE refill."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

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


def test_a_thread_gets_back_the_idle_connection_it_returned_last():
    pool, _ = make_pool(MAX_SIZE=3)
    # `other` runs everything on one thread of its own, as a server's thread would.
    with closing(pool), ThreadPoolExecutor(1) as other:
        mine = pool.acquire(timeout=10)
        theirs = other.submit(pool.acquire, timeout=10).result()
        pool.release(mine)
        other.submit(pool.release, theirs).result()  # theirs is the most recently used
        assert pool.acquire() is mine
        assert other.submit(pool.acquire).result() is theirs
        pool.release(mine)
        other.submit(pool.release, theirs).result()


def test_a_thread_without_a_connection_of_its_own_gets_a_spare_not_another_threads():
    pool, _ = make_pool(MAX_SIZE=3)
    with closing(pool), ThreadPoolExecutor(1) as other:
        _a, b, c = warm(pool, 3)  # this thread returned c last: c is its own, a and b spare
        assert other.submit(pool.acquire).result() is b  # the most recently used spare
        assert pool.acquire() is c
        pool.release(c)
        other.submit(pool.release, b).result()
        for _ in range(3):
            assert pool.acquire() is c  # each keeps its own
            assert other.submit(pool.acquire).result() is b
            other.submit(pool.release, b).result()
            pool.release(c)


def test_with_no_spare_a_thread_gets_the_most_recently_used():
    pool, _ = make_pool(MAX_SIZE=2)
    with closing(pool), ThreadPoolExecutor(1) as one, ThreadPoolExecutor(1) as two:
        x = one.submit(pool.acquire, timeout=10).result()
        y = two.submit(pool.acquire, timeout=10).result()
        one.submit(pool.release, x).result()
        two.submit(pool.release, y).result()
        # Both are fresh and each is another thread's own: no spare.
        assert pool.acquire() is y
        pool.release(y)


def test_a_thread_again_without_one_of_its_own_takes_a_stale_spare():
    # Once a thread took another's connection, the other has none either: the second time
    # in VALIDATE_AFTER a thread comes without one, it takes a spare even at the cost of a
    # probe, which ends the chain.
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=4, VALIDATE_AFTER=1, KEEPALIVE=0, MAX_IDLE=60)
    with ExitStack() as stack:
        stack.enter_context(closing(pool))
        one, two, three, four = (stack.enter_context(ThreadPoolExecutor(1)) for _ in range(4))
        z = one.submit(pool.acquire, timeout=10).result()
        x = one.submit(pool.acquire, timeout=10).result()
        y = two.submit(pool.acquire, timeout=10).result()
        w = four.submit(pool.acquire, timeout=10).result()
        one.submit(pool.release, z).result()
        clock.advance(5)  # z: unused for longer than VALIDATE_AFTER, claimed by no one
        for executor, conn in ((one, x), (two, y), (four, w)):
            executor.submit(pool.release, conn).result()
        validations = pool.stats().validations
        # The first time without one: the most recently used, without a probe.
        assert three.submit(pool.acquire).result() is w
        three.submit(pool.release, w).result()
        assert four.submit(pool.acquire).result() is w
        four.submit(pool.release, w).result()
        assert pool.stats().validations == validations
        # The second time: the stale spare, probed, rather than thread four's w.
        assert three.submit(pool.acquire).result() is z
        assert pool.stats().validations == validations + 1
        three.submit(pool.release, z).result()
        # From now on each thread keeps to its own, in whatever order they come.
        for executor, conn in ((four, w), (three, z), (one, x), (two, y)) * 2:
            assert executor.submit(pool.acquire).result() is conn
            executor.submit(pool.release, conn).result()


def test_a_thread_back_without_one_after_a_quiet_spell_takes_no_stale_spare():
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=3, VALIDATE_AFTER=1, KEEPALIVE=0, MAX_IDLE=60)
    with ExitStack() as stack:
        stack.enter_context(closing(pool))
        one, two, three = (stack.enter_context(ThreadPoolExecutor(1)) for _ in range(3))
        z = one.submit(pool.acquire, timeout=10).result()
        x = one.submit(pool.acquire, timeout=10).result()
        y = three.submit(pool.acquire, timeout=10).result()
        one.submit(pool.release, z).result()
        one.submit(pool.release, x).result()
        clock.advance(5)  # z and x: claimed by no one
        three.submit(pool.release, y).result()
        validations = pool.stats().validations
        for _ in range(3):
            clock.advance(2)  # longer than VALIDATE_AFTER between visits: light load
            assert three.submit(pool.acquire).result() is y  # its own, stale: probed
            three.submit(pool.release, y).result()
            # Thread two, which has none of its own, shares y, the most recently used.
            assert two.submit(pool.acquire).result() is y
            two.submit(pool.release, y).result()
        # y was probed once per visit of thread three; z and x never were, and age out.
        assert pool.stats().validations == validations + 3


def test_a_thread_whose_own_connection_is_suspect_gets_the_most_recently_used_unprobed():
    pool, _ = make_pool(MAX_SIZE=3)
    with closing(pool), ThreadPoolExecutor(1) as other:
        _a, b, c = warm(pool, 3)  # opened in this order, all returned by this thread
        assert other.submit(pool.acquire).result() is b
        assert pool.acquire() is c
        pool.release(c, broken=True)  # every idle connection as old as c is suspect: a
        other.submit(pool.release, b).result()
        validations = pool.stats().validations
        assert pool.acquire() is b  # not this thread's own a, which needs a probe first
        assert pool.stats().validations == validations
        pool.release(b)


def test_under_light_load_threads_share_the_most_recently_used_and_the_rest_ages_out():
    # A thread back after longer than VALIDATE_AFTER gets the most recently used connection,
    # not its own: light load concentrates on one connection.
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=2, VALIDATE_AFTER=1, MAX_IDLE=60, KEEPALIVE=0)
    with closing(pool), ThreadPoolExecutor(1) as other:
        mine = pool.acquire(timeout=10)
        theirs = other.submit(pool.acquire, timeout=10).result()
        pool.release(mine)
        other.submit(pool.release, theirs).result()
        for _ in range(4):
            for run in (lambda f: f(), lambda f: other.submit(f).result()):
                clock.advance(10)
                conn = run(pool.acquire)
                assert conn is theirs
                run(lambda conn=conn: pool.release(conn))
        pool._housekeeper.run_once()
        assert mine.closed
        assert not theirs.closed
        assert pool.stats().closed["idle"] == 1


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
        pool._housekeeper.run_once()
        stats = pool.stats()
        assert stats.closed["idle"] == 2
        assert a.closed
        assert b.closed
        assert not c.closed
        assert stats.size == 1

        clock.advance(1000)
        pool._housekeeper.run_once()
        assert pool.stats().size == 1  # MIN_SIZE is kept even when idle
        assert not c.closed


def test_max_lifetime_retires_idle_connections_and_returned_ones_but_never_held_ones():
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=3, MAX_LIFETIME=100, MAX_IDLE=1000, KEEPALIVE=0)
    with closing(pool):
        idle, held = warm(pool, 2)
        assert pool.acquire() is held
        clock.advance(101)
        pool._housekeeper.run_once()
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
