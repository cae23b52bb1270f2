"""Graceful shutdown: readiness turns 503 at the first SIGTERM/SIGINT, pools drain at exit.

``AppConfig.ready()`` calls :func:`install` (unless ``DBPOOL_SHUTDOWN_HANDLERS`` is False):

- SIGTERM and SIGINT handlers, in the main thread only, that mark the process draining and
  then **chain** to the handler installed before them (gunicorn's, uvicorn's, runserver's,
  Celery's), so the server keeps its own graceful behaviour. Where that earlier handler was
  the default one, the pools are drained right away and the process then dies of the same
  signal, with the conventional exit status. A second signal during a drain stops waiting.
- an ``atexit`` hook that drains every pool: borrowed connections get up to
  ``DRAIN_TIMEOUT`` to come back, then every connection is closed cleanly (an open
  transaction is rolled back by the server when its session ends normally).

Exit paths that skip ``atexit`` have hooks: :func:`gunicorn_worker_exit` for gunicorn's
``worker_exit`` setting, and Celery's ``worker_process_shutdown`` signal, connected
automatically when Celery is installed.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from .pool import CloseResult, Pool

__all__ = [
    "begin_drain",
    "close_all_pools",
    "gunicorn_worker_exit",
    "install",
    "is_draining",
]

logger = logging.getLogger("django_dbpool.shutdown")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_draining = threading.Event()
_exiting = False
_previous: dict[int, Any] = {}
# Pools being drained right now: a second signal cuts their wait short.
_in_drain: list[Pool[Any]] = []
_in_drain_lock = threading.Lock()


def is_draining() -> bool:
    """True once the process got SIGTERM/SIGINT (or :func:`begin_drain` was called)."""
    return _draining.is_set()


def begin_drain() -> None:
    """Mark the process draining: readiness answers 503 from now on. Idempotent."""
    _draining.set()


def close_all_pools(timeout: float | None = None) -> dict[str, CloseResult]:
    """Drain and close every pool of this process. Idempotent.

    First gives back this thread's own Django connections (rolling back what they left
    open), then waits for the other borrowed connections, all pools together, up to
    ``timeout`` seconds (default: the largest ``DRAIN_TIMEOUT``), and closes every
    connection. Returns what was done, by alias.
    """
    from django.db import connections

    from .backends.base import take_all_pools

    _draining.set()
    try:
        connections.close_all()
    except Exception:
        logger.warning("closing this thread's connections failed", exc_info=True)
    pools = take_all_pools()
    if not pools:
        return {}
    if timeout is None:
        timeout = max(pool.options.drain_timeout for pool in pools.values())
    deadline = time.monotonic() + timeout
    with _in_drain_lock:
        _in_drain.extend(pools.values())
    results: dict[str, CloseResult] = {}
    try:
        for alias, pool in pools.items():
            results[alias] = pool.close(timeout=max(deadline - time.monotonic(), 0.0))
    finally:
        with _in_drain_lock:
            for pool in pools.values():
                if pool in _in_drain:
                    _in_drain.remove(pool)
    return results


def _abort_drain() -> None:
    with _in_drain_lock:
        pools = list(_in_drain)
    for pool in pools:
        # A second close() ends the first one's wait and force-closes what is still out.
        pool.close(timeout=0)


def gunicorn_worker_exit(server: object, worker: object) -> None:
    """gunicorn ``worker_exit`` hook: ``worker_exit = gunicorn_worker_exit`` in the
    gunicorn configuration file drains the worker's pools as it exits."""
    close_all_pools()


def _celery_worker_process_shutdown(**kwargs: object) -> None:
    close_all_pools()


def _at_exit() -> None:
    global _exiting
    _exiting = True
    close_all_pools()


def _handle(signum: int, frame: FrameType | None) -> None:
    if _draining.is_set() and (_exiting or _in_drain):
        # A second signal while we wait: stop waiting.
        logger.warning("signal %d during the drain: closing borrowed connections now", signum)
        _abort_drain()
        return
    _draining.set()
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # The default action was to die at once: drain first, then die the same way.
    logger.info("signal %d: draining database pools before exit", signum)
    close_all_pools()
    from .snapshots import forget_own_snapshot

    forget_own_snapshot()  # dying of the signal skips atexit
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install(handlers: bool = True) -> None:
    """Register the ``atexit`` drain, the SIGTERM/SIGINT handlers (when ``handlers`` and
    this is the main thread) and the Celery hook. Idempotent."""
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)
    if handlers and threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            current = signal.getsignal(signum)
            if current is _handle:
                continue
            _previous[signum] = current
            signal.signal(signum, _handle)
    try:
        from celery.signals import worker_process_shutdown
    except ImportError:
        return
    worker_process_shutdown.connect(
        _celery_worker_process_shutdown, weak=False, dispatch_uid="django_dbpool"
    )
