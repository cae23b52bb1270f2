"""Behaviour 10: close() is idempotent, fails waiters, drains, force-closes, reports."""

from __future__ import annotations

import threading

import pytest

from django_dbpool.pool import CloseResult, PoolClosed

from .fakes import make_pool, wait_until, warm


def test_close_closes_idle_connections_and_refuses_new_acquires():
    pool, _driver = make_pool(MAX_SIZE=3)
    conns = warm(pool, 3)
    assert pool.close() == CloseResult(closed=3, force_closed=0)
    assert all(c.closed for c in conns)
    assert pool.closed
    with pytest.raises(PoolClosed):
        pool.acquire()
    stats = pool.stats()
    assert stats.closed["shutdown"] == 3
    assert stats.size == 0
    assert pool.close() == CloseResult(closed=0, force_closed=0)  # idempotent


def test_close_fails_waiting_callers():
    pool, _ = make_pool(MAX_SIZE=1)
    held = pool.acquire()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.acquire(timeout=60)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert wait_until(lambda: pool.stats().waiting == 1)
    closer = threading.Thread(target=pool.close, kwargs={"timeout": 30})
    closer.start()
    t.join(timeout=30)
    assert len(errors) == 1
    assert isinstance(errors[0], PoolClosed)
    pool.release(held)
    closer.join(timeout=30)
    assert held.closed


def test_checked_out_connections_close_as_they_come_back():
    pool, _ = make_pool(MAX_SIZE=2)
    idle, held = warm(pool, 2)
    assert pool.acquire() is held
    results: list[CloseResult] = []
    closer = threading.Thread(target=lambda: results.append(pool.close(timeout=60)))
    closer.start()
    assert wait_until(lambda: idle.closed)
    assert not held.closed
    pool.release(held)
    closer.join(timeout=30)
    assert held.closed
    assert results == [CloseResult(closed=2, force_closed=0)]


def test_connections_still_out_after_the_drain_timeout_are_force_closed():
    pool, _ = make_pool(DRAIN_TIMEOUT=0.05)
    held = pool.acquire()
    assert pool.close() == CloseResult(closed=0, force_closed=1)  # timeout=None: DRAIN_TIMEOUT
    assert held.closed
    pool.release(held)  # the late release is ignored


def test_close_with_zero_timeout_does_not_wait():
    pool, _ = make_pool(DRAIN_TIMEOUT=600)
    held = pool.acquire()
    assert pool.close(timeout=0) == CloseResult(closed=0, force_closed=1)
    assert held.closed


def test_a_second_close_call_stops_the_first_ones_wait():
    pool, _ = make_pool(DRAIN_TIMEOUT=600)
    held = pool.acquire()
    results: list[CloseResult] = []
    first = threading.Thread(target=lambda: results.append(pool.close()))
    first.start()
    assert wait_until(lambda: pool.closed)
    second = pool.close()
    first.join(timeout=30)
    assert not first.is_alive()
    assert held.closed
    assert second.force_closed + results[0].force_closed == 1


def test_a_connection_that_finishes_connecting_after_close_is_closed():
    pool, driver = make_pool()
    gate = threading.Event()
    driver.connect_gate = gate
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.acquire(timeout=60)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert wait_until(lambda: driver.connect_attempts == 1)
    pool.close()
    t.join(timeout=30)
    assert isinstance(errors[0], PoolClosed)
    gate.set()
    assert wait_until(lambda: len(driver.connections) == 1 and driver.connections[0].closed)
    assert wait_until(lambda: pool.stats().opening == 0 and pool.stats().size == 0)


def test_background_threads_exit_after_close():
    pool, _ = make_pool(MIN_SIZE=1)
    pool.release(pool.acquire())
    prefix = f"django_dbpool[{pool.name}]"
    assert [t for t in threading.enumerate() if t.name.startswith(prefix)]
    pool.close()
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith(prefix)])


def test_pool_as_context_manager_closes_it():
    pool, _ = make_pool()
    with pool as same:
        conn = same.acquire()
        same.release(conn)
    assert pool.closed
    assert conn.closed


def test_close_without_force_leaves_checked_out_connections_to_close_on_release():
    pool, _ = make_pool(MAX_SIZE=2)
    idle, held = warm(pool, 2)
    assert pool.acquire() is held
    assert pool.close(timeout=0, force=False) == CloseResult(closed=1, force_closed=0, pending=1)
    assert idle.closed
    assert not held.closed  # its holder may still be using it
    pool.release(held)
    assert held.closed
    assert pool.stats().closed["shutdown"] == 2
    assert pool.stats().size == 0
