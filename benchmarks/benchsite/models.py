from django.db import models


class Item(models.Model):
    """A row of ``bench_item``, created by the benchmark before gunicorn starts."""

    value = models.CharField(max_length=64)

    class Meta:
        managed = False
        db_table = "bench_item"

    def __str__(self) -> str:
        return self.value
