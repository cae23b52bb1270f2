"""One model, with no table: it gives the admin dashboard an entry in the admin index and
a permission to grant (``django_dbpool.view_connectionpool``)."""

from __future__ import annotations

from django.db import models


class ConnectionPool(models.Model):
    """Not stored anywhere: the admin shows the pools of every process on this host, read
    from their published snapshots (see :mod:`django_dbpool.snapshots`)."""

    class Meta:
        managed = False  # no table; migrations create nothing but the permission
        verbose_name = "connection pool"
        verbose_name_plural = "connection pools"
        # The dashboard is read-only: add/change/delete would be permissions for nothing.
        default_permissions = ("view",)

    def __str__(self) -> str:
        return "connection pools"
