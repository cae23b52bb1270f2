"""``on_start``: called once per process, from the pool's housekeeper thread, when the pool
starts its background work (at the first checkout that finds no idle connection); again in
a forked child, whose pool starts afresh. The Django backends start the stats publisher
with it."""

from __future__ import annotations

import threading

from django_dbpool.pool import Pool, PoolOptions

from .fakes import FakeAdapter, FakeDriver, closing, wait_until
from .test_fork import run_in_child


def started_pool(calls: list[str]) -> Pool[object]:
    driver = FakeDriver()
    return Pool(
        driver.connect,
        FakeAdapter(driver),
        PoolOptions.from_mapping({"MAX_SIZE": 2}),
        name="on-start",
        on_start=lambda: calls.append(threading.current_thread().name),
    )


def test_on_start_runs_once_from_the_housekeeper_at_the_first_checkout():
    calls: list[str] = []
    pool = started_pool(calls)
    with closing(pool):
        assert calls == []  # nothing starts at construction
        conn = pool.acquire(timeout=10)
        assert wait_until(lambda: calls != [])
        pool.release(conn)
        pool.release(pool.acquire(timeout=10))
        assert calls == ["django_dbpool[on-start] housekeeper"]


def test_a_forked_child_calls_on_start_again_when_its_pool_starts():
    calls: list[str] = []
    pool = started_pool(calls)
    with closing(pool):
        pool.release(pool.acquire(timeout=10))
        assert wait_until(lambda: len(calls) == 1)

        def child() -> dict[str, object]:
            before = list(calls)
            pool.release(pool.acquire(timeout=10))
            wait_until(lambda: len(calls) > len(before))
            return {"before": len(before), "after": len(calls)}

        assert run_in_child(child) == {"before": 1, "after": 2}
    assert len(calls) == 1  # the parent's own count did not change


def test_a_failing_on_start_is_logged_and_the_pool_works(caplog):
    driver = FakeDriver()

    def fail() -> None:
        raise RuntimeError("no publisher today")

    pool = Pool(driver.connect, FakeAdapter(driver), {"MAX_SIZE": 1}, name="failing", on_start=fail)
    with closing(pool):
        pool.release(pool.acquire(timeout=10))
        assert wait_until(lambda: "on_start failed" in caplog.text)
        pool.release(pool.acquire(timeout=10))
