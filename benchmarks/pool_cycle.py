"""Pool overhead: acquire + release of a no-op connection, against the alternatives.

Run ``python benchmarks/pool_cycle.py`` (deps: benchmarks/requirements.txt; no server). It
compares django_dbpool's Pool with psycopg_pool's ConnectionPool (getconn/putconn) and
SQLAlchemy's QueuePool (connect/close), all over fake connections that do no I/O, in two
scenarios:

* single: one thread, acquire+release in a loop (per-cycle cost of the pool itself), the
  pools taking turns every few milliseconds (see :data:`CHUNKS`);
* contended: 16 threads sharing 4 connections for a fixed time after a short warm-up
  (throughput, and fairness as the ratio of the most to the least completions of a thread).

Runs alternate between pools (A B C A B C ...) so that machine noise hits all of them alike;
each figure is the median of the runs (spread: the lowest and highest run). Writes every run
to ``results/pool_cycle.json`` and prints the table ``report.py`` writes from it into the
README. Takes about a minute.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from report import RESULTS, pool_cycle_table
from revision import revision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (acquire, release) for one pool
Ops = tuple[Callable[[], Any], Callable[[Any], None]]


class _NoOp:
    """A connection that does nothing, with what each pool under test touches."""

    closed = False

    def close(self) -> None:
        self.closed = True

    def rollback(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def cursor(self) -> Any:
        raise NotImplementedError


def make_dbpool(max_size: int) -> tuple[Ops, Callable[[], None]]:
    from django_dbpool.pool import Pool

    class Adapter:
        def is_alive(self, conn: _NoOp) -> bool:
            return True

        def needs_reset(self, conn: _NoOp) -> bool:
            return False

        def reset(self, conn: _NoOp) -> None:
            pass

        def close(self, conn: _NoOp) -> None:
            conn.close()

    pool: Pool[_NoOp] = Pool(_NoOp, Adapter(), {"MAX_SIZE": max_size}, name="bench")
    warm = [pool.acquire() for _ in range(max_size)]
    for conn in warm:
        pool.release(conn)
    return (pool.acquire, pool.release), lambda: pool.close(timeout=0)


def make_psycopg_pool(max_size: int) -> tuple[Ops, Callable[[], None]]:
    from psycopg import pq
    from psycopg_pool import ConnectionPool

    class _PGconn:
        transaction_status = pq.TransactionStatus.IDLE

    class FakePsycopgConnection(_NoOp):
        """Enough of psycopg.Connection for getconn/putconn without a server."""

        def __init__(self) -> None:
            self.pgconn = _PGconn()
            self._pool = None

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> FakePsycopgConnection:
            return cls()

    pool: Any = ConnectionPool(
        "",
        connection_class=FakePsycopgConnection,
        min_size=max_size,
        max_size=max_size,
        open=True,
    )
    pool.wait(timeout=30)
    return (pool.getconn, pool.putconn), lambda: pool.close(timeout=5)


def make_sqlalchemy(max_size: int) -> tuple[Ops, Callable[[], None]]:
    from sqlalchemy.pool import QueuePool

    pool = QueuePool(_NoOp, pool_size=max_size, max_overflow=0, timeout=30)
    warm = [pool.connect() for _ in range(max_size)]
    for conn in warm:
        conn.close()

    def release(conn: Any) -> None:
        conn.close()

    return (pool.connect, release), pool.dispose


POOLS: dict[str, Callable[[int], tuple[Ops, Callable[[], None]]]] = {
    "django_dbpool": make_dbpool,
    "psycopg_pool": make_psycopg_pool,
    "SQLAlchemy QueuePool": make_sqlalchemy,
}


#: A run's single-thread cycles are timed in this many chunks, the pools taking turns chunk
#: by chunk. This machine's speed changes from one second to the next: timed one after the
#: other, a whole run each, two pools' times moved by up to 2x between runs of one process
#: (a slow spell caught one pool and not the other), and their ratio from 0.55x to 1.07x.
CHUNKS = 50


def run_single(ops: dict[str, Ops], cycles: int) -> dict[str, float]:
    """Seconds per acquire+release cycle, one thread, for each pool: ``cycles`` each, in
    :data:`CHUNKS` turns (the order reversed every other turn)."""
    per_chunk = max(cycles // CHUNKS, 1)
    names = list(ops)
    spent = dict.fromkeys(names, 0.0)
    gc.collect()
    for chunk in range(CHUNKS):
        for name in names if chunk % 2 == 0 else names[::-1]:
            acquire, release = ops[name]
            start = time.perf_counter()
            for _ in range(per_chunk):
                release(acquire())
            spent[name] += time.perf_counter() - start
    return {name: total / (per_chunk * CHUNKS) for name, total in spent.items()}


def run_contended(
    ops: Ops, threads: int, duration: float, warmup: float
) -> tuple[float, list[int]]:
    """Cycles per second and completions per thread, over ``duration`` of steady state.

    The first ``warmup`` seconds are not counted: while threads are still starting, the first
    ones run alone and any pool lets them cycle freely, which says nothing about hand-off.
    """
    acquire, release = ops
    counts = [0] * threads
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        barrier.wait()
        while not stop.is_set():
            release(acquire())
            counts[i] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    gc.collect()
    barrier.wait()
    stop.wait(warmup)
    before = counts[:]
    start = time.perf_counter()
    stop.wait(duration)
    after = counts[:]
    elapsed = time.perf_counter() - start
    stop.set()
    for t in workers:
        t.join()
    done = [b - a for a, b in zip(before, after, strict=True)]
    return sum(done) / elapsed, done


def write_results(
    args: argparse.Namespace,
    threads: int,
    shared: int,
    single: dict[str, list[float]],
    throughput: dict[str, list[float]],
    fairness: dict[str, list[float]],
    elapsed_s: int,
) -> dict[str, Any]:
    from importlib.metadata import version

    data = {
        "environment": {
            "date": time.strftime("%Y-%m-%d"),
            "revision": revision(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "psycopg_pool": version("psycopg-pool"),
            "sqlalchemy": version("sqlalchemy"),
            "rounds": args.rounds,
            "cycles": args.cycles,
            "duration": args.duration,
            "threads": threads,
            "shared": shared,
            "elapsed_s": elapsed_s,
        },
        "rows": {
            name: {
                "single_s": single[name],
                "rate": throughput[name],
                # inf (a thread completed nothing) is not JSON: None stands for it.
                "fairness": [f if f != float("inf") else None for f in fairness[name]],
            }
            for name in POOLS
        },
    }
    path = RESULTS / "pool_cycle.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path.relative_to(RESULTS.parents[1])}", file=sys.stderr)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs per pool and scenario")
    parser.add_argument("--cycles", type=int, default=100_000, help="single-thread cycles")
    parser.add_argument("--duration", type=float, default=1.0, help="contended run, seconds")
    parser.add_argument("--warmup", type=float, default=0.3, help="uncounted start, seconds")
    args = parser.parse_args()
    threads, shared = 16, 4
    started = time.monotonic()

    single: dict[str, list[float]] = {name: [] for name in POOLS}
    throughput: dict[str, list[float]] = {name: [] for name in POOLS}
    fairness: dict[str, list[float]] = {name: [] for name in POOLS}
    for round_ in range(args.rounds):
        opened = {name: make(1) for name, make in POOLS.items()}
        try:
            times = run_single({name: ops for name, (ops, _) in opened.items()}, args.cycles)
        finally:
            for _, close in opened.values():
                close()
        for name, seconds in times.items():
            single[name].append(seconds)
        for name, make in POOLS.items():
            ops, close = make(shared)
            try:
                rate, counts = run_contended(ops, threads, args.duration, args.warmup)
            finally:
                close()
            throughput[name].append(rate)
            fairness[name].append(max(counts) / min(counts) if min(counts) else float("inf"))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    elapsed_s = round(time.monotonic() - started)
    data = write_results(args, threads, shared, single, throughput, fairness, elapsed_s)
    # The table report.py writes into the README, as markdown.
    print("\n" + pool_cycle_table(data).markdown())


if __name__ == "__main__":
    main()
