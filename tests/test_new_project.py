"""Misconfigurations as a new user meets them: a fresh ``django-admin startproject`` set up the
way the README says (``django_dbpool`` in ``INSTALLED_APPS``, ``DATABASES`` from a
``DATABASE_URL`` read by django-environ, the health URLs), run in real processes against this
run's database server: ``manage.py check``, ``runserver`` and gunicorn.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings

from django_dbpool.backends.connect_errors import AUTH_HINT
from tests.processes import wait_until_serving
from tools.dbservers import MYSQL_URL_VAR, POSTGRES_URL_VAR, free_port
from tools.processes import stop_gracefully

WRONG_PASSWORD = "Wrong-Pa55word-5e1d7b"

# What the README's quick start adds to the generated settings.py and urls.py.
SETTINGS = """
import environ

import django_dbpool  # registers pgpool:// and mysqlpool://

INSTALLED_APPS += ["django_dbpool"]
DATABASES = {"default": environ.Env().db("DATABASE_URL")}
"""
URLS = """
from django.urls import include

urlpatterns += [path("health/", include("django_dbpool.urls"))]
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("new-project")
    # What django-admin runs, with this virtualenv's Django.
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(root)],
        check=True,
        timeout=120,
    )
    for name, addition in (("settings.py", SETTINGS), ("urls.py", URLS)):
        path = root / "mysite" / name
        path.write_text(path.read_text() + addition)
    return root


class Server:
    """This run's database server, as database URLs."""

    def __init__(self) -> None:
        variable = POSTGRES_URL_VAR if settings.DATABASE_VENDOR == "postgresql" else MYSQL_URL_VAR
        self.url = urlsplit(os.environ[variable])
        self.vendor = settings.DATABASE_VENDOR
        self.user = self.url.username or ""
        self.password = self.url.password or ""
        self.address = f"{self.url.hostname}:{self.url.port}"

    def database_url(self, *, pooled: bool = True, password: str = "", query: str = "") -> str:
        """A URL of this server: pgpool:// or mysqlpool:// when ``pooled``, else the
        postgres:// or mysql:// a project already has (Django's own ENGINEs)."""
        if self.vendor == "postgresql":
            scheme = "pgpool" if pooled else "postgres"
        else:
            scheme = "mysqlpool" if pooled else "mysql"
        netloc = f"{self.user}:{password or self.password}@{self.address}"
        full_query = "&".join(part for part in (self.url.query, query) if part)
        return urlunsplit((scheme, netloc, self.url.path, full_query, ""))

    def wrong_password_cause(self) -> str:
        if self.vendor == "postgresql":
            return f'password authentication failed for user "{self.user}"'
        return (
            f"Access denied for user '{self.user}'@'{self.url.hostname}' (using password: YES) "
            "(error 1045)"
        )


@pytest.fixture(scope="module")
def server() -> Server:
    return Server()


def project_env(project: Path, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "PYTHONUNBUFFERED": "1",
        # The pool's stats files go to the project's directory, removed with it.
        "TMPDIR": str(project),
    }


def manage(project: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` in the project: its output, stdout and stderr in the order
    they were written."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=project_env(project, database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )


@contextmanager
def gunicorn(project: Path, database_url: str) -> Iterator[str]:
    """The project under gunicorn on a free port: yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "mysite.wsgi", "--bind", f"127.0.0.1:{port}"],
        cwd=project,
        env=project_env(project, database_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, base)
        yield base
    finally:
        stop_gracefully(process)


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def test_an_existing_url_that_keeps_djangos_engine_gets_w008(project: Path, server: Server) -> None:
    result = manage(project, server.database_url(pooled=False), "check")
    engine = f"django.db.backends.{server.vendor}"
    assert result.returncode == 0, result.stdout
    assert result.stdout == (
        "System check identified some issues:\n"
        "\n"
        "WARNINGS:\n"
        "?: (django_dbpool.W008) django_dbpool is in INSTALLED_APPS, but no alias of "
        f"DATABASES uses one of its ENGINEs ('default' uses {engine}): nothing is pooled.\n"
        "\tHINT: Set ENGINE to 'django_dbpool.backends.postgresql' or "
        "'django_dbpool.backends.mysql'; in a database URL, use the pgpool:// or mysqlpool:// "
        "scheme (postgres:// and mysql:// keep Django's own ENGINE).\n"
        "\n"
        "System check identified 1 issue (0 silenced).\n"
    )
    # The pooled URL passes: no W008, and no W009 on the Django release the suite runs on.
    assert manage(project, server.database_url(), "check").stdout == (
        "System check identified no issues (0 silenced).\n"
    )


def test_ready_probes_the_aliases_when_none_is_pooled(project: Path, server: Server) -> None:
    with gunicorn(project, server.database_url(pooled=False)) as base:
        assert get_json(f"{base}/health/ready") == (
            200,
            {"status": "ready", "databases": {"default": {"status": "ok", "pooled": False}}},
        )
    wrong = server.database_url(pooled=False, password=WRONG_PASSWORD)
    with gunicorn(project, wrong) as base:
        assert get_json(f"{base}/health/ready") == (
            503,
            {
                "status": "unavailable",
                "databases": {"default": {"status": "error", "pooled": False}},
            },
        )


def test_check_database_with_a_wrong_password_is_e004(project: Path, server: Server) -> None:
    result = manage(
        project, server.database_url(password=WRONG_PASSWORD), "check", "--database", "default"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout
    assert (
        "SystemCheckError: System check identified some issues:\n"
        "\n"
        "ERRORS:\n"
        "?: (django_dbpool.E004) DATABASES['default']: could not run SELECT 1 through the pool: "
        f"cannot connect to {server.address} as USER '{server.user}': "
        f"{server.wrong_password_cause()}.\n"
        f"\tHINT: {AUTH_HINT}\n"
        "\n"
        "System check identified 1 issue (0 silenced).\n"
    ) in result.stdout
    assert WRONG_PASSWORD not in result.stdout


def test_runserver_with_a_wrong_password_says_what_is_wrong_first_and_once(
    project: Path, server: Server
) -> None:
    # --noreload: the same output as under the autoreloader, which would then wait for a
    # file to change instead of exiting.
    result = manage(
        project,
        server.database_url(password=WRONG_PASSWORD),
        "runserver",
        "--noreload",
        f"127.0.0.1:{free_port()}",
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    after_checks = lines[lines.index("System check identified no issues (0 silenced).") + 1 :]
    failure = (
        f"cannot connect to {server.address} as USER '{server.user}': "
        f"{server.wrong_password_cause()}. {AUTH_HINT}"
    )
    # The first error names the alias, the cause and the fix, once each.
    assert (
        after_checks[0] == f"pool 'default': connect failed (1 in a row): ConnectFailed: {failure}"
    )
    # The pool's log lines (the first failure, then failing fast) come before the traceback,
    # not through it.
    logged = list(itertools.takewhile(lambda line: line.startswith("pool "), after_checks))
    assert len(logged) == 2
    assert not [line for line in after_checks[len(logged) :] if line.startswith("pool ")]
    # One traceback, the caller's: the connect error and the driver's are one line each.
    assert result.stdout.count("Traceback (most recent call last):") == 1
    assert f"django_dbpool.pool.errors.ConnectFailed: DATABASES['default']: {failure}" in lines
    assert after_checks[-1].startswith("django_dbpool.pool.errors.PoolUnavailable: pool 'default':")
    assert after_checks[-1].endswith(f"Last error: ConnectFailed: {failure}")
    assert WRONG_PASSWORD not in result.stdout


def test_a_misspelt_url_parameter_gets_a_suggestion(project: Path, server: Server) -> None:
    result = manage(project, server.database_url(query="pool_max_szie=5"), "check")
    assert result.returncode == 1
    assert (
        "?: (django_dbpool.E001) DATABASES['default']: Unknown POOL option 'MAX_SZIE'. Did you "
        "mean pool_max_size? Known options: BACKOFF_MAX, "
    ) in result.stdout
