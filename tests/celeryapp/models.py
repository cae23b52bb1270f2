from __future__ import annotations

from django.db import models


class TaskRun(models.Model):
    """One row per task run: which worker process ran it, on which database session."""

    task_id = models.CharField(max_length=64)
    worker_pid = models.IntegerField()
    session = models.BigIntegerField(null=True)
    finished = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"task {self.task_id} in process {self.worker_pid}"
