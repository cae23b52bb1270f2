"""Behaviour 1: never more than MAX_SIZE connections open or opening, under any interleaving."""

from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from django_dbpool.pool import Pool, PoolTimeout, PoolUnavailable

from .fakes import FakeClock, FakeConnection, make_pool

THREADS = 32
CYCLES_PER_THREAD = 750  # 24,000 cycles in all
MAX_SIZE = 4


def test_stress_bound_holds_and_no_connection_is_handed_out_twice():
    pool, driver = make_pool(MAX_SIZE=MAX_SIZE, TIMEOUT=30)
    done = [0] * THREADS
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)
    deadline = time.monotonic() + 60  # a bound on the test, not an assertion

    def worker(index: int) -> None:
        rng = random.Random(index)
        me = threading.get_ident()
        start.wait()
        try:
            for _ in range(CYCLES_PER_THREAD):
                if time.monotonic() > deadline:
                    return
                conn = pool.acquire()
                if conn.holder is not None or conn.closed:
                    raise AssertionError(f"{conn} handed out while held or closed")
                conn.holder = me
                roll = rng.random()
                if roll < 0.2:
                    time.sleep(0)  # let other threads run while we hold it
                conn.in_transaction = roll < 0.05
                conn.holder = None
                pool.release(conn, broken=0.05 <= roll < 0.08)
                done[index] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    stats = pool.stats()
    pool.close(timeout=0)

    assert not errors, errors[:3]
    assert sum(done) == THREADS * CYCLES_PER_THREAD
    assert driver.peak <= MAX_SIZE
    assert driver.peak >= 2  # the stress really ran concurrently
    assert stats.acquired == THREADS * CYCLES_PER_THREAD
    assert stats.closed["broken"] > 0
    assert stats.opened - stats.closed_total == stats.size
    assert stats.hold_seconds.count == stats.acquired


class PoolMachine(RuleBasedStateMachine):
    """Random single-caller operations, fake clock, real background connector."""

    MAX = 3

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.pool: Pool[FakeConnection]
        self.pool, self.driver = make_pool(
            clock=self.clock,
            MAX_SIZE=self.MAX,
            MIN_SIZE=1,
            TIMEOUT=10,
            FAIL_FAST_AFTER=2,
            BACKOFF_MAX=0.005,
            MAX_IDLE=100,
            MAX_LIFETIME=1000,
            VALIDATE_AFTER=1,
            KEEPALIVE=50,
        )
        self.held: list[FakeConnection] = []
        self.acquired = 0
        self.outage = False  # the database was down and the pool may not know it is back

    @rule(timeout=st.sampled_from([0.0, 0.01]))
    def acquire(self, timeout: float) -> None:
        full = len(self.held) == self.MAX
        if not self.driver.down and not self.pool.stats().unavailable_now:
            self.outage = False  # up, and the pool knows it: it cannot fail fast any more
        try:
            conn = self.pool.acquire(timeout=timeout if full else 10)
        except PoolTimeout:
            assert full or self.outage
            return
        except PoolUnavailable:
            # Fails fast while down, and after recovery until the connector's next attempt.
            assert self.outage
            return
        assert not full
        assert conn not in self.held
        assert not conn.closed
        self.held.append(conn)
        self.acquired += 1

    @precondition(lambda self: self.held)
    @rule(data=st.data(), how=st.sampled_from(["clean", "dirty", "broken"]))
    def release(self, data: st.DataObject, how: str) -> None:
        conn = data.draw(st.sampled_from(self.held))
        self.held.remove(conn)
        conn.in_transaction = how == "dirty"
        self.pool.release(conn, broken=how == "broken")

    @rule(seconds=st.sampled_from([0.5, 2, 60, 150, 1200]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def housekeep(self) -> None:
        self.pool._housekeeper.run_once()

    @rule()
    def database_restart(self) -> None:
        self.driver.kill_all()

    @rule(down=st.booleans())
    def database_down(self, down: bool) -> None:
        self.driver.down = down
        self.outage = self.outage or down

    @invariant()
    def bound_and_bookkeeping(self) -> None:
        pool = self.pool
        with pool._lock:
            size, opening = pool._size, pool._opening
            idle, out = list(pool._idle), dict(pool._out)
            closed_total = sum(pool._closed_counts.values())
            opened, acquired = pool._opened, pool._acquired
        assert size + opening <= self.MAX
        assert self.driver.peak <= self.MAX
        assert len(idle) + len(out) <= size
        assert opened - closed_total == size
        assert acquired == self.acquired
        assert {id(c) for c in self.held} == set(out)
        assert not any(slot.conn.closed for slot in idle)
        assert len({id(slot) for slot in idle}) == len(idle)

    def teardown(self) -> None:
        self.driver.down = False
        self.pool.close(timeout=0)
        assert self.driver.open_or_opening >= 0


@pytest.mark.usefixtures("manual_housekeeping")
def test_pool_state_machine():
    PoolMachine.TestCase.settings = settings(
        max_examples=40,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    PoolMachine.TestCase().runTest()
