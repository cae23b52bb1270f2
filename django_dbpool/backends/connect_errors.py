"""The error a failed connect raises: where it tried, as whom, the cause, and what to check.

The hints name settings, never their values; the vendors' support objects pick one by the
driver's error (``backends/<vendor>/support.py``).
"""

from __future__ import annotations

from typing import Any

from ..pool.errors import ConnectFailed

__all__ = ["AUTH_HINT", "CONNECT_HINT", "NAME_HINT", "UNREACHABLE_HINT", "connect_failed"]

#: What to check when the vendor does not recognise the cause.
CONNECT_HINT = (
    "Check HOST, PORT, NAME, USER and PASSWORD, and that the server accepts connections "
    "from this host."
)
AUTH_HINT = (
    "Check PASSWORD and USER (in a database URL, percent-encode special characters of the "
    "password: urllib.parse.quote(password, safe=''))."
)
UNREACHABLE_HINT = (
    "Check HOST and PORT, and that the server is running and accepts connections from this host."
)
NAME_HINT = "Check NAME: the database must exist on the server."


def connect_failed(
    alias: str, settings_dict: dict[str, Any], default_port: int, cause: str, fix: str
) -> ConnectFailed:
    """The error for a failed connect of ``alias``: ``cause`` (one line, from the vendor)
    after where it tried and as whom, ``fix`` as the hint."""
    host = str(settings_dict["HOST"] or "")
    if not host:
        where = "the default local socket (HOST is empty)"
    elif host.startswith("/"):
        where = f"the local socket at {host}"
    else:
        where = f"{host}:{settings_dict['PORT'] or default_port or ''}"
    return ConnectFailed(
        f"DATABASES[{alias!r}]",
        f"cannot connect to {where} as USER {settings_dict['USER']!r}: {cause.rstrip('.')}",
        fix,
    )
