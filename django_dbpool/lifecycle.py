"""The process's lifecycle: every fork, exit and signal hook of the project, in one place,
each calling the subsystems in an explicit order.

- **fork**, in the child (registered when this module is imported, which the backends do):
  the pool core's own hook runs first (``django_dbpool.pool`` registers it as it is
  imported, before this module registers its own): each pool forgets its inherited
  connections. Then, in this order: the registry (a free lock, a new fork generation), the
  server-close watcher (its duplicate sockets), the Django wrappers (a connection checked out
  from the parent's pool is dropped), the stats publisher, the signal watcher.
- **exit** (``atexit``, registered by :func:`install`): the pools drain, then this process's
  stats snapshot is removed. Celery's ``worker_process_shutdown`` drains a prefork child's
  pools, when Celery is installed.
- **signals**: the SIGTERM/SIGINT handlers of :mod:`django_dbpool.shutdown`, installed by
  :func:`install` unless ``handlers`` is False.

``AppConfig.ready()`` calls :func:`install`.
"""

from __future__ import annotations

import atexit
import os

from . import registry, shutdown, snapshots
from .backends import watch

__all__ = ["install"]


def _after_fork_in_child() -> None:
    registry.after_fork_in_child()
    watch.after_fork_in_child()
    _forget_inherited_connections()
    snapshots.after_fork_in_child()
    shutdown.after_fork_in_child()


def _forget_inherited_connections() -> None:
    # In the child's only thread, the one that forked: its Django connections may hold
    # connections checked out from the parent's pools.
    try:
        from django.db import connections

        wrappers = connections.all(initialized_only=True)
    except Exception:  # Django not configured: no wrapper exists
        return
    for wrapper in wrappers:
        forget = getattr(wrapper, "dbpool_forget_inherited", None)  # the pooled backends'
        if forget is not None:
            forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    shutdown.drain_at_exit()
    snapshots.forget_own_snapshot()


def _celery_worker_process_shutdown(**kwargs: object) -> None:
    shutdown.close_all_pools()


def install(handlers: bool = True) -> None:
    """Register the exit hooks, and the signal handlers when ``handlers``. Idempotent."""
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)
    if handlers:
        shutdown.install_handlers()
    try:
        from celery.signals import worker_process_shutdown
    except ImportError:
        return
    worker_process_shutdown.connect(
        _celery_worker_process_shutdown, weak=False, dispatch_uid="django_dbpool"
    )
