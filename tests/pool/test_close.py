"""Behaviour 10: close() is idempotent, fails waiters, drains, force-closes, reports."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from django_dbpool.pool import CloseResult, Pool, PoolClosed

from .fakes import FakeConnection, make_pool, wait_until, warm


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


def _acquire_in_a_thread_that_exits(pool: Pool[FakeConnection]) -> FakeConnection:
    got: list[FakeConnection] = []
    thread = threading.Thread(target=lambda: got.append(pool.acquire()))
    thread.start()
    thread.join(30)
    return got[0]


def _close_in_background(
    pool: Pool[FakeConnection], **kwargs: Any
) -> tuple[threading.Thread, list[CloseResult]]:
    results: list[CloseResult] = []
    closer = threading.Thread(target=lambda: results.append(pool.close(**kwargs)))
    closer.start()
    return closer, results


def test_close_returns_connections_of_exited_threads_at_once():
    # A script's executor threads that never gave their connections back: the exit drain
    # must not wait DRAIN_TIMEOUT for threads that no longer exist.
    pool, _ = make_pool(MAX_SIZE=2, DRAIN_TIMEOUT=600)
    orphans = [_acquire_in_a_thread_that_exits(pool) for _ in range(2)]
    closer, results = _close_in_background(pool)
    closer.join(30)
    assert not closer.is_alive()
    assert results == [CloseResult(closed=2, force_closed=0)]
    assert all(conn.closed and not conn.interrupted for conn in orphans)
    assert pool.stats().size == 0


def test_a_holder_thread_that_exits_during_the_drain_ends_the_wait():
    pool, _ = make_pool(DRAIN_TIMEOUT=600)
    exit_now = threading.Event()
    got: list[FakeConnection] = []

    def holder() -> None:
        got.append(pool.acquire())
        exit_now.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    assert wait_until(lambda: pool.stats().in_use == 1)
    closer, results = _close_in_background(pool)
    assert wait_until(lambda: pool.closed)
    assert closer.is_alive()  # the holder is alive: waiting for it
    exit_now.set()
    thread.join(30)
    closer.join(30)
    assert not closer.is_alive()
    assert results == [CloseResult(closed=1, force_closed=0)]
    assert got[0].closed


def test_a_shared_connection_of_an_exited_thread_is_left_to_its_wrapper():
    pool, _ = make_pool()
    conn = _acquire_in_a_thread_that_exits(pool)
    with pool._lock:
        slot = pool._out[id(conn)]
        slot.shared = slot.holder  # what Pool.share() does, from the acquiring thread
    assert pool.close(timeout=0, force=False) == CloseResult(closed=0, force_closed=0, pending=1)
    assert not conn.closed
    pool.release(conn)
    assert conn.closed


def test_force_cuts_off_a_live_holder_instead_of_closing_the_driver_under_it():
    pool, _ = make_pool(DRAIN_TIMEOUT=600)
    holding = threading.Event()
    give_back = threading.Event()
    got: list[FakeConnection] = []

    def holder() -> None:
        conn = pool.acquire()
        got.append(conn)
        holding.set()
        give_back.wait(30)
        pool.release(conn)

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(30)
    assert pool.close(timeout=0) == CloseResult(closed=0, force_closed=1)
    conn = got[0]
    assert conn.interrupted  # its socket is shut down...
    assert not conn.alive
    assert not conn.closed  # ...but the driver is not closed under the holder
    assert pool.close(timeout=0) == CloseResult(closed=0, force_closed=0)  # once only
    give_back.set()
    thread.join(30)
    assert conn.closed  # closed by its holder's release
    assert pool.stats().size == 0
    assert pool.stats().closed["shutdown"] == 1
