"""Fake driver, connections and clock for the pool tests: no database, no Django settings."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django_dbpool.pool import Pool, PoolOptions

_pool_numbers = itertools.count(1)


class FakeConnectError(Exception):
    """What the fake driver raises when told the database is down."""


class FakeConnection:
    def __init__(self, driver: FakeDriver, number: int) -> None:
        self.driver = driver
        self.number = number
        self.alive = True  # False once the "server" has dropped it
        self.closed = False
        self.in_transaction = False
        self.interrupted = False  # its socket was shut down under its holder
        self.holder: int | None = None  # thread ident using it, to catch double hand-out

    def __repr__(self) -> str:
        return f"<FakeConnection #{self.number}{' closed' if self.closed else ''}>"


class FakeDriver:
    """Counts everything the pool does to connections, and tracks the open-or-opening peak.

    ``connect_gate``: when set, each connect blocks until it is set (hanging connect).
    ``hang_next``: this many of the next connects block until ``hung_gate`` is set.
    ``connect_delay``: seconds each connect sleeps (a slow server).
    ``down``: connects raise FakeConnectError.
    ``error``: when set, failing connects raise it instead of FakeConnectError.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.numbers = itertools.count(1)
        self.connections: list[FakeConnection] = []
        self.open_or_opening = 0
        self.peak = 0
        self.connect_attempts = 0
        self.connects_started = threading.Semaphore(0)
        self.connected = threading.Event()
        self.connect_gate: threading.Event | None = None
        # This many of the next connects hang until hung_gate is set (a server that
        # accepts and never answers), while the others go through.
        self.hang_next = 0
        self.hung_gate = threading.Event()
        self.connect_delay = 0.0
        self.down = False
        self.fail_next = 0  # this many connects fail, then they succeed again
        self.error: Exception | None = None
        self.probes = 0
        self.resets = 0
        self.closes = 0
        self.reset_fails = False

    # the ``connect`` callable
    def connect(self) -> FakeConnection:
        with self.lock:
            self.connect_attempts += 1
            self.open_or_opening += 1
            self.peak = max(self.peak, self.open_or_opening)
        self.connects_started.release()
        try:
            with self.lock:
                hang = self.hang_next > 0
                self.hang_next = max(self.hang_next - 1, 0)
            if hang:
                self.hung_gate.wait(30)
            gate = self.connect_gate
            if gate is not None:
                gate.wait(30)
            if self.connect_delay:
                threading.Event().wait(self.connect_delay)
            with self.lock:
                fail = self.down or self.fail_next > 0
                self.fail_next = max(self.fail_next - 1, 0)
            if fail:
                raise self.error or FakeConnectError("fake: connection refused")
        except BaseException:
            with self.lock:
                self.open_or_opening -= 1
            raise
        with self.lock:
            conn = FakeConnection(self, next(self.numbers))
            self.connections.append(conn)
        self.connected.set()
        return conn

    def kill_all(self) -> None:
        """A database restart: every existing connection is dead."""
        for conn in list(self.connections):
            conn.alive = False

    @property
    def open_connections(self) -> list[FakeConnection]:
        return [c for c in self.connections if not c.closed]


class FakeAdapter:
    def __init__(self, driver: FakeDriver) -> None:
        self.driver = driver

    def is_alive(self, conn: FakeConnection) -> bool:
        with self.driver.lock:
            self.driver.probes += 1
        return conn.alive and not conn.closed

    def needs_reset(self, conn: FakeConnection) -> bool:
        return conn.in_transaction

    def reset(self, conn: FakeConnection) -> None:
        with self.driver.lock:
            self.driver.resets += 1
        if self.driver.reset_fails or not conn.alive:
            raise FakeConnectError("fake: rollback failed")
        conn.in_transaction = False

    def interrupt(self, conn: FakeConnection) -> None:
        # A cut-off socket: the holder's next use fails, the server's session is gone.
        conn.alive = False
        conn.interrupted = True

    def close(self, conn: FakeConnection) -> None:
        with self.driver.lock:
            if not conn.closed:
                conn.closed = True
                self.driver.closes += 1
                self.driver.open_or_opening -= 1


class FakeClock:
    """A monotonic clock that moves only when told to (ages, not waits, use it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_pool(
    driver: FakeDriver | None = None,
    *,
    clock: Callable[[], float] | None = None,
    holder_info: Callable[[], str | None] | None = None,
    name: str = "",
    **options: object,
) -> tuple[Pool[FakeConnection], FakeDriver]:
    """A pool over a fake driver; ``options`` are upper-case POOL settings."""
    driver = driver or FakeDriver()
    pool: Pool[FakeConnection] = Pool(
        driver.connect,
        FakeAdapter(driver),
        PoolOptions.from_mapping(options),
        name=name or f"test{next(_pool_numbers)}",
        holder_info=holder_info,
        clock=clock or time.monotonic,
    )
    return pool, driver


@contextmanager
def closing(pool: Pool[FakeConnection]) -> Iterator[Pool[FakeConnection]]:
    try:
        yield pool
    finally:
        pool.close(timeout=0)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (generous; never a timing assertion)."""
    done = threading.Event()
    for _ in range(int(timeout / 0.002)):
        if predicate():
            return True
        done.wait(0.002)
    return predicate()


def warm(pool: Pool[FakeConnection], n: int) -> list[FakeConnection]:
    """Open ``n`` connections (acquire n at once, then release them in order)."""
    conns = [pool.acquire(timeout=10) for _ in range(n)]
    for conn in conns:
        pool.release(conn)
    return conns
