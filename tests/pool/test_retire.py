"""retire(): connections go back to the database as soon as nothing uses them, while
checkouts go on; MIN_SIZE is no longer kept; close() still works afterwards."""

from __future__ import annotations

import threading

import pytest

from django_dbpool.pool import CloseResult

from .fakes import closing, make_pool, wait_until, warm
from .test_leaks import orphaning_task, run_in_a_thread


def test_retire_closes_idle_connections_when_none_is_checked_out():
    pool, _ = make_pool(MAX_SIZE=3)
    with closing(pool):
        conns = warm(pool, 3)
        assert pool.retire() == 3
        assert pool.retiring
        assert all(c.closed for c in conns)
        stats = pool.stats()
        assert (stats.size, stats.idle) == (0, 0)
        assert stats.closed["shutdown"] == 3
        assert not pool.closed
        assert pool.retire() == 0  # idempotent


def test_idle_connections_stay_while_others_are_out_and_go_with_the_last_one():
    pool, _ = make_pool(MAX_SIZE=3)
    with closing(pool):
        a, b, c = (pool.acquire(timeout=10) for _ in range(3))
        pool.release(c)
        assert pool.retire() == 0  # b and a are still out: c may be wanted again
        pool.release(b)
        assert [b.closed, c.closed] == [False, False]
        assert pool.stats().idle == 2
        pool.release(a)
        assert [a.closed, b.closed, c.closed] == [True, True, True]
        stats = pool.stats()
        assert (stats.size, stats.idle, stats.in_use) == (0, 0, 0)
        assert stats.closed["shutdown"] == 3


def test_checkouts_go_on_while_retiring():
    pool, driver = make_pool(MAX_SIZE=2)
    with closing(pool):
        warm(pool, 2)
        pool.retire()
        assert driver.open_connections == []
        # A request still in flight asks again: it gets a new connection, which goes
        # back to the server when it is returned.
        conn = pool.acquire(timeout=10)
        assert not conn.closed
        pool.release(conn)
        assert conn.closed
        assert driver.open_connections == []
        assert pool.stats().timeouts == 0


def test_a_returned_connection_still_goes_to_a_waiting_caller():
    pool, driver = make_pool(MAX_SIZE=1)
    with closing(pool):
        held = pool.acquire(timeout=10)
        pool.retire()
        got = []
        waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=30)))
        waiter.start()
        assert wait_until(lambda: pool.stats().waiting == 1)
        pool.release(held)
        waiter.join(30)
        assert got == [held]
        assert not held.closed
        assert driver.connect_attempts == 1  # handed over, not closed and reopened
        pool.release(held)
        assert held.closed


def test_the_last_one_back_broken_takes_the_idle_ones_with_it():
    pool, driver = make_pool(MAX_SIZE=2)
    with closing(pool):
        a, b = pool.acquire(timeout=10), pool.acquire(timeout=10)
        pool.release(b)
        pool.retire()
        pool.release(a, broken=True)
        assert [a.closed, b.closed] == [True, True]
        assert driver.open_connections == []


def test_min_size_is_not_refilled_while_retiring():
    pool, driver = make_pool(MAX_SIZE=3, MIN_SIZE=2)
    with closing(pool):
        pool.release(pool.acquire(timeout=10))
        assert wait_until(lambda: pool.stats().size == 2)
        assert pool.retire() == 2
        pool._housekeeper.run_once()
        pool.release(pool.acquire(timeout=10))
        pool._housekeeper.run_once()
        # A refill would come from the connector thread: give it the time to show.
        threading.Event().wait(0.2)
        assert pool.stats().size == 0
        assert driver.open_connections == []


@pytest.mark.usefixtures("manual_housekeeping")
def test_an_orphan_reclaimed_while_retiring_is_closed_with_the_idle_ones():
    pool, driver = make_pool(MAX_SIZE=2)
    with closing(pool):
        idle = pool.acquire(timeout=10)
        orphan = run_in_a_thread(orphaning_task, pool)
        pool.release(idle)
        pool.retire()
        assert not idle.closed  # the orphan still counts as checked out
        pool._housekeeper.run_once()
        assert [orphan.closed, idle.closed] == [True, True]
        assert driver.open_connections == []
        assert pool.stats().orphans_reclaimed == 1


def test_close_after_retire_drains_as_usual():
    pool, _ = make_pool(MAX_SIZE=2)
    held = pool.acquire(timeout=10)
    pool.retire()
    closer = threading.Thread(target=lambda: results.append(pool.close(timeout=30)))
    results: list[CloseResult] = []
    closer.start()
    assert wait_until(lambda: pool.closed)
    pool.release(held)
    closer.join(30)
    assert held.closed
    assert results == [CloseResult(closed=1, force_closed=0)]
