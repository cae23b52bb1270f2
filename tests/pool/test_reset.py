"""Behaviour 6: release costs nothing on a clean connection; dirty ones are reset; failures
and broken connections are discarded and counted."""

from __future__ import annotations

from .fakes import closing, make_pool, warm


def test_clean_release_does_not_reset():
    pool, driver = make_pool()
    with closing(pool):
        for _ in range(10):
            pool.release(pool.acquire())
        assert driver.resets == 0


def test_connection_in_a_transaction_is_reset_and_reused():
    pool, driver = make_pool()
    with closing(pool):
        conn = pool.acquire()
        conn.in_transaction = True
        pool.release(conn)
        assert driver.resets == 1
        assert not conn.in_transaction
        assert pool.acquire() is conn
        pool.release(conn)
        assert driver.resets == 1


def test_connection_that_fails_its_reset_is_discarded_and_counted():
    pool, driver = make_pool()
    with closing(pool):
        conn = pool.acquire()
        conn.in_transaction = True
        driver.reset_fails = True
        pool.release(conn)
        assert conn.closed
        stats = pool.stats()
        assert stats.closed["reset_failed"] == 1
        assert stats.size == 0
        driver.reset_fails = False
        other = pool.acquire(timeout=10)
        assert other is not conn
        pool.release(other)


def test_connection_released_as_broken_is_discarded_and_counted():
    pool, driver = make_pool()
    with closing(pool):
        (conn,) = warm(pool, 1)
        conn = pool.acquire()
        pool.release(conn, broken=True)
        assert conn.closed
        assert driver.resets == 0
        stats = pool.stats()
        assert stats.closed["broken"] == 1
        assert stats.size == 0


def test_context_manager_releases_and_resets_after_an_exception():
    pool, driver = make_pool()
    with closing(pool):
        try:
            with pool.connection() as conn:
                conn.in_transaction = True
                raise RuntimeError("view failed")
        except RuntimeError:
            pass
        assert driver.resets == 1
        assert pool.stats().idle == 1
        with pool.connection() as again:
            assert again is conn
