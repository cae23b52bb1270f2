"""The database's own view of its connections, for ``poolstats --server`` and the admin page:
every host that talks to the database, grouped by tag and state (the queries are the
vendor's, in ``backends/<vendor>/support.py``)."""

from __future__ import annotations

from typing import Any

from django.db import connections

from .backends.support import support_for_vendor

__all__ = ["server_view"]


def server_view(alias: str) -> dict[str, Any]:
    """``{"vendor", "groups": [{"tag", "state", "connections",
    "oldest_transaction_seconds"}], "max_connections", "reserved", "in_use", "headroom"}``."""
    connection = connections[alias]
    support = support_for_vendor(connection.vendor)
    if support is None:
        raise ValueError(f"DATABASES[{alias!r}]: no server view for {connection.vendor}.")
    with connection.cursor() as cursor:
        view = support.server_view(cursor)
    connection.close()
    headroom = view["max_connections"] - view["reserved"] - view["in_use"]
    return {"vendor": connection.vendor, **view, "headroom": headroom}
