"""django_dbpool: a production-grade database connection pool for Django.

Importing this package registers the ``pgpool://`` and ``mysqlpool://`` URL schemes with
django-environ (when it is installed), so that ``env.db()`` picks the pooled ENGINEs.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0.dev0"

URL_SCHEMES = {
    "pgpool": "django_dbpool.backends.postgresql",
    "mysqlpool": "django_dbpool.backends.mysql",
}


def register_url_schemes() -> None:
    """Teach django-environ the ``pgpool://`` and ``mysqlpool://`` schemes. Idempotent;
    does nothing when django-environ is not installed."""
    try:
        import environ
    except ImportError:
        return
    environ.Env.DB_SCHEMES.update(URL_SCHEMES)
    # PostgreSQL URLs may name several hosts or a socket directory; django-environ parses
    # those only for schemes of its PostgreSQL family.
    if "pgpool" not in environ.Env.POSTGRES_FAMILY:
        environ.Env.POSTGRES_FAMILY.append("pgpool")


def close_all_pools(timeout: float | None = None) -> dict[str, object]:
    """Drain and close every pool of this process (see ``django_dbpool.shutdown``)."""
    from .shutdown import close_all_pools as close

    return dict(close(timeout))


def parse_database_url(url: str | None, *, setting: str = "DATABASE_URL") -> dict[str, Any]:
    """A ``DATABASES`` entry from a database URL, with errors that name ``setting`` and the
    fix and never quote the password (see ``django_dbpool.options.parse_database_url``)."""
    from .options import parse_database_url as parse

    return parse(url, setting=setting)


def __getattr__(name: str) -> Any:
    # pinned(), connection_scope() and SessionStatementError (django_dbpool.leases),
    # imported on first use: this package is imported by settings modules, before Django is
    # set up.
    if name in ("pinned", "Pinned", "SessionStatementError", "connection_scope"):
        from . import leases

        return getattr(leases, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_url_schemes()
