"""Behaviour 9: after os.fork() the child forgets inherited connections without closing them
and starts afresh; a lock held by another thread at fork time does not deadlock the child."""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from django_dbpool.pool import _fork

from .fakes import closing, make_pool, warm

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")


def run_in_child(body: Callable[[], dict[str, Any]], timeout: float = 30) -> dict[str, Any]:
    """Fork; run ``body`` in the child, which reports a JSON dict through a pipe and exits
    with os._exit. A child that hangs is killed and reported as such."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(read_end)
            try:
                report = body()
            except BaseException as exc:
                report = {"error": repr(exc)}
            os.write(write_end, json.dumps(report).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                return {"error": "child hung"}
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "no report"}')


def test_child_forgets_inherited_connections_without_closing_them():
    pool, driver = make_pool(MAX_SIZE=4)
    with closing(pool):
        idle = warm(pool, 3)
        held = pool.acquire()  # one checked out at fork time, as with gunicorn --preload
        refs = [weakref.ref(c) for c in idle]
        parent_numbers = [c.number for c in driver.connections]

        def child() -> dict[str, Any]:
            stats = pool.stats()
            report: dict[str, Any] = {
                "size": stats.size,
                "idle": stats.idle,
                "acquired": stats.acquired,
            }
            pool.release(held)  # ignored: inherited, not ours
            del idle[:]
            gc.collect()
            report["inherited_alive"] = all(r() is not None for r in refs)
            report["kept"] = sum(1 for c in _fork._inherited if c is held)
            conn = pool.acquire(timeout=10)
            report["new_number"] = conn.number
            pool.release(conn)
            report["closed_any_inherited"] = any(
                c.closed for c in driver.connections if c.number in parent_numbers
            )
            report["resets"] = driver.resets
            pool.close(timeout=0)  # closes only the child's own connection
            report["closes"] = driver.closes
            report["inherited_closed_after_close"] = any(
                c.closed for c in driver.connections if c.number in parent_numbers
            )
            return report

        held.in_transaction = True  # must not be rolled back by the child
        report = run_in_child(child)
        # The parent's pool is untouched by the child.
        assert held.in_transaction
        assert not any(c.closed for c in driver.connections)
        assert pool.stats().size == 3
        held.in_transaction = False
        pool.release(held)

    assert "error" not in report, report
    assert report["size"] == 0
    assert report["idle"] == 0
    assert report["acquired"] == 0
    assert report["inherited_alive"]
    assert report["kept"] == 1
    assert report["new_number"] not in parent_numbers
    assert not report["closed_any_inherited"]
    assert not report["inherited_closed_after_close"]
    assert report["resets"] == 0
    assert report["closes"] == 1


def test_child_does_not_deadlock_on_a_lock_held_at_fork_time():
    pool, _ = make_pool()
    with closing(pool):
        pool.release(pool.acquire())
        locked = threading.Event()
        unlock = threading.Event()

        def hold_the_lock() -> None:
            with pool._lock:
                locked.set()
                unlock.wait(30)

        t = threading.Thread(target=hold_the_lock)
        t.start()
        assert locked.wait(30)
        try:

            def child() -> dict[str, Any]:
                conn = pool.acquire(timeout=10)
                pool.release(conn)
                return {"ok": True, "size": pool.stats().size}

            report = run_in_child(child)
        finally:
            unlock.set()
            t.join(timeout=30)
    assert report == {"ok": True, "size": 1}
