"""Settings of the ASGI test site, read from the environment.

DATABASE_URL        the database, in django-environ syntax: ``pgpool://`` or ``mysqlpool://``
                    with the pool options as ``pool_*`` query parameters
                    (``?pool_max_size=4&pool_lease=transaction``)
DBPOOL_STATS_DIR    where each process publishes its pool stats (the tests read them)
"""

from __future__ import annotations

import environ

import django_dbpool  # noqa: F401 - registers the pgpool:// and mysqlpool:// URL schemes

env = environ.Env()

SECRET_KEY = "asgi-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

DATABASES = {"default": env.db("DATABASE_URL")}

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_dbpool",
    "tests.asgisite",
]

MIDDLEWARE = [
    "django_dbpool.middleware.PoolUnavailableMiddleware",
    "django_dbpool.middleware.ConnectionTagMiddleware",
]

# PoolUnavailableMiddleware renders django_dbpool/unavailable.html.
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]

ROOT_URLCONF = "tests.asgisite.urls"
ASGI_APPLICATION = "tests.asgisite.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

DBPOOL_STATS_DIR = env.str("DBPOOL_STATS_DIR", default=None)
# Publish often: the tests wait for every process's figures after a load.
DBPOOL_STATS_INTERVAL = 0.2

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_dbpool": {"handlers": ["console"], "level": "INFO"},
        # Tracebacks of 500s, for the tests' failure output.
        "django.request": {"handlers": ["console"], "level": "ERROR"},
    },
}
