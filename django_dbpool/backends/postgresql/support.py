"""PostgreSQL's support object (see ``django_dbpool.backends.support``). Does not import
psycopg: asked about an error, it looks at the error's module first."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.core import checks

from ..connect_errors import AUTH_HINT, CONNECT_HINT, NAME_HINT, UNREACHABLE_HINT
from ..support import VendorSupport

__all__ = ["DEAD_SQLSTATE_PREFIXES", "PostgresSupport", "support"]

#: SQLSTATEs after which the session is gone: connection exceptions (class 08), and
#: admin_shutdown, crash_shutdown, cannot_connect_now.
DEAD_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03")

# libpq's wording around the cause of a failed connect, which our message says itself.
_LIBPQ_PREFIXES = re.compile(
    r"connection (?:failed|is bad): "
    r'|connection to server (?:at "[^"]*", port \d+|on socket "[^"]*") failed: '
    r"|FATAL:\s+"
)
_TLS_HINT = (
    "The server's certificate could not be verified: set OPTIONS['sslrootcert'] "
    "(sslrootcert= in a database URL) to the CA certificate that signed it (a self-signed "
    "server's own certificate), and HOST to a name the certificate is issued for."
)
# (words of libpq's or the server's message, what to check): the first match wins.
_CONNECT_HINTS = (
    # PgBouncer checking a SCRAM password says "SASL authentication failed".
    (
        ("password authentication failed", "no password supplied", "sasl authentication failed"),
        AUTH_HINT,
    ),
    (
        ("no pg_hba.conf entry",),
        "The server's pg_hba.conf admits no such connection: check USER, NAME and sslmode.",
    ),
    (("certificate", "ssl"), _TLS_HINT),
    (('role "',), "Check USER: the role must exist on the server."),
    (('database "',), NAME_HINT),
    (
        (
            "connection refused",
            "no such file or directory",
            "could not translate host name",
            "timeout expired",
            "network is unreachable",
            "no route to host",
        ),
        UNREACHABLE_HINT,
    ),
)

_GROUPS = """
SELECT coalesce(nullif(application_name, ''), '(none)') AS tag,
       coalesce(state, '(unknown)') AS state,
       count(*) AS connections,
       max(extract(epoch FROM now() - xact_start))
         FILTER (WHERE state LIKE 'idle in transaction%%') AS oldest_transaction_seconds
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
 GROUP BY 1, 2 ORDER BY 1, 2
"""
_LIMITS = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')
"""
_UNVERIFIED_SSLMODES = frozenset({"disable", "allow", "prefer", "require"})


class PostgresSupport(VendorSupport):
    vendor = "postgresql"
    default_port = 5432
    supports_pgbouncer = True

    def is_driver_error(self, error: BaseException) -> bool:
        module = type(error).__module__
        return module == "psycopg" or module.startswith("psycopg.")

    def connection_lost(self, error: BaseException, connection: Any = None) -> bool:
        # A SQLSTATE of the list; or an OperationalError without one ("server closed the
        # connection unexpectedly", "consuming input failed") that left the connection
        # closed or broken.
        if not self.is_driver_error(error):
            return False
        import psycopg

        if not isinstance(error, psycopg.Error):
            return False
        sqlstate: str | None = error.sqlstate
        if sqlstate:
            return sqlstate.startswith(DEAD_SQLSTATE_PREFIXES)
        return (
            isinstance(error, psycopg.OperationalError)
            and connection is not None
            and bool(getattr(connection, "closed", False) or getattr(connection, "broken", False))
        )

    def explain_connect_error(self, error: BaseException) -> tuple[str, str]:
        # libpq reports one line per address tried, each with an indented tip: the first
        # address's cause says enough.
        lines = _LIBPQ_PREFIXES.sub("", str(error)).strip().splitlines() or [""]
        cause = lines[0].strip()
        lowered = cause.lower()
        for words, hint in _CONNECT_HINTS:
            if any(word in lowered for word in words):
                return cause, hint
        return cause, CONNECT_HINT

    def connection_limit(self, cursor: Any) -> int:
        cursor.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
        )
        return int(cursor.fetchone()[0])

    def server_view(self, cursor: Any) -> dict[str, Any]:
        cursor.execute(_GROUPS)
        groups = [
            {
                "tag": tag,
                "state": state,
                "connections": int(count),
                "oldest_transaction_seconds": None if age is None else float(age),
            }
            for tag, state, count, age in cursor.fetchall()
        ]
        cursor.execute(_LIMITS)
        max_connections, reserved, in_use = (int(v) for v in cursor.fetchone())
        return {
            "groups": groups,
            "max_connections": max_connections,
            "reserved": reserved,
            "in_use": in_use,
        }

    def unverified_tls(self, alias: str, options: Mapping[str, Any]) -> checks.Warning | None:
        sslmode = str(options.get("sslmode", "prefer"))
        if sslmode not in _UNVERIFIED_SSLMODES:
            return None
        return checks.Warning(
            f"DATABASES[{alias!r}] connects with sslmode={sslmode!r}, which does not verify "
            "the server: a man in the middle can read and change every query.",
            hint="Set OPTIONS={'sslmode': 'verify-full', 'sslrootcert': '/path/to/ca.pem'} "
            "(sslrootcert: the CA bundle that signed the server's certificate, a private CA "
            "included).",
            id="django_dbpool.W001",
        )


support = PostgresSupport()
