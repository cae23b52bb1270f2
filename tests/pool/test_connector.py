"""Behaviour 3: connects run off the lock, one at a time while they are quick, more when one
hangs; returns go to waiters."""

from __future__ import annotations

import threading
import time

import pytest

from django_dbpool.pool import PoolTimeout
from django_dbpool.pool._connector import HEDGE_AFTER_SECONDS, MAX_CONNECTS_IN_FLIGHT

from .fakes import closing, make_pool, wait_until, warm


def test_nothing_connects_before_the_first_acquire():
    pool, driver = make_pool(MIN_SIZE=2)
    with closing(pool):
        assert driver.connect_attempts == 0
        assert not [t for t in threading.enumerate() if f"django_dbpool[{pool.name}]" in t.name]
        pool.release(pool.acquire())
        assert wait_until(lambda: pool.stats().size == 2)


def test_a_hanging_connect_blocks_neither_release_nor_other_callers():
    pool, driver = make_pool(MAX_SIZE=3)
    with closing(pool):
        first = pool.acquire()
        gate = threading.Event()
        driver.connect_gate = gate  # every further connect hangs until the gate opens

        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0.2)
        assert driver.connect_attempts == 2
        assert pool.stats().opening == 1

        releaser = threading.Thread(target=pool.release, args=(first,))
        releaser.start()
        releaser.join(timeout=10)
        assert not releaser.is_alive()
        assert pool.acquire(timeout=10) is first  # served at once, connect still hanging

        gate.set()
        assert wait_until(lambda: pool.stats().size == 2)
        pool.release(first)


def test_a_returned_connection_goes_to_the_oldest_waiter_not_to_a_new_connect():
    pool, driver = make_pool(MAX_SIZE=2)
    with closing(pool):
        first = pool.acquire()
        gate = threading.Event()
        driver.connect_gate = gate
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=30)))
        waiter.start()
        assert wait_until(lambda: driver.connect_attempts == 2)  # connecting for the waiter

        pool.release(first)
        waiter.join(timeout=30)
        assert got == [first]  # did not wait for the hanging connect

        gate.set()
        assert wait_until(lambda: pool.stats().idle == 1)  # the new one just goes idle
        assert pool.stats().opened == 2
        pool.release(first)


def test_spike_opens_at_most_two_extra_connections_and_serves_everyone():
    pool, driver = make_pool(MAX_SIZE=60, TIMEOUT=60)
    with closing(pool):
        warm(pool, 5)
        assert pool.stats().idle == 5
        driver.connect_delay = 0.150
        callers = 50
        barrier = threading.Barrier(callers)
        served: list[int] = []
        errors: list[BaseException] = []

        def caller(i: int) -> None:
            barrier.wait()
            try:
                conn = pool.acquire()
                time.sleep(0.002)  # hold 2 ms
                pool.release(conn)
                served.append(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        assert len(served) == callers
        assert driver.connect_attempts - 5 <= 2
        assert pool.stats().size <= 7


def test_a_hung_connect_does_not_stop_the_next_one():
    # A server (or load balancer) that accepts the first connection and never answers,
    # while the next would work: callers are served well within TIMEOUT.
    pool, driver = make_pool(MAX_SIZE=4, TIMEOUT=30)
    with closing(pool):
        driver.hang_next = 1
        conn = pool.acquire()
        assert driver.connect_attempts == 2
        assert pool.stats().opening == 1  # the hung one, still in flight
        pool.release(conn)
        driver.hung_gate.set()
        assert wait_until(lambda: pool.stats().opening == 0 and pool.stats().size == 2)


def test_connects_in_flight_stay_bounded_when_every_connect_hangs():
    pool, driver = make_pool(MAX_SIZE=10, TIMEOUT=30)
    with closing(pool):
        driver.hang_next = 100
        errors: list[BaseException] = []

        def caller() -> None:
            try:
                pool.acquire(timeout=HEDGE_AFTER_SECONDS * (MAX_CONNECTS_IN_FLIGHT + 2))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=caller) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(errors) == 8
        assert all(isinstance(e, PoolTimeout) for e in errors)
        assert driver.connect_attempts == MAX_CONNECTS_IN_FLIGHT
        driver.hung_gate.set()


def test_connects_in_flight_never_exceed_max_size():
    pool, driver = make_pool(MAX_SIZE=2, TIMEOUT=30)
    with closing(pool):
        driver.hang_next = 100
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=HEDGE_AFTER_SECONDS * (MAX_CONNECTS_IN_FLIGHT + 2))
        assert driver.connect_attempts == 2
        driver.hung_gate.set()
