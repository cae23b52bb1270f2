"""Pool.park(): a lease ends, the connection waits for its holder's next statement, and
serves anyone else as soon as that holder is not using it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .fakes import FakeClock, FakeConnection, closing, make_pool, wait_until


class Holder:
    """A thread that acquires a connection, parks it, then waits on something else (a sleep,
    an ``await``) until told to take it back: ``unparked`` says whether it could."""

    def __init__(self, pool, *, wait: bool = True) -> None:
        self.pool = pool
        self.conn: FakeConnection | None = None
        self.unparked: bool | None = None
        self.parked = threading.Event()
        self.go_on = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        if wait:
            assert self.parked.wait(30)

    def _run(self) -> None:
        self.conn = self.pool.acquire(timeout=10)
        self.pool.park(self.conn)
        self.parked.set()
        self.go_on.wait(30)
        self.unparked = self.pool.unpark(self.conn)
        if self.unparked:
            self.pool.release(self.conn)

    def finish(self) -> bool | None:
        self.go_on.set()
        self.thread.join(30)
        return self.unparked


class Waiter:
    """A thread that waits for a connection and keeps it until told to give it back."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.conn: FakeConnection | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        self.conn = self.pool.acquire(timeout=30)
        self.done.wait(30)
        self.pool.release(self.conn)

    def finish(self) -> None:
        self.done.set()
        self.thread.join(30)


def waiting(pool, n: int = 1) -> Callable[[], bool]:
    return lambda: pool.stats().waiting == n


def test_a_parked_connection_comes_back_to_its_holder_as_a_lease_of_its_own():
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=2)
    with closing(pool):
        conn = pool.acquire(timeout=10)
        clock.advance(0.5)
        pool.park(conn)
        stats = pool.stats()
        assert (stats.parked, stats.in_use, stats.idle) == (1, 0, 0)
        assert (stats.acquired, stats.hold_seconds.count, stats.hold_seconds.sum) == (1, 1, 0.5)

        assert pool.unpark(conn)
        stats = pool.stats()
        assert (stats.parked, stats.in_use, stats.acquired) == (0, 1, 2)
        pool.release(conn)
        assert pool.stats().idle == 1
        assert pool.stats().hold_seconds.count == 2
        assert pool.stats().opened == 1


def test_only_the_thread_that_parked_a_connection_takes_it_back():
    pool, _ = make_pool(MAX_SIZE=2)
    with closing(pool):
        conn = pool.acquire(timeout=10)
        pool.park(conn)
        elsewhere: list[bool] = []
        thread = threading.Thread(target=lambda: elsewhere.append(pool.unpark(conn)))
        thread.start()
        thread.join(30)
        assert elsewhere == [False]
        assert pool.unpark(conn)
        pool.release(conn)


def test_a_caller_that_finds_no_idle_connection_takes_a_parked_one():
    pool, _ = make_pool(MAX_SIZE=1)
    with closing(pool):
        holder = Holder(pool)
        conn = pool.acquire(timeout=10)  # no idle one, no waiting, no new connection
        assert conn is holder.conn
        assert pool.stats().parked == 0
        pool.release(conn)
        assert holder.finish() is False  # it acquires as usual then
        assert pool.stats().opened == 1


def test_a_connection_parked_for_a_whole_tick_is_idle_again(manual_housekeeping: None) -> None:
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=2)
    with closing(pool):
        conn = pool.acquire(timeout=10)
        pool.park(conn)
        pool._housekeeper.run_once()
        assert pool.stats().parked == 1  # parked just now
        clock.advance(pool._housekeeper.tick)
        pool._housekeeper.run_once()
        stats = pool.stats()
        assert (stats.parked, stats.idle) == (0, 1)
        assert not pool.unpark(conn)
        assert pool.acquire(timeout=10) is conn


def test_what_must_not_stay_out_is_released_instead_of_parked():
    clock = FakeClock()
    pool, driver = make_pool(clock=clock, MAX_SIZE=2, MAX_LIFETIME=10)
    with closing(pool):
        conn = pool.acquire(timeout=10)
        conn.in_transaction = True
        pool.park(conn)  # needs a reset: reset and idle, as a release would
        assert driver.resets == 1
        assert pool.stats().idle == 1
        assert not pool.unpark(conn)

        conn = pool.acquire(timeout=10)
        clock.advance(11)
        pool.park(conn)  # reached its lifetime
        assert conn.closed
        assert pool.stats().closed["lifetime"] == 1
        assert not pool.unpark(conn)

        conn = pool.acquire(timeout=10)
        pool.park(conn)
        clock.advance(11)  # reached it while parked
        assert not pool.unpark(conn)
        assert conn.closed
        assert pool.stats().closed["lifetime"] == 2


def test_end_park_gives_a_parked_connection_back_and_leaves_a_taken_one_alone():
    pool, _ = make_pool(MAX_SIZE=1)
    with closing(pool):
        conn = pool.acquire(timeout=10)
        pool.park(conn)
        pool.end_park(conn)
        stats = pool.stats()
        assert (stats.parked, stats.idle) == (0, 1)

        holder = Holder(pool)
        taken = pool.acquire(timeout=10)  # took holder's parked connection
        pool.end_park(holder.conn)  # no-op: not parked any more
        assert pool.stats().in_use == 1
        pool.release(taken)
        holder.finish()


def test_close_closes_parked_connections():
    pool, _ = make_pool(MAX_SIZE=2)
    conn = pool.acquire(timeout=10)
    pool.park(conn)
    pool.close(timeout=0)
    assert conn.closed
    assert not pool.unpark(conn)


def test_while_retiring_a_parked_connection_is_in_use_and_goes_with_the_last_one():
    # With transaction leases a request's connection is parked between its statements: a
    # retiring pool that closed it would have the request's next statement open another
    # one, which the process's exit might cut off mid-connect.
    pool, driver = make_pool(MAX_SIZE=3)
    with closing(pool):
        parked, out, idle = (pool.acquire(timeout=10) for _ in range(3))
        pool.release(idle)
        pool.park(parked)
        assert pool.retire() == 0  # in use: parked, and one checked out
        pool.release(out)
        assert [parked.closed, out.closed, idle.closed] == [False, False, False]
        assert pool.unpark(parked)  # the request's next statement: no new connection
        assert driver.connect_attempts == 3
        pool.park(parked)  # parks while retiring too
        assert pool.stats().parked == 1
        pool.end_park(parked)  # the request ends: the last in use, and every idle one
        assert [parked.closed, out.closed, idle.closed] == [True, True, True]
        stats = pool.stats()
        assert (stats.size, stats.idle, stats.parked, stats.in_use) == (0, 0, 0, 0)
        assert stats.closed["shutdown"] == 3


def test_while_retiring_the_last_parked_connection_goes_back_with_the_idle_ones(
    manual_housekeeping: None,
) -> None:
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=2)
    with closing(pool):
        parked, idle = pool.acquire(timeout=10), pool.acquire(timeout=10)
        pool.release(idle)
        pool.park(parked)
        assert pool.retire() == 0
        # Its holder never came back (a thread that does not end its lease): parked for a
        # whole tick, it is idle again, and nothing is in use any more.
        clock.advance(pool._housekeeper.tick)
        pool._housekeeper.run_once()
        assert [parked.closed, idle.closed] == [True, True]
        assert pool.stats().size == 0

    # A lifetime reached while parked closes it, and the idle ones with it.
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=2, MAX_LIFETIME=10)
    with closing(pool):
        parked, idle = pool.acquire(timeout=10), pool.acquire(timeout=10)
        pool.release(idle)
        pool.park(parked)
        pool.retire()
        clock.advance(11)
        assert not pool.unpark(parked)
        assert [parked.closed, idle.closed] == [True, True]
        assert pool.stats().size == 0


def test_while_callers_wait_a_park_is_a_release_and_nothing_stays_parked(
    manual_housekeeping: None,
) -> None:
    pool, _ = make_pool(MAX_SIZE=1)
    with closing(pool):
        conn = pool.acquire(timeout=10)
        waiter = Waiter(pool)
        assert wait_until(waiting(pool))
        pool.park(conn)
        assert pool.stats().parked == 0
        assert wait_until(lambda: waiter.conn is conn)
        assert not pool.unpark(conn)
        waiter.finish()
        # Nobody waits now: parked again.
        conn = pool.acquire(timeout=10)
        pool.park(conn)
        assert pool.stats().parked == 1
        assert pool.unpark(conn)
        pool.release(conn)
