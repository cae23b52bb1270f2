"""Celery workers: the statements of each task are tagged ``task=<task name>``.

:func:`install`, called from ``AppConfig.ready()``, connects to Celery's ``task_prerun`` and
``task_postrun`` signals when Celery is installed (and does nothing otherwise). Inside a task
every statement carries ``/*app='...',task='<task name>'*/`` (plus the tags of an enclosing
context: an eager task run inside a request keeps the request's route), as a management
command's carry ``command='<name>'``; the pool's leak and orphan warnings name the task too.

Returning connections needs nothing from here: Celery's Django fixup calls ``close()`` on
every connection before and after each task, which gives a pooled connection back to the
process's pool (the session stays open for the next task), and the pools of a prefork child
are drained when it exits (``worker_process_shutdown``, see :mod:`django_dbpool.lifecycle`).
The fixup's read of each wrapper's ``connection`` in a new child does not count as user code
taking the driver connection (see :mod:`django_dbpool.backends.leasing`).
"""

from __future__ import annotations

from typing import Any

from .tagging import tag

__all__ = ["install"]

# Where a task's tag context is kept between its prerun and postrun signals: on the task's
# request, which is the execution's own (a retry run eagerly inside its task has another).
_CONTEXT = "_dbpool_tag_context"


def _task_started(sender: Any = None, task: Any = None, **kwargs: Any) -> None:
    task = task if task is not None else sender
    name = getattr(task, "name", None)
    request = getattr(task, "request", None)
    if not name or request is None:
        return
    context = tag(task=name)
    context.__enter__()
    try:
        setattr(request, _CONTEXT, context)
    except AttributeError:
        context.__exit__(None, None, None)


def _task_finished(sender: Any = None, task: Any = None, **kwargs: Any) -> None:
    task = task if task is not None else sender
    request = getattr(task, "request", None)
    context: tag | None = getattr(request, _CONTEXT, None)
    if context is None:
        return
    try:
        delattr(request, _CONTEXT)
        context.__exit__(None, None, None)
    except (AttributeError, ValueError):
        # ValueError: set in another context (a pool that runs prerun and postrun apart);
        # that context's tags end with it.
        pass


def install() -> None:
    """Tag the statements of Celery tasks with ``task=<task name>``, when Celery is
    installed. Idempotent."""
    try:
        from celery.signals import task_postrun, task_prerun
    except ImportError:
        return
    task_prerun.connect(_task_started, weak=False, dispatch_uid="django_dbpool.tagging")
    task_postrun.connect(_task_finished, weak=False, dispatch_uid="django_dbpool.tagging")
