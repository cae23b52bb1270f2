"""Settings for the example project, read from the environment with safe local defaults.

DATABASE_URL            the database, in django-environ syntax; pgpool:// and mysqlpool://
                        select django_dbpool's pooled ENGINEs (pool options as pool_*
                        query parameters); default: a local PostgreSQL
DJANGO_DEBUG            off unless set to a true value
DJANGO_SECRET_KEY       required unless DJANGO_DEBUG is on
DJANGO_ALLOWED_HOSTS    comma-separated; default 127.0.0.1,localhost
DJANGO_STATIC_ROOT      where collectstatic writes; default example_project/staticfiles
DJANGO_SERVE_STATIC     serve STATIC_ROOT from Django itself (the demo does; a real site
                        puts a web server or CDN in front instead)
DBPOOL_STATS_DIR        where processes publish pool stats (default: a per-project
                        directory under the system temp directory)
"""

from __future__ import annotations

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

import django_dbpool  # noqa: F401 - registers the pgpool:// and mysqlpool:// URL schemes

BASE_DIR = Path(__file__).resolve().parent

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it to a long random string, "
            "or set DJANGO_DEBUG=1 for local development."
        )
    SECRET_KEY = "insecure-local-development-key"
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

DATABASES = {
    "default": env.db("DATABASE_URL", default="pgpool:///dbpool_example"),
}

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
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=BASE_DIR / "staticfiles")
SERVE_STATIC = env.bool("DJANGO_SERVE_STATIC", default=False)

# Where pooled processes publish their stats for poolstats, /metrics and the admin page.
DBPOOL_STATS_DIR = env.str("DBPOOL_STATS_DIR", default=None)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_dbpool": {"handlers": ["console"], "level": "INFO"}},
}
