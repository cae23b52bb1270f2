from __future__ import annotations

from django.db import models


class Item(models.Model):
    """The rows the views read (``migrate --run-syncdb`` creates the table)."""

    value = models.CharField(max_length=40)

    class Meta:
        app_label = "asgisite"

    def __str__(self) -> str:
        return self.value
