"""Behaviour 5: probe only connections idle longer than VALIDATE_AFTER; replace dead ones
transparently; one dead connection makes every older idle one suspect."""

from __future__ import annotations

import pytest

from .fakes import FakeClock, closing, make_pool, warm

pytestmark = pytest.mark.usefixtures("manual_housekeeping")


def test_recently_used_connection_is_handed_out_without_a_probe():
    clock = FakeClock()
    pool, driver = make_pool(clock=clock, VALIDATE_AFTER=1)
    with closing(pool):
        for _ in range(100):
            conn = pool.acquire()
            clock.advance(0.5)
            pool.release(conn)
            clock.advance(0.5)
        assert driver.probes == 0
        assert pool.stats().validations == 0


def test_connection_idle_longer_than_validate_after_is_probed_first():
    clock = FakeClock()
    pool, driver = make_pool(clock=clock, VALIDATE_AFTER=1)
    with closing(pool):
        (conn,) = warm(pool, 1)
        clock.advance(1.5)
        assert pool.acquire() is conn
        assert driver.probes == 1
        pool.release(conn)
        assert pool.acquire() is conn  # just probed and returned: fresh again
        assert driver.probes == 1
        pool.release(conn)


def test_validate_after_zero_probes_every_checkout():
    pool, driver = make_pool(clock=FakeClock(), VALIDATE_AFTER=0)
    with closing(pool):
        warm(pool, 1)
        for _ in range(3):
            pool.release(pool.acquire())
        assert driver.probes == 3


def test_dead_connection_is_discarded_and_replaced_transparently():
    clock = FakeClock()
    pool, _driver = make_pool(clock=clock, VALIDATE_AFTER=1)
    with closing(pool):
        (dead,) = warm(pool, 1)
        dead.alive = False
        clock.advance(5)
        conn = pool.acquire(timeout=10)
        assert conn is not dead
        assert dead.closed
        stats = pool.stats()
        assert stats.validations_failed == 1
        assert stats.closed["broken"] == 1
        pool.release(conn)


def test_a_dead_connection_makes_every_older_idle_connection_suspect():
    clock = FakeClock()
    pool, driver = make_pool(clock=clock, MAX_SIZE=5, VALIDATE_AFTER=1, KEEPALIVE=50, MAX_IDLE=1000)
    with closing(pool):
        older = pool.acquire()
        clock.advance(10)
        newer = pool.acquire(timeout=10)
        pool.release(older)
        clock.advance(30)
        pool.release(newer)  # newer is the most recently used
        clock.advance(21)
        # Keepalive probes only `older` (idle 51 s): it looks fresh now.
        pool._housekeeper.run_once()
        assert driver.probes == 1

        clock.advance(0.5)
        driver.kill_all()  # database restart
        conn = pool.acquire(timeout=10)
        # `newer` was stale: probed, dead. `older` was probed 0.5 s ago, but it is older than
        # a connection just found dead, so it is probed again instead of handed out.
        assert conn not in (older, newer)
        assert older.closed
        assert newer.closed
        assert driver.probes == 3
        assert pool.stats().validations_failed == 2
        pool.release(conn)


def test_a_dead_fresh_connection_released_broken_marks_older_ones_suspect():
    clock = FakeClock()
    pool, driver = make_pool(clock=clock, MAX_SIZE=5, VALIDATE_AFTER=1)
    with closing(pool):
        conns = warm(pool, 3)  # all created at the same moment, all fresh
        driver.kill_all()  # database restart; nobody has noticed yet
        victim = pool.acquire()
        assert driver.probes == 0
        pool.release(victim, broken=True)  # the caller hit "server closed the connection"
        # The remaining idle connections are as old as the victim: probed, found dead,
        # discarded; the caller gets a new connection without seeing an error.
        conn = pool.acquire(timeout=10)
        assert conn not in conns
        assert driver.probes == 2
        assert all(c.closed for c in conns)
        stats = pool.stats()
        assert stats.validations_failed == 2
        assert stats.closed["broken"] == 3
        pool.release(conn)


def test_keepalive_probes_idle_connections_and_replaces_dead_ones():
    clock = FakeClock()
    pool, driver = make_pool(clock=clock, MAX_SIZE=3, MIN_SIZE=2, KEEPALIVE=30, MAX_IDLE=600)
    with closing(pool):
        a, b = warm(pool, 2)
        a.alive = False
        clock.advance(31)
        pool._housekeeper.run_once()
        assert driver.probes == 2
        assert a.closed
        assert not b.closed
        stats = pool.stats()
        assert stats.validations_failed == 1
        pool._housekeeper.run_once()  # b was just probed: not again
        assert driver.probes == 2


def test_probe_is_a_round_trip_on_a_checked_out_connection():
    pool, driver = make_pool(MAX_SIZE=1)
    with closing(pool):
        conn = pool.acquire(timeout=10)
        probes = driver.probes
        pool.probe(conn)
        assert driver.probes == probes + 1
        conn.alive = False  # the server dropped it
        with pytest.raises(ConnectionError, match="the probe found the connection dead"):
            pool.probe(conn)
        pool.release(conn, broken=True)
        assert pool.stats().closed["broken"] == 1
