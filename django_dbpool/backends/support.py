"""What the project knows about each database product, outside its connection wrapper.

Each database package (``backends/postgresql``, ``backends/mysql``) has a ``support`` module
with one :class:`VendorSupport` object: the errors that mean a session is gone, the hints
for a failed connect, the server's connection limit and its view of its sessions, the
driver's TLS options and the deployment check for them. The rest of the project (retry,
checks, the server view, the dashboard) asks that object, found here by vendor or alias,
instead of switching on the vendor itself. A support module never imports its driver: code
that asks about an error of a driver nobody installed must not fail.

A new database: a package under ``backends/`` with its wrapper and its ``support`` module,
and a line in :data:`ENGINES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from django.core import checks

__all__ = ["ENGINES", "VendorSupport", "all_supports", "support_for_alias", "support_for_vendor"]

#: The pooled ENGINE of each vendor (Django's ``connection.vendor``).
ENGINES = {
    "postgresql": "django_dbpool.backends.postgresql",
    "mysql": "django_dbpool.backends.mysql",
}


class VendorSupport:
    """One database product's knowledge; subclasses fill in every method."""

    #: Django's name for the product (``connection.vendor``).
    vendor = ""
    #: The server's port when ``PORT`` is empty.
    default_port = 0
    #: Whether the ``PGBOUNCER`` option applies.
    supports_pgbouncer = False
    #: The fix when :meth:`driver_options` refuses ``OPTIONS`` (system check E007).
    driver_options_fix = ""

    def is_driver_error(self, error: BaseException) -> bool:
        """Whether ``error`` comes from this product's driver (without importing it)."""
        raise NotImplementedError

    def connection_lost(self, error: BaseException, connection: Any = None) -> bool:
        """Whether ``error`` (one exception, not its causes) means the session is gone;
        ``connection``, the driver connection it came from, when known. Local state only."""
        raise NotImplementedError

    def explain_connect_error(self, error: BaseException) -> tuple[str, str]:
        """``(cause, fix)`` for a driver error raised while connecting: the cause on one
        line, the fix naming the settings to check; neither contains the password."""
        raise NotImplementedError

    def connection_limit(self, cursor: Any) -> int:
        """Sessions the server admits for ordinary users (``max_connections`` less the
        slots it reserves), read through ``cursor``."""
        raise NotImplementedError

    def server_view(self, cursor: Any) -> dict[str, Any]:
        """The server's own view of its sessions, read through ``cursor``: ``{"groups":
        [{"tag", "state", "connections", "oldest_transaction_seconds"}], "max_connections",
        "reserved", "in_use"}``."""
        raise NotImplementedError

    def driver_options(self, alias: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` (an alias's ``OPTIONS``, or connection parameters built from them) as
        the driver takes them; ``ImproperlyConfigured`` naming the keys if they conflict."""
        return dict(options)

    def unverified_tls(self, alias: str, options: Mapping[str, Any]) -> checks.Warning | None:
        """The deployment warning for ``OPTIONS`` that do not verify the server over TLS,
        or None."""
        raise NotImplementedError


def support_for_vendor(vendor: str) -> VendorSupport | None:
    """The support object of Django's ``vendor`` (``connection.vendor``), None for a product
    the project does not pool."""
    engine = ENGINES.get(vendor)
    if engine is None:
        return None
    support: VendorSupport = import_module(f"{engine}.support").support
    return support


def support_for_alias(alias: str) -> VendorSupport | None:
    """The support object of ``alias``'s ENGINE in ``settings.DATABASES`` (ours, or Django's
    own for the same product), without creating a connection; None for an alias that is not
    there or a product the project does not pool."""
    from django.conf import settings

    engine = str(settings.DATABASES.get(alias, {}).get("ENGINE", ""))
    return support_for_vendor(engine.rsplit(".", 1)[-1])


def all_supports() -> list[VendorSupport]:
    """Every product's support object."""
    return [support for vendor in ENGINES if (support := support_for_vendor(vendor))]
