"""Behaviour 7: reconnects back off with full jitter; after FAIL_FAST_AFTER failures callers
fail fast with PoolUnavailable while the worker keeps trying; the first success recovers."""

from __future__ import annotations

import random
import time

import pytest

from django_dbpool.pool import Pool, PoolUnavailable, _connector
from django_dbpool.pool._connector import BACKOFF_BASE
from django_dbpool.pool.backoff import full_jitter

from .fakes import FakeAdapter, FakeConnectError, FakeDriver, closing, make_pool, wait_until


def test_backoff_is_exponential_capped_and_fully_jittered():
    ceilings = [full_jitter(n, BACKOFF_BASE, 2.0, lambda low, high: high) for n in range(1, 12)]
    assert ceilings[:4] == [BACKOFF_BASE, BACKOFF_BASE * 2, BACKOFF_BASE * 4, BACKOFF_BASE * 8]
    assert ceilings[-1] == 2.0
    assert max(ceilings) == 2.0
    assert full_jitter(1000, BACKOFF_BASE, 2.0, lambda low, high: high) == 2.0
    rng = random.Random(7)
    delays = [full_jitter(8, BACKOFF_BASE, 2.0, rng.uniform) for _ in range(200)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert min(delays) < 0.5 < 1.5 < max(delays)  # full jitter spreads over [0, ceiling]


def test_a_transient_connect_failure_is_retried_without_the_caller_noticing():
    pool, driver = make_pool(FAIL_FAST_AFTER=3, BACKOFF_MAX=0.01)
    with closing(pool):
        driver.fail_next = 2
        conn = pool.acquire(timeout=30)
        assert driver.connect_attempts == 3
        stats = pool.stats()
        assert stats.connect_errors == 2
        assert stats.unavailable == 0
        pool.release(conn)


def test_database_down_fails_fast_then_recovers_by_itself():
    pool, driver = make_pool(FAIL_FAST_AFTER=3, BACKOFF_MAX=0.01, TIMEOUT=30)
    with closing(pool):
        driver.down = True
        # The waiter is failed as soon as the third connect fails, not after TIMEOUT.
        with pytest.raises(PoolUnavailable) as info:
            pool.acquire()
        assert isinstance(info.value.__cause__, FakeConnectError)
        assert "FAIL_FAST_AFTER=3" in str(info.value)
        assert driver.connect_attempts >= 3
        assert pool.stats().unavailable_now

        # Later callers fail at once: they never queue.
        for _ in range(5):
            with pytest.raises(PoolUnavailable):
                pool.acquire()
        assert pool.stats().waiting == 0
        assert pool.stats().unavailable == 6

        # The worker keeps probing the database in the background.
        attempts = driver.connect_attempts
        assert wait_until(lambda: driver.connect_attempts >= attempts + 3)

        driver.down = False
        assert wait_until(lambda: not pool.stats().unavailable_now)
        conn = pool.acquire()
        pool.release(conn)
        stats = pool.stats()
        assert stats.connect_errors >= 5
        assert stats.opened == 1


def test_idle_connections_are_still_handed_out_while_connects_fail():
    pool, driver = make_pool(MAX_SIZE=3, FAIL_FAST_AFTER=1, BACKOFF_MAX=0.01)
    with closing(pool):
        conn = pool.acquire()
        driver.down = True  # e.g. the server refuses new sessions, existing ones work
        with pytest.raises(PoolUnavailable):
            pool.acquire(timeout=30)
        pool.release(conn)
        assert pool.acquire() is conn
        pool.release(conn)


class FakeConfigError(Exception):
    """A connect error that no retry can fix (a role that does not exist, say)."""


def test_a_configuration_error_reaches_the_caller_at_once_while_transient_ones_retry():
    driver = FakeDriver()
    pool = Pool(
        driver.connect,
        FakeAdapter(driver),
        {"FAIL_FAST_AFTER": 3, "BACKOFF_MAX": 0.01, "TIMEOUT": 30},
        is_transient=lambda exc: not isinstance(exc, FakeConfigError),
    )
    with closing(pool):
        driver.error = FakeConfigError("role does not exist")
        driver.fail_next = 1
        # One failed connect is enough: the caller gets the error itself, not a timeout.
        with pytest.raises(FakeConfigError, match="role does not exist"):
            pool.acquire()
        assert driver.connect_attempts == 1
        assert pool.stats().connect_errors == 1
        assert not pool.stats().unavailable_now

        # A transient error is still retried without the caller noticing (the failure
        # above counts toward FAIL_FAST_AFTER: two in a row so far).
        driver.error = None
        driver.fail_next = 1
        conn = pool.acquire()
        assert driver.connect_attempts == 3
        assert pool.stats().connect_errors == 2
        pool.release(conn)


def _failing_fast_with_a_long_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Pool[object], FakeDriver]:
    # Every backoff is a minute: only a caller's half-open probe can make the pool try
    # again within the test.
    monkeypatch.setattr(_connector, "full_jitter", lambda failures, base, cap, uniform: 60.0)
    pool, driver = make_pool(FAIL_FAST_AFTER=1, TIMEOUT=30)
    driver.down = True
    with pytest.raises(PoolUnavailable):
        pool.acquire()
    assert pool.stats().unavailable_now
    return pool, driver  # type: ignore[return-value]


def _acquire_once_it_tries_again(pool: Pool[object]) -> object:
    # Callers keep failing fast until a connect succeeds: within the test only if one of
    # them had the pool try before its minute of backoff ran out.
    deadline = time.monotonic() + 30
    while True:
        try:
            return pool.acquire()
        except PoolUnavailable:
            assert time.monotonic() < deadline, "never tried again within the backoff"
            time.sleep(0.01)


def test_a_caller_while_failing_fast_has_the_pool_try_again(monkeypatch):
    pool, driver = _failing_fast_with_a_long_backoff(monkeypatch)
    with closing(pool):
        driver.down = False
        # The callers still fail fast, but one of them after HALF_OPEN_SECONDS has the
        # connector try at once instead of after its minute of backoff.
        pool.release(_acquire_once_it_tries_again(pool))
        assert driver.connect_attempts == 2
        assert not pool.stats().unavailable_now


def test_callers_while_failing_fast_try_at_most_every_half_open_interval(monkeypatch):
    pool, driver = _failing_fast_with_a_long_backoff(monkeypatch)
    with closing(pool):
        start = time.monotonic()
        attempts = driver.connect_attempts
        calls = 0
        while driver.connect_attempts < attempts + 3:
            with pytest.raises(PoolUnavailable):
                pool.acquire()
            calls += 1
            time.sleep(0.001)
        elapsed = time.monotonic() - start
        # Hundreds of failing callers, and no more attempts than one per interval.
        assert calls > 3 * 10
        assert elapsed >= 2 * _connector.HALF_OPEN_SECONDS


def test_a_probe_that_hangs_does_not_hold_up_the_next_one(monkeypatch):
    # Back up behind a proxy or load balancer that accepts the first connect and never
    # answers: the next probe goes beside the hung one.
    pool, driver = _failing_fast_with_a_long_backoff(monkeypatch)
    with closing(pool):
        driver.hang_next = 1
        driver.down = False
        pool.release(_acquire_once_it_tries_again(pool))
        assert pool.stats().opening == 1  # the hung one, still in flight
        driver.hung_gate.set()
