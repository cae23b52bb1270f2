"""Graceful shutdown: readiness turns 503 at the first SIGTERM/SIGINT, pools drain at exit.

The hooks are installed by :mod:`django_dbpool.lifecycle` (from ``AppConfig.ready()``; the
signal handlers unless ``DBPOOL_SHUTDOWN_HANDLERS`` is False):

- SIGTERM and SIGINT handlers, in the main thread only, that mark the process draining and
  then **chain** to the handler installed before them (gunicorn's, uvicorn's, runserver's,
  Celery's), so the server keeps its own graceful behaviour. The server then decides when
  the process ends, and may end it in a way that skips ``atexit`` (uvicorn, once its
  requests are done, restores the default action and raises the signal again): so the
  pools also retire (:meth:`Pool.retire <django_dbpool.pool.Pool.retire>`), giving every
  connection back to the database as soon as nothing uses it, while requests in flight
  still get one whenever they ask. (Python's own SIGINT handler, which raises
  ``KeyboardInterrupt``, is not a server's: the pools stay as they are.) Where the earlier
  handler was the default one, the process closes its pools within about a second (idle
  connections closed, the main thread's connection rolled back and closed, statements in
  flight cut off) and then dies of the same signal, with the conventional exit status. A
  second signal during a drain stops the wait. A handler installed outside Python
  (``getsignal()`` gives None: an embedding server such as uWSGI) is left in place.
- an ``atexit`` hook that drains every pool: borrowed connections get up to
  ``DRAIN_TIMEOUT`` to come back (those of threads that have exited come back at once), then
  every connection is closed cleanly (an open transaction is rolled back by the server when
  its session ends normally).

A signal handler runs in the main thread between two of its bytecodes, maybe inside the
driver or the pool with their locks held, so it never takes those locks itself: the work
runs on a thread of its own, which the handler waits for a bounded time. A thread stuck in a
driver call that does not return to Python for signals (mysqlclient retries its reads) is
cut loose by a watcher thread woken through ``signal.set_wakeup_fd``.

Exit paths that skip ``atexit`` have hooks: :func:`gunicorn_worker_exit` for gunicorn's
``worker_exit`` setting, and Celery's ``worker_process_shutdown`` signal, connected by
``lifecycle`` when Celery is installed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import registry, snapshots
from .pool import CloseResult, Pool

__all__ = [
    "after_fork_in_child",
    "begin_drain",
    "close_all_pools",
    "drain_at_exit",
    "gunicorn_worker_exit",
    "install_handlers",
    "is_draining",
]

logger = logging.getLogger("django_dbpool.shutdown")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_draining = threading.Event()
_exiting = False
_previous: dict[int, Any] = {}
#: How long a process dying of a signal waits for connections other threads hold.
EXIT_DRAIN_SECONDS = 1.0
#: How long the watcher lets the main thread take a signal before cutting its connections.
HANDLER_GRACE_SECONDS = 0.25
_NOT_OURS = object()
# Set once a signal's default action is under way: the handler is running.
_dying = threading.Event()
_foreign_logged = False
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

    _draining.set()
    try:
        connections.close_all()
    except Exception:
        logger.warning("closing this thread's connections failed", exc_info=True)
    pools = registry.take_all_pools()
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


def _off_the_main_thread(work: Callable[[], object], wait: float) -> None:
    # Runs work on a thread of its own and waits for it at most `wait` seconds: from a
    # signal handler, which must not take a lock the code it interrupted may hold.
    thread = threading.Thread(target=work, name="django_dbpool shutdown", daemon=True)
    thread.start()
    thread.join(wait)


def gunicorn_worker_exit(server: object, worker: object) -> None:
    """gunicorn ``worker_exit`` hook: ``worker_exit = gunicorn_worker_exit`` in the
    gunicorn configuration file drains the worker's pools as it exits."""
    close_all_pools()


def drain_at_exit() -> None:
    """The ``atexit`` drain (registered by ``lifecycle``): :func:`close_all_pools`, during
    which a second signal stops the wait."""
    global _exiting
    _exiting = True
    close_all_pools()


def _handle(signum: int, frame: FrameType | None) -> None:
    if _draining.is_set() and (_exiting or _in_drain):
        # A second signal while we wait: stop waiting.
        logger.warning("signal %d during the drain: closing borrowed connections now", signum)
        _off_the_main_thread(_abort_drain, 0)
        return
    _draining.set()
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        if previous is not signal.default_int_handler:
            # A server's handler: the server ends the process when its requests are done,
            # maybe without atexit (uvicorn dies of the signal it caught). The pools give
            # their connections back as soon as nothing uses them.
            _off_the_main_thread(_retire_all_pools, 0)
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # The default action was to die at once: close the pools first, then die the same way.
    _dying.set()
    logger.info("signal %d: closing database pools before exit", signum)
    own = _own_connections()
    _off_the_main_thread(lambda: _close_before_dying(own), EXIT_DRAIN_SECONDS + 1.0)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _retire_all_pools() -> None:
    for pool in registry.pools().values():
        pool.retire()


def _own_connections() -> list[tuple[Pool[Any], Any, bool]]:
    # This (the main) thread's pooled connections, read without taking any lock: (pool,
    # connection, whether this thread was interrupted inside the driver with it).
    from django.db import connections

    own = []
    for wrapper in connections.all(initialized_only=True):
        held = getattr(wrapper, "dbpool_held", None)  # the pooled backends' wrappers
        if held is not None and (current := held()) is not None:
            own.append(current)
    return own


def _close_before_dying(own: list[tuple[Pool[Any], Any, bool]]) -> None:
    # On a thread of its own while the main thread waits in the signal handler, so it can
    # neither use nor give back its connections meanwhile: those it holds between two
    # statements go back here (rolled back, then closed with the pool); one it was using
    # inside the driver is cut off (PostgreSQL: its statement cancelled), as are those
    # other threads still hold after EXIT_DRAIN_SECONDS.
    for pool, connection, busy in own:
        if not busy:
            try:
                pool.release(connection)
            except Exception:
                logger.debug("giving back the main thread's connection failed", exc_info=True)
    _cut_off_the_main_thread()
    close_all_pools(timeout=EXIT_DRAIN_SECONDS)
    snapshots.forget_own_snapshot()  # dying of the signal skips atexit


def _watch_wakeups(read_fd: int) -> None:
    # The watcher thread. Python's own signal handler writes each caught signal's number to
    # the wakeup descriptor, whatever the main thread is doing; the Python-level handler
    # runs only once the main thread is back in Python. A main thread inside mysqlclient
    # (which retries an interrupted read) would not be back before its statement ends.
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in set(data):
            if (
                _previous.get(signum, _NOT_OURS) == signal.SIG_DFL
                and signal.getsignal(signum) is _handle  # not replaced since (gunicorn's)
                and not _dying.is_set()
            ):
                _unstick_main_thread()


def _unstick_main_thread() -> None:
    if _dying.wait(HANDLER_GRACE_SECONDS):
        return  # the handler runs: it does the rest
    # The main thread is inside a driver call: cut off the connections it holds, so that
    # the call fails, the main thread gets back to Python, and the handler runs.
    _cut_off_the_main_thread()


def _cut_off_the_main_thread() -> None:
    main = threading.main_thread()
    for pool in registry.pools().values():
        pool.cut_off(main)


class _Watcher:
    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.thread = threading.Thread(
            target=_watch_wakeups, args=(self.read_fd,), name="django_dbpool signals", daemon=True
        )


_watcher: _Watcher | None = None


def _start_watcher() -> None:
    # Only where a signal's default action (death) is underneath our handler, in the main
    # thread, and only if nobody else uses the wakeup descriptor (asyncio's loop does).
    global _watcher
    if _watcher is not None or signal.SIG_DFL not in _previous.values():
        return
    watcher = _Watcher()
    try:
        current = signal.set_wakeup_fd(watcher.write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        current = None
    if current != -1:
        if current is not None:
            signal.set_wakeup_fd(current)
        os.close(watcher.read_fd)
        os.close(watcher.write_fd)
        return
    _watcher = watcher
    watcher.thread.start()


def after_fork_in_child() -> None:
    """In a forked child (``lifecycle``): the watcher of the parent is left behind."""
    # The child inherits the wakeup descriptor but not the watcher thread: a signal the
    # child catches would wake the parent's watcher. Point the child's copies at /dev/null
    # (closing them would let a new file take the descriptor number), then start a watcher
    # of the child's own if it forked from its main thread.
    global _watcher
    watcher, _watcher = _watcher, None
    if watcher is None:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, watcher.write_fd)
        os.dup2(devnull, watcher.read_fd)
    finally:
        os.close(devnull)
    try:
        if signal.set_wakeup_fd(-1) != watcher.write_fd:
            return
    except ValueError:  # forked from another thread: the main thread's setting stays
        return
    _start_watcher()


def install_handlers() -> None:
    """Install the SIGTERM/SIGINT handlers, when this is the main thread (``lifecycle``).
    Idempotent."""
    if threading.current_thread() is threading.main_thread():
        foreign = []
        for signum in _SIGNALS:
            current = signal.getsignal(signum)
            if current is _handle:
                continue
            if current is None:
                # Installed outside Python: Python could not chain to it.
                foreign.append(signal.Signals(signum).name)
                continue
            _previous[signum] = current
            signal.signal(signum, _handle)
        _start_watcher()
        global _foreign_logged
        if foreign and not _foreign_logged:
            _foreign_logged = True
            logger.info(
                "%s: a handler installed outside Python (an embedding server such as uWSGI) "
                "is left in place, so django_dbpool's drain handlers are not installed for "
                "it. Drain the pools from the server's own shutdown hook: call "
                "django_dbpool.shutdown.close_all_pools() (uWSGI: uwsgi.atexit).",
                " and ".join(foreign),
            )
