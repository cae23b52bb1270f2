"""Behaviour 12: the pool works in a gevent monkey-patched process (many greenlets, one
thread): its primitives are looked up at call time, so they are gevent's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("gevent")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    # The pool is imported before patching, as when a settings module or a preloaded app
    # imports it first: only call-time lookups of threading primitives can work then.
    from django.conf import settings

    from django_dbpool.pool import PoolTimeout
    from tests.pool.fakes import make_pool

    settings.configure()  # gevent's patching inspects live objects, Django's lazy settings too
    import warnings
    warnings.simplefilter("ignore")  # gevent warns that threading was imported first
    from gevent import monkey

    monkey.patch_all()

    import json
    import os
    import threading

    import gevent

    pool, driver = make_pool(MAX_SIZE=4, TIMEOUT=30)
    driver.connect_delay = 0.005  # connects yield to other greenlets
    done = []

    def worker(i):
        for _ in range(20):
            conn = pool.acquire()
            assert conn.holder is None
            conn.holder = i
            gevent.sleep(0.001)
            conn.holder = None
            pool.release(conn)
        done.append(i)

    greenlets = [gevent.spawn(worker, i) for i in range(50)]
    gevent.joinall(greenlets, timeout=60, raise_error=True)

    # A hanging connect must not block the other greenlets: fill the pool, then wait.
    gate = threading.Event()
    driver.connect_gate = gate
    held = [pool.acquire() for _ in range(4)]
    timed_out = []
    def waiter():
        try:
            pool.acquire(timeout=0.05)
        except PoolTimeout:
            timed_out.append(True)
    gevent.joinall([gevent.spawn(waiter) for _ in range(3)], timeout=30)
    for conn in held:
        pool.release(conn)
    gate.set()

    stats = pool.stats()
    print(json.dumps({
        "done": len(done),
        "peak": driver.peak,
        "acquired": stats.acquired,
        "timed_out": len(timed_out),
        "lock_is_gevent": type(pool._lock).__module__.startswith("gevent"),
        # The connector and housekeeper ran as greenlets: still one OS thread (Linux).
        "os_threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc") else 1,
    }))
    pool.close(timeout=1)
    """
)


def test_pool_under_gevent_monkey_patching():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # a pool bound to real locks deadlocks under gevent: fail, not hang
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "done": 50,
        "peak": 4,
        "acquired": 50 * 20 + 4,
        "timed_out": 3,
        "lock_is_gevent": True,
        "os_threads": 1,
    }
