"""Behaviour 8: leak warnings with the acquiring stack and holder tag; orphans reclaimed."""

from __future__ import annotations

import logging
import threading

import pytest

from .fakes import FakeClock, FakeConnection, closing, make_pool

pytestmark = pytest.mark.usefixtures("manual_housekeeping")
LOGGER = "django_dbpool.pool"


def leaky_view(pool):
    return pool.acquire()


def test_a_connection_held_past_leak_timeout_logs_one_warning_with_stack_and_tag(caplog):
    clock = FakeClock()
    tag = ["request 1234"]
    pool, _ = make_pool(clock=clock, LEAK_TIMEOUT=5, holder_info=lambda: tag[0])
    with closing(pool), caplog.at_level(logging.WARNING, logger=LOGGER):
        conn = leaky_view(pool)
        tag[0] = "request 9999"  # captured at acquire, not at warning time
        clock.advance(4)
        pool._housekeeper.run_once()
        assert not caplog.records
        clock.advance(2)
        pool._housekeeper.run_once()
        pool._housekeeper.run_once()
        assert len(caplog.records) == 1
        message = caplog.records[0].getMessage()
        assert "held for 6.0 s (LEAK_TIMEOUT=5 s)" in message
        assert "[request 1234]" in message
        assert "in leaky_view" in message
        assert "return pool.acquire()" in message  # the source line
        assert "in test_a_connection_held_past_leak_timeout" in message  # the full stack
        assert pool.stats().leaks == 1
        pool.release(conn)


def test_no_leak_warning_when_leak_timeout_is_off(caplog):
    clock = FakeClock()
    pool, _ = make_pool(clock=clock)
    with closing(pool), caplog.at_level(logging.WARNING, logger=LOGGER):
        conn = pool.acquire()
        clock.advance(10_000)
        pool._housekeeper.run_once()
        assert not caplog.records
        assert pool.stats().leaks == 0
        pool.release(conn)


def orphaning_task(pool, out):
    conn = pool.acquire()
    conn.in_transaction = True
    out.append(conn)  # the thread ends without releasing


def run_in_a_thread(task, pool, name=None) -> FakeConnection:
    """Runs ``task(pool, out)`` in a thread of its own to the end; the connection it left."""
    out: list[FakeConnection] = []
    thread = threading.Thread(target=task, args=(pool, out), name=name)
    thread.start()
    thread.join(timeout=30)
    (conn,) = out
    return conn


def test_a_connection_whose_thread_exited_is_reclaimed_with_a_warning(caplog):
    pool, driver = make_pool(holder_info=lambda: "task 42")
    with closing(pool), caplog.at_level(logging.WARNING, logger=LOGGER):
        conn = run_in_a_thread(orphaning_task, pool, name="celery-worker-7")
        assert pool.stats().idle == 0

        pool._housekeeper.run_once()
        assert driver.resets == 1  # rolled back
        assert not conn.in_transaction
        stats = pool.stats()
        assert stats.orphans_reclaimed == 1
        assert stats.idle == 1
        assert pool.acquire() is conn
        pool.release(conn)
        (record,) = caplog.records
        message = record.getMessage()
        assert "reclaiming a connection whose thread exited" in message
        assert "thread 'celery-worker-7' [task 42]" in message
        assert "in orphaning_task" in message


def test_an_orphan_that_cannot_be_reset_is_closed():
    pool, driver = make_pool()
    with closing(pool):
        conn = run_in_a_thread(orphaning_task, pool)
        driver.reset_fails = True
        pool._housekeeper.run_once()
        assert conn.closed
        stats = pool.stats()
        assert stats.closed["reset_failed"] == 1
        assert stats.size == 0


def test_connections_of_live_threads_are_not_reclaimed():
    pool, _ = make_pool()
    with closing(pool):
        conn = pool.acquire()
        pool._housekeeper.run_once()
        assert pool.stats().orphans_reclaimed == 0
        pool.release(conn)


def view_with_block(pool):
    with pool.connection() as conn:
        yield conn  # suspended inside the ``with`` block until the generator is closed


def test_the_context_manager_records_the_with_statement_as_the_place_of_acquisition(caplog):
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, LEAK_TIMEOUT=1)
    with closing(pool), caplog.at_level(logging.WARNING, logger=LOGGER):
        view = view_with_block(pool)
        conn = next(view)
        clock.advance(2)
        pool._housekeeper.run_once()
        (record,) = caplog.records
        assert "in view_with_block" in record.getMessage()
        assert "with pool.connection() as conn:" in record.getMessage()
        view.close()  # leaves the block: released
        assert pool.stats().idle == 1
        assert pool.acquire() is conn
        pool.release(conn)


def sharing_task(pool, out):
    conn = pool.acquire()
    pool.share(conn)  # another thread goes on using it, as with Django's thread sharing
    out.append(conn)


def test_a_shared_connection_outlives_its_thread_until_released():
    pool, _ = make_pool()
    with closing(pool):
        conn = run_in_a_thread(sharing_task, pool)
        pool._housekeeper.run_once()
        stats = pool.stats()
        assert stats.orphans_reclaimed == 0
        assert stats.in_use == 1
        pool.release(conn)  # from this thread

        # The mark ends with the checkout: the next holder that exits leaves an orphan.
        assert run_in_a_thread(orphaning_task, pool) is conn
        pool._housekeeper.run_once()
        assert pool.stats().orphans_reclaimed == 1


def test_share_of_a_connection_that_is_not_checked_out_raises():
    pool, _ = make_pool()
    with closing(pool):
        conn = pool.acquire()
        pool.release(conn)
        with pytest.raises(ValueError, match=r"share\(\) of a connection that is not checked"):
            pool.share(conn)
