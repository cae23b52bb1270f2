"""MySQL's and MariaDB's support object (see ``django_dbpool.backends.support``). Does not
import mysqlclient: asked about an error, it looks at the error's module first.

Also here: the flat TLS keys a database URL can carry (``?ssl_ca=...``), folded into the
``ssl`` dict mysqlclient takes (:meth:`MySQLSupport.driver_options`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from ..connect_errors import AUTH_HINT, CONNECT_HINT, NAME_HINT, UNREACHABLE_HINT
from ..support import VendorSupport

__all__ = ["DEAD_ERRORS", "TLS_KEYS", "MySQLSupport", "support"]

#: Client and server error codes after which the session is gone: server has gone away
#: (2006), lost connection during a query (2013) or with extended information (2055), server
#: shutdown in progress (1053), connection killed (1927, MariaDB), disconnected for
#: inactivity (4031, MySQL 8), TLS connection error (2026: a TLS session cut off).
DEAD_ERRORS = frozenset({2006, 2013, 2055, 1053, 1927, 4031, 2026})

# What to check after a failed connect, by error code.
_CONNECT_HINTS = {
    1045: AUTH_HINT,  # access denied
    1044: "Check NAME and USER: the user may not use this database.",
    1049: NAME_HINT,  # unknown database
    1130: "The server admits USER only from other hosts: check USER, or the user's grants.",
    2002: UNREACHABLE_HINT,  # no server at the socket or port
    2003: UNREACHABLE_HINT,
    2005: UNREACHABLE_HINT,  # unknown host
    # Lost at the handshake: the server accepted the connection, then said nothing within
    # CONNECT_TIMEOUT (a hung server or proxy) or closed it.
    2013: UNREACHABLE_HINT,
    2026: "TLS failed: check OPTIONS['ssl_mode'] and OPTIONS['ssl'] ({'ca': the CA "
    "certificate that signed the server's certificate}; ssl_ca= in a database URL), and that "
    "the server has TLS on.",
}

#: The keys of mysqlclient's ``ssl`` dict that may also be written flat in ``OPTIONS``, as
#: ``ssl_ca`` (or MySQL's own spelling, ``ssl-ca``): a database URL's query string
#: (``?ssl_mode=VERIFY_IDENTITY&ssl_ca=/path/to/ca.pem``) cannot hold a dict.
TLS_KEYS = ("ca", "capath", "cert", "key", "cipher")
_VERIFIED_SSL_MODES = frozenset({"VERIFY_CA", "VERIFY_IDENTITY"})

_APP = re.compile(r"/\*(?:[^*]*,)?app='([^']*)'")
_SESSIONS = """
SELECT p.USER, p.COMMAND, p.INFO, t.trx_started IS NOT NULL,
       TIMESTAMPDIFF(SECOND, t.trx_started, NOW())
  FROM information_schema.PROCESSLIST p
  LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID
 WHERE p.ID <> CONNECTION_ID() AND p.COMMAND NOT IN ('Daemon', 'Binlog Dump')
"""


class MySQLSupport(VendorSupport):
    vendor = "mysql"
    default_port = 3306
    driver_options_fix = (
        "Give each TLS file once: in OPTIONS['ssl'] = {'ca': ...} or as OPTIONS['ssl_ca'] "
        "(the ssl_ca parameter of DATABASE_URL)."
    )

    def is_driver_error(self, error: BaseException) -> bool:
        module = type(error).__module__
        return module == "MySQLdb" or module.startswith("MySQLdb.")

    def connection_lost(self, error: BaseException, connection: Any = None) -> bool:
        if not self.is_driver_error(error):
            return False
        return self.dead_error(error)

    def dead_error(self, error: BaseException) -> bool:
        """Whether ``error``'s code is one of :data:`DEAD_ERRORS` (any error type)."""
        args: tuple[Any, ...] = getattr(error, "args", ())
        return bool(args) and args[0] in DEAD_ERRORS

    def explain_connect_error(self, error: BaseException) -> tuple[str, str]:
        args: tuple[Any, ...] = getattr(error, "args", ())
        if len(args) != 2 or not isinstance(args[0], int):
            return " ".join(str(error).split()), CONNECT_HINT
        cause = f"{' '.join(str(args[1]).split()).rstrip('.')} (error {args[0]})"
        return cause, _CONNECT_HINTS.get(args[0], CONNECT_HINT)

    def connection_limit(self, cursor: Any) -> int:
        # MariaDB and MySQL keep one extra connection for SUPER users beyond max_connections.
        cursor.execute("SELECT @@max_connections")
        return int(cursor.fetchone()[0])

    def server_view(self, cursor: Any) -> dict[str, Any]:
        cursor.execute(_SESSIONS)
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
                {"tag": tag, "state": state, "connections": 0, "oldest_transaction_seconds": None},
            )
            group["connections"] += 1
            if in_transaction and age is not None:
                oldest = group["oldest_transaction_seconds"] or 0.0
                group["oldest_transaction_seconds"] = max(oldest, float(age))
        cursor.execute(
            "SELECT @@max_connections, (SELECT COUNT(*) FROM information_schema.PROCESSLIST)"
        )
        max_connections, in_use = (int(v) for v in cursor.fetchone())
        return {
            "groups": [buckets[key] for key in sorted(buckets)],
            "max_connections": max_connections,
            "reserved": 0,  # the extra slot for SUPER is beyond max_connections
            "in_use": in_use,
        }

    def driver_options(self, alias: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` with the flat TLS keys (``ssl_ca``, ``ssl-ca``, ...) moved into the
        ``ssl`` dict mysqlclient takes; ``ssl_mode`` stays as it is. ``ImproperlyConfigured``
        names the keys when the same file is given twice or ``ssl`` is not a dict."""
        flat: dict[str, tuple[str, Any]] = {}
        rest: dict[str, Any] = {}
        for key, value in options.items():
            name = _tls_name(key)
            if name is None:
                rest[key] = value
                continue
            if name in flat:
                raise ImproperlyConfigured(
                    f"DATABASES[{alias!r}] sets the TLS option {name} twice: as "
                    f"OPTIONS[{flat[name][0]!r}] and as OPTIONS[{key!r}]. Keep one of them."
                )
            flat[name] = (key, value)
        if not flat:
            return dict(options)
        ssl = rest.get("ssl") or {}
        if not isinstance(ssl, Mapping):
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]: OPTIONS['ssl'] must be a dict such as "
                f"{{'ca': '/path/to/ca.pem'}}, not {type(ssl).__name__} {ssl!r}."
            )
        merged = dict(ssl)
        for name, (key, value) in flat.items():
            if name in merged:
                raise ImproperlyConfigured(
                    f"DATABASES[{alias!r}] sets the TLS option {name} twice: in "
                    f"OPTIONS['ssl'] ({merged[name]!r}) and as OPTIONS[{key!r}] ({value!r}). "
                    "Keep one of them."
                )
            merged[name] = value
        rest["ssl"] = merged
        return rest

    def unverified_tls(self, alias: str, options: Mapping[str, Any]) -> checks.Warning | None:
        # ssl_ca from a database URL counts as ssl={"ca": ...}; a file given twice is the
        # configuration check's E007.
        with contextlib.suppress(ImproperlyConfigured):
            options = self.driver_options(alias, options)
        ssl_mode = str(options.get("ssl_mode", "")).upper()
        ssl = options.get("ssl") or {}
        if ssl_mode in _VERIFIED_SSL_MODES or (isinstance(ssl, dict) and ssl.get("ca")):
            return None
        return checks.Warning(
            f"DATABASES[{alias!r}] connects to MySQL/MariaDB without TLS that verifies the server.",
            hint="Set OPTIONS={'ssl_mode': 'VERIFY_IDENTITY', 'ssl': {'ca': "
            "'/path/to/ca.pem'}} (ca: the CA bundle that signed the server's certificate, a "
            "private CA included); in a database URL, "
            "?ssl_mode=VERIFY_IDENTITY&ssl_ca=/path/to/ca.pem.",
            id="django_dbpool.W002",
        )


def _tls_name(key: object) -> str | None:
    if not isinstance(key, str) or key[:4] not in ("ssl_", "ssl-"):
        return None
    name = key[4:]
    return name if name in TLS_KEYS else None


support = MySQLSupport()
