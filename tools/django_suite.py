"""Run modules of Django's own test suite against a database ENGINE.

Usage: python tools/django_suite.py {postgresql,mysql} [--engine MODULE] [--pgbouncer]
       [--lease {request,transaction}] [MODULE ...]

The suite comes from the Django sdist matching the installed Django (downloaded once into
.venv/django-suite/). The server is the one in DBPOOL_TEST_POSTGRES_URL or
DBPOOL_TEST_MYSQL_URL, as tools/dbservers.py exports them. Runs with --parallel 2, which
forks worker processes after the test databases are created.

``--pgbouncer`` (PostgreSQL) runs the tests through the PgBouncer in
DBPOOL_TEST_PGBOUNCER_URL (``tools/dbservers.py --pgbouncer``), in transaction pooling mode,
with the settings the README documents for it (``POOL["PGBOUNCER"] = "transaction"``,
``DISABLE_SERVER_SIDE_CURSORS``). The test databases are created, cloned and dropped on
PostgreSQL directly (see PgBouncerRunner); the tests in PGBOUNCER_EXCLUDED, which rely on
session state that transaction pooling does not keep, are skipped with the reason.

``--lease transaction`` sets ``POOL["LEASE"] = "transaction"`` on both aliases: the same
tests, with the connection given back after every statement and transaction.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import subprocess
import sys
import tarfile
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import django
from django.test.runner import DiscoverRunner
from django.test.utils import iter_test_cases  # type: ignore[attr-defined]

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".venv" / "django-suite"
DEFAULT_MODULES = [
    "backends",
    "transactions",
    "transaction_hooks",
    "select_for_update",
    "basic",
    "queries",
]
URL_VARIABLES = {"postgresql": "DBPOOL_TEST_POSTGRES_URL", "mysql": "DBPOOL_TEST_MYSQL_URL"}
PGBOUNCER_URL_VARIABLE = "DBPOOL_TEST_PGBOUNCER_URL"
_SERVER_SIDE_CURSORS = (
    "they assert that QuerySet.iterator() opens a server-side cursor, which the documented "
    "DISABLE_SERVER_SIDE_CURSORS = True turns off: outside a transaction it is a WITH HOLD "
    "cursor, which transaction pooling cannot keep"
)
# Django tests that cannot pass under transaction pooling with the documented settings,
# by test id, with the reason.
PGBOUNCER_EXCLUDED: dict[str, str] = {
    f"backends.postgresql.test_server_side_cursors.ServerSideCursorsPostgres.{name}": (
        _SERVER_SIDE_CURSORS
    )
    for name in (
        "test_server_side_binding",
        "test_server_side_cursor",
        "test_server_side_cursor_many_cursors",
        "test_values",
        "test_values_list",
        "test_values_list_fields_not_equal_to_names",
        "test_values_list_flat",
    )
}
STOCK_ENGINES = {
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
}


def suite_dir() -> Path:
    """Django's tests/ directory for the installed version, fetched on first use."""
    version = django.__version__
    target = CACHE / f"django-{version}" / "tests"
    if (target / "runtests.py").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"django=={version}",
            "-d",
            str(CACHE),
        ],
        check=True,
    )
    with tarfile.open(CACHE / f"django-{version}.tar.gz") as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(f"django-{version}/tests/")]
        archive.extractall(CACHE, members=members, filter="data")
    return target


def database(url: str, engine: str, name: str) -> dict[str, object]:
    parts = urlsplit(url)
    options = {key: values[0] for key, values in parse_qs(parts.query).items()}
    settings: dict[str, object] = {
        "ENGINE": engine,
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": options,
    }
    if engine.endswith("mysql"):
        settings["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    return settings


def required_url(variable: str) -> str:
    url = os.environ.get(variable)
    if not url:
        raise SystemExit(f"{variable} is not set: run through tools/dbservers.py")
    return url


def write_settings(
    directory: Path, vendor: str, engine: str, pgbouncer: bool = False, lease: str | None = None
) -> str:
    url = required_url(URL_VARIABLES[vendor])
    if pgbouncer:
        url, direct = required_url(PGBOUNCER_URL_VARIABLE), url
    databases = {
        "default": database(url, engine, "django_suite_default"),
        "other": database(url, engine, "django_suite_other"),
    }
    extra = ""
    if lease is not None:
        for config in databases.values():
            config["POOL"] = {"LEASE": lease}
    if pgbouncer:
        for config in databases.values():
            config["POOL"] = {**config.get("POOL", {}), "PGBOUNCER": "transaction"}
            config["DISABLE_SERVER_SIDE_CURSORS"] = True
        # Where PgBouncerRunner creates and drops the test databases.
        direct_settings = database(direct, engine, "")
        extra = (
            "TEST_RUNNER = 'tools.django_suite.PgBouncerRunner'\n"
            f"DBPOOL_SUITE_DIRECT = {_server_keys(direct_settings)!r}\n"
        )
    module = "dbpool_suite_settings"
    (directory / f"{module}.py").write_text(
        f"DATABASES = {databases!r}\n"
        "SECRET_KEY = 'django_tests_secret_key'\n"
        "PASSWORD_HASHERS = ['django.contrib.auth.hashers.MD5PasswordHasher']\n"
        "DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'\n"
        "USE_TZ = False\n" + extra
    )
    return module


_SERVER_KEYS = ("HOST", "PORT", "USER", "PASSWORD", "OPTIONS")


def _server_keys(config: dict[str, Any]) -> dict[str, Any]:
    return {key: config[key] for key in _SERVER_KEYS}


class PgBouncerRunner(DiscoverRunner):
    """Django's runner, with the test databases created, cloned and dropped on PostgreSQL
    directly, and the tests run through PgBouncer.

    Through PgBouncer, CREATE DATABASE ... TEMPLATE (the clones of --parallel) and DROP
    DATABASE fail: PgBouncer keeps idle server connections to the databases it served,
    and PostgreSQL refuses both while anyone is connected. So the runner swaps each
    alias's server settings for the direct ones while it sets up and tears down, and
    before tearing down ends the server sessions PgBouncer left behind.
    """

    def setup_databases(self, **kwargs: Any) -> Any:
        with _direct_connections():
            return super().setup_databases(**kwargs)

    def teardown_databases(self, old_config: Any, **kwargs: Any) -> None:
        with _direct_connections() as connections:
            # A maintenance connection (to the "postgres" database), never pooled.
            with connections["default"]._nodb_cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname LIKE %s AND pid <> pg_backend_pid()",
                    ["test\\_django\\_suite\\_%"],
                )
            super().teardown_databases(old_config, **kwargs)

    def build_suite(self, *args: Any, **kwargs: Any) -> Any:
        suite = super().build_suite(*args, **kwargs)
        for test in iter_test_cases(suite):
            reason = PGBOUNCER_EXCLUDED.get(test.id())
            if reason is not None:
                # On the class, so that forked workers see it too.
                name = test._testMethodName
                method = getattr(type(test), name)
                setattr(type(test), name, unittest.skip(f"PgBouncer: {reason}")(method))
        return suite


@contextlib.contextmanager
def _direct_connections() -> Iterator[Any]:
    from django.conf import settings
    from django.db import connections

    def swap(values: dict[str, dict[str, Any]]) -> None:
        for alias in connections:
            connection = connections[alias]
            connection.close()
            getattr(connection, "close_pool", lambda: None)()
            # Django's test setup renames NAME in this same dict: only the server changes.
            connection.settings_dict.update(values[alias])

    through_pgbouncer = {
        alias: _server_keys(connections[alias].settings_dict) for alias in connections
    }
    swap({alias: copy.deepcopy(settings.DBPOOL_SUITE_DIRECT) for alias in connections})
    try:
        yield connections
    finally:
        swap(through_pgbouncer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vendor", choices=sorted(URL_VARIABLES))
    parser.add_argument("--engine", help="ENGINE module (default: the stock Django backend)")
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help=f"run through the PgBouncer in {PGBOUNCER_URL_VARIABLE} (transaction pooling)",
    )
    parser.add_argument(
        "--lease",
        choices=("request", "transaction"),
        help="the POOL LEASE option of both aliases (default: not set, so request)",
    )
    parser.add_argument("modules", nargs="*", default=DEFAULT_MODULES)
    args = parser.parse_intermixed_args()
    if args.pgbouncer and args.vendor != "postgresql":
        parser.error("--pgbouncer needs the postgresql vendor")
    engine = args.engine or STOCK_ENGINES[args.vendor]
    tests = suite_dir()
    module = write_settings(tests, args.vendor, engine, args.pgbouncer, args.lease)
    print(
        f"django_suite: Django {django.__version__} tests {' '.join(args.modules)} "
        f"with ENGINE {engine}"
        + (f", LEASE {args.lease}" if args.lease else "")
        + (" through PgBouncer (transaction pooling)" if args.pgbouncer else ""),
        flush=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tests)])}
    command = [
        sys.executable,
        "runtests.py",
        f"--settings={module}",
        "--parallel=2",
        "--noinput",
        "-v",
        "1",
        *args.modules,
    ]
    return subprocess.run(command, cwd=tests, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
