"""Settings of the benchmark site; the contender and the database come from the environment.

- ``BENCH_DATABASE_URL``: a plain ``postgres://`` or ``mysql://`` URL (django-environ syntax).
- ``BENCH_CONTENDER``: how Django gets its connections, one of :data:`CONTENDERS`.
- ``BENCH_POOL_SIZE``: connections per process for every pool (default 4).
- ``BENCH_MIN_SIZE``: connections each pool opens at the start (default: the pool size).
- ``BENCH_LEASE``: django_dbpool's ``LEASE`` (``request`` or ``transaction``); unset, its
  default.
- ``BENCH_BOUND_SCOPE``: how long the "bound" contender keeps a place, ``request`` (default)
  or ``statement`` (see ``benchsite.bounded``).
- ``BENCH_ALIASES``: more django_dbpool aliases on the same database, for views that take
  ``?using=``: ``alias:LEASE:MAX_SIZE`` separated by commas (``leases.py``'s CPU scenario).

Everything else is the same for every contender: no middleware that touches the database,
no sessions, no templates.
"""

from __future__ import annotations

import os
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

#: What each contender means; also the order runs alternate in.
CONTENDERS = {
    "connect": "connect per request (CONN_MAX_AGE=0)",
    "persistent": "persistent connections (CONN_MAX_AGE=None)",
    "native": "Django's native pool (OPTIONS['pool'])",
    "dbcp": "django-db-connection-pool",
    "dbpool": "django_dbpool",
    "bound": "persistent connections, POOL_SIZE threads at a time (benchsite.bounded)",
    "realpool": "django-pg-real-pool (Django's native pool, released after each query)",
}

CONTENDER = os.environ.get("BENCH_CONTENDER", "dbpool")
if CONTENDER not in CONTENDERS:
    raise ImproperlyConfigured(f"BENCH_CONTENDER={CONTENDER!r} is not one of {list(CONTENDERS)}.")
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "4"))
MIN_SIZE = int(os.environ.get("BENCH_MIN_SIZE", str(POOL_SIZE)))
LEASE = os.environ.get("BENCH_LEASE", "")
BOUND_SCOPE = os.environ.get("BENCH_BOUND_SCOPE", "request")
if BOUND_SCOPE not in ("request", "statement"):
    raise ImproperlyConfigured(
        f"BENCH_BOUND_SCOPE={BOUND_SCOPE!r} is not one of ['request', 'statement']."
    )

SECRET_KEY = "benchmark-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "benchsite.urls"
WSGI_APPLICATION = "benchsite.wsgi.application"
ASGI_APPLICATION = "benchsite.asgi.application"
INSTALLED_APPS = ["benchsite"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
USE_TZ = True
TIME_ZONE = "UTC"
LOGGING_CONFIG = None


def _database(url: str, contender: str) -> dict[str, Any]:
    config: dict[str, Any] = environ.Env.db_url_config(url)
    vendor = "postgresql" if "postgresql" in config["ENGINE"] else "mysql"
    config["OPTIONS"] = dict(config.get("OPTIONS") or {})
    config["CONN_MAX_AGE"] = 0
    if contender == "persistent":
        config["CONN_MAX_AGE"] = None
    elif contender == "native":
        if vendor != "postgresql":
            raise ImproperlyConfigured("Django's native pool exists for PostgreSQL only.")
        config["OPTIONS"]["pool"] = {"min_size": MIN_SIZE, "max_size": POOL_SIZE}
    elif contender == "realpool":
        if vendor != "postgresql":
            raise ImproperlyConfigured("django-pg-real-pool exists for PostgreSQL only.")
        config["ENGINE"] = "django_pg_real_pool"
        config["OPTIONS"]["pool"] = {"min_size": MIN_SIZE, "max_size": POOL_SIZE}
    elif contender == "dbcp":
        config["ENGINE"] = f"dj_db_conn_pool.backends.{vendor}"
        config["POOL_OPTIONS"] = {"POOL_SIZE": POOL_SIZE, "MAX_OVERFLOW": 0}
    elif contender == "bound":
        config["CONN_MAX_AGE"] = None
        config["ENGINE"] = f"benchsite.bounded.{vendor}"
    elif contender == "dbpool":
        config["ENGINE"] = f"django_dbpool.backends.{vendor}"
        config["POOL"] = {"MIN_SIZE": MIN_SIZE, "MAX_SIZE": POOL_SIZE}
        if LEASE:
            config["POOL"]["LEASE"] = LEASE
    return config


DATABASES = {"default": _database(os.environ["BENCH_DATABASE_URL"], CONTENDER)}
for _spec in filter(None, os.environ.get("BENCH_ALIASES", "").split(",")):
    _alias, _lease, _size = _spec.split(":")
    DATABASES[_alias] = _database(os.environ["BENCH_DATABASE_URL"], "dbpool")
    DATABASES[_alias]["POOL"] = {"MIN_SIZE": int(_size), "MAX_SIZE": int(_size), "LEASE": _lease}
if CONTENDER == "dbpool":
    INSTALLED_APPS.append("django_dbpool")
    # Each benchmark run is its own throwaway directory of per-process stats.
    DBPOOL_STATS_DIR = os.environ.get("BENCH_STATS_DIR") or None
