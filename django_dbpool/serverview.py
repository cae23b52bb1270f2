"""The database's own view of its connections, for ``poolstats --server`` and the admin page:
every host that talks to the database, grouped by tag and state."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from django.db import connections

__all__ = ["server_view"]

_APP = re.compile(r"/\*(?:[^*]*,)?app='([^']*)'")

_POSTGRES_GROUPS = """
SELECT coalesce(nullif(application_name, ''), '(none)') AS tag,
       coalesce(state, '(unknown)') AS state,
       count(*) AS connections,
       max(extract(epoch FROM now() - xact_start))
         FILTER (WHERE state LIKE 'idle in transaction%%') AS oldest_transaction_seconds
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
 GROUP BY 1, 2 ORDER BY 1, 2
"""
_POSTGRES_LIMITS = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')
"""
_MYSQL_SESSIONS = """
SELECT p.USER, p.COMMAND, p.INFO, t.trx_started IS NOT NULL,
       TIMESTAMPDIFF(SECOND, t.trx_started, NOW())
  FROM information_schema.PROCESSLIST p
  LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID
 WHERE p.ID <> CONNECTION_ID() AND p.COMMAND NOT IN ('Daemon', 'Binlog Dump')
"""


def server_view(alias: str) -> dict[str, Any]:
    """``{"vendor", "groups": [{"tag", "state", "connections",
    "oldest_transaction_seconds"}], "max_connections", "reserved", "in_use", "headroom"}``."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_POSTGRES_GROUPS)
            groups = [
                {
                    "tag": tag,
                    "state": state,
                    "connections": int(count),
                    "oldest_transaction_seconds": None if age is None else float(age),
                }
                for tag, state, count, age in cursor.fetchall()
            ]
            cursor.execute(_POSTGRES_LIMITS)
            max_connections, reserved, in_use = (int(v) for v in cursor.fetchone())
        else:
            cursor.execute(_MYSQL_SESSIONS)
            buckets: dict[tuple[str, str], dict[str, Any]] = {}
            for user, command, info, in_transaction, age in cursor.fetchall():
                match = _APP.search(info or "")
                tag = unquote(match.group(1)) if match else f"(user {user})"
                if command == "Sleep":
                    state = "idle in transaction" if in_transaction else "idle"
                else:
                    state = "active"
                group = buckets.setdefault(
                    (tag, state),
                    {
                        "tag": tag,
                        "state": state,
                        "connections": 0,
                        "oldest_transaction_seconds": None,
                    },
                )
                group["connections"] += 1
                if in_transaction and age is not None:
                    oldest = group["oldest_transaction_seconds"] or 0.0
                    group["oldest_transaction_seconds"] = max(oldest, float(age))
            groups = [buckets[key] for key in sorted(buckets)]
            cursor.execute(
                "SELECT @@max_connections, (SELECT COUNT(*) FROM information_schema.PROCESSLIST)"
            )
            max_connections, in_use = (int(v) for v in cursor.fetchone())
            reserved = 0  # MariaDB/MySQL keep one extra slot for SUPER beyond max_connections
    connection.close()
    return {
        "vendor": connection.vendor,
        "groups": groups,
        "max_connections": max_connections,
        "reserved": reserved,
        "in_use": in_use,
        "headroom": max_connections - reserved - in_use,
    }
