"""Run modules of Django's own test suite against a database ENGINE.

Usage: python tests/django_suite.py {postgresql,mysql} [--engine MODULE] [MODULE ...]

The suite comes from the Django sdist matching the installed Django (downloaded once into
.venv/django-suite/). The server is the one in DBPOOL_TEST_POSTGRES_URL or
DBPOOL_TEST_MYSQL_URL, as tests/dbservers.py exports them. Runs with --parallel 2, which
forks worker processes after the test databases are created.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import django

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


def write_settings(directory: Path, vendor: str, engine: str) -> str:
    url = os.environ.get(URL_VARIABLES[vendor])
    if not url:
        raise SystemExit(f"{URL_VARIABLES[vendor]} is not set: run through tests/dbservers.py")
    databases = {
        "default": database(url, engine, "django_suite_default"),
        "other": database(url, engine, "django_suite_other"),
    }
    module = "dbpool_suite_settings"
    (directory / f"{module}.py").write_text(
        f"DATABASES = {databases!r}\n"
        "SECRET_KEY = 'django_tests_secret_key'\n"
        "PASSWORD_HASHERS = ['django.contrib.auth.hashers.MD5PasswordHasher']\n"
        "DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'\n"
        "USE_TZ = False\n"
    )
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vendor", choices=sorted(URL_VARIABLES))
    parser.add_argument("--engine", help="ENGINE module (default: the stock Django backend)")
    parser.add_argument("modules", nargs="*", default=DEFAULT_MODULES)
    args = parser.parse_args()
    engine = args.engine or STOCK_ENGINES[args.vendor]
    tests = suite_dir()
    module = write_settings(tests, args.vendor, engine)
    print(
        f"django_suite: Django {django.__version__} tests {' '.join(args.modules)} "
        f"with ENGINE {engine}",
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
