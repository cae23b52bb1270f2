"""Settings for the test suite: the real database named by DBPOOL_TEST_DATABASE.

DBPOOL_TEST_DATABASE is ``postgresql`` (default) or ``mysql``; the server's URL comes from
DBPOOL_TEST_POSTGRES_URL or DBPOOL_TEST_MYSQL_URL, which `make test` (through
tools/dbservers.py) sets. A missing URL is an error, never a skip.
"""

from __future__ import annotations

import os
import tempfile

import environ
from django.core.exceptions import ImproperlyConfigured

URL_VARIABLES = {
    "postgresql": "DBPOOL_TEST_POSTGRES_URL",
    "mysql": "DBPOOL_TEST_MYSQL_URL",
}

DATABASE_VENDOR = os.environ.get("DBPOOL_TEST_DATABASE", "postgresql")
if DATABASE_VENDOR not in URL_VARIABLES:
    raise ImproperlyConfigured(
        f"DBPOOL_TEST_DATABASE={DATABASE_VENDOR!r} is not one of {sorted(URL_VARIABLES)}."
    )
DATABASE_URL = os.environ.get(URL_VARIABLES[DATABASE_VENDOR], "")
if not DATABASE_URL:
    raise ImproperlyConfigured(
        f"{URL_VARIABLES[DATABASE_VENDOR]} is not set. Run the suite with `make test`, or "
        "`python tools/dbservers.py -- python -m pytest`, or point the variable at a server."
    )

ENGINES = {
    "postgresql": "django_dbpool.backends.postgresql",
    "mysql": "django_dbpool.backends.mysql",
}
_default = environ.Env.db_url_config(DATABASE_URL, engine=ENGINES[DATABASE_VENDOR])
# VALIDATE_AFTER is long so that statement counts do not depend on the machine's speed.
_default["POOL"] = {"MAX_SIZE": 4, "TIMEOUT": 10, "VALIDATE_AFTER": 60}
if DATABASE_VENDOR == "mysql":
    _default["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}

DATABASES = {
    "default": _default,
    # The same test database through a second, deliberately small pool.
    "small": {
        **_default,
        "OPTIONS": dict(_default.get("OPTIONS", {})),
        "POOL": {"MAX_SIZE": 2, "TIMEOUT": 0.5},
        "TEST": {"MIRROR": "default"},
    },
    # The same test database with a full session reset on every return, and a session time
    # zone of its own that the reset must not lose.
    "reset": {
        **_default,
        "OPTIONS": dict(_default.get("OPTIONS", {})),
        "POOL": {"MAX_SIZE": 2, "RESET": True},
        "TIME_ZONE": "Asia/Tokyo",
        "TEST": {"MIRROR": "default"},
    },
    # The same test database with transaction-scoped leases, two connections.
    "lease": {
        **_default,
        "OPTIONS": dict(_default.get("OPTIONS", {})),
        "POOL": {"MAX_SIZE": 2, "TIMEOUT": 10, "LEASE": "transaction"},
        "TEST": {"MIRROR": "default"},
    },
}

SECRET_KEY = "tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_dbpool",
    "django_prometheus",
    "example_project.bank",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django_dbpool.middleware.PoolUnavailableMiddleware",
    "django_dbpool.middleware.ConnectionTagMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"
SERVE_STATIC = False
STATIC_URL = "/static/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# This test run's own stats directory (removed at exit when empty).
DBPOOL_STATS_DIR = os.path.join(tempfile.gettempdir(), f"django_dbpool-tests-{os.getpid()}")
