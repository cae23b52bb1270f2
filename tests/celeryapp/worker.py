"""The Celery application: ``celery -A tests.celeryapp.worker worker``.

With ``DBPOOL_PARENT_QUERY`` set, the worker's main process runs a query once the worker is
ready (as a worker that records itself in a table would), so that the prefork children it
forks later inherit a Django connection that has been used.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.celeryapp.settings")

app = Celery("celeryapp", include=["tests.celeryapp.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")


@worker_ready.connect
def _query_in_the_main_process(**kwargs: Any) -> None:
    if not os.environ.get("DBPOOL_PARENT_QUERY"):
        return
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    print(f"parent query done in {os.getpid()}", flush=True)
