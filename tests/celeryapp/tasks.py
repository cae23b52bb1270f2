"""Tasks that use the ORM, ``atomic()`` and raw cursors, and report the database sessions
they ran on."""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import shared_task
from django.db import connection, transaction

from tests.celeryapp.models import TaskRun

SESSION_SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
SLEEP_SQL = {"postgresql": "SELECT pg_sleep(%s)", "mysql": "SELECT SLEEP(%s)"}


def _session(cursor: Any) -> int:
    cursor.execute(SESSION_SQL[connection.vendor])
    return int(cursor.fetchone()[0])


@shared_task(bind=True)
def orm_work(self: Any, sleep: float = 0.0) -> dict[str, Any]:
    """Writes a row in a transaction, reads the session id in it and with a raw cursor outside
    it (sleeping there in a statement for ``sleep`` seconds), then updates and reads the row
    through the ORM. Returns the process, thread and sessions it used."""
    with transaction.atomic():
        run = TaskRun.objects.create(task_id=self.request.id, worker_pid=os.getpid())
        with connection.cursor() as cursor:
            in_transaction = _session(cursor)
    with connection.cursor() as cursor:
        outside = _session(cursor)
        if sleep:
            cursor.execute(SLEEP_SQL[connection.vendor], [sleep])
    TaskRun.objects.filter(pk=run.pk).update(session=outside, finished=True)
    finished = TaskRun.objects.filter(pk=run.pk, finished=True).exists()
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "sessions": sorted({in_transaction, outside}),
        "finished": finished,
    }
