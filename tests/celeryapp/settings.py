"""Django settings of the Celery test worker (see tests/celeryapp/__init__.py)."""

from __future__ import annotations

import os

import django_dbpool

DATABASES = {"default": django_dbpool.parse_database_url(os.environ.get("DATABASE_URL"))}
_native_size = os.environ.get("DBPOOL_NATIVE_POOL_SIZE")
if _native_size:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 0,
        "max_size": int(_native_size),
    }

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_dbpool",
    "tests.celeryapp",
]

SECRET_KEY = "tests-only-not-a-secret"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DBPOOL_STATS_DIR = os.environ.get("DBPOOL_STATS_DIR")

CELERY_BROKER_URL = os.environ.get("DBPOOL_TEST_REDIS_URL", "")
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# One task at a time per process or thread: a warm shutdown finds no task prefetched and
# started later, and each child's share of the tasks is what the test counts.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 600

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_dbpool": {"handlers": ["console"], "level": "INFO"}},
}
