from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings

from tools.dbservers import redact


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import shutil

    from tests.processes import children_stats_dir

    shutil.rmtree(children_stats_dir(), ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> str:
    return f"database: {settings.DATABASE_VENDOR} at {redact(settings.DATABASE_URL)}"


def wsgi_get(path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``path`` through Django's real WSGI handler: (status, body). See wsgi_request."""
    status, _, body = wsgi_request(path, headers)
    return status, body


def wsgi_request(
    path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` (with an optional query string) through Django's real WSGI handler, as
    a server would: (status, response headers, body).

    Unlike Django's test client, this keeps ``close_old_connections`` connected to the
    request signals, so the connection goes back to the pool at the end of the request.
    """
    from io import BytesIO

    from django.core.handlers.wsgi import WSGIHandler

    path_info, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": BytesIO(b""),
        "wsgi.errors": BytesIO(),
        "HTTP_HOST": "testserver",
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: list[tuple[str, list[tuple[str, str]]]] = []
    response = WSGIHandler()(
        environ, lambda status, headers, exc_info=None: started.append((status, headers))
    )
    try:
        body = b"".join(response)
    finally:
        response.close()  # sends request_finished, as every WSGI server does
    status, response_headers = started[0]
    return int(status.split()[0]), dict(response_headers), body


@contextmanager
def holding_every_connection(alias: str) -> Iterator[list[int]]:
    """Every connection of ``alias``'s pool borrowed, each by a thread of its own, until the
    block ends; yields the database session ids they hold."""
    from django.db import connections

    from tests.views import SESSION_ID_SQL

    max_size = connections[alias].pool.options.max_size
    holding = threading.Barrier(max_size + 1)
    release = threading.Event()
    held: list[int] = []

    def hold() -> None:
        with connections[alias].cursor() as cursor:
            cursor.execute(SESSION_ID_SQL[connections[alias].vendor])
            held.append(int(cursor.fetchone()[0]))
        holding.wait(30)
        release.wait(30)
        connections[alias].close()

    threads = [threading.Thread(target=hold) for _ in range(max_size)]
    for thread in threads:
        thread.start()
    holding.wait(30)
    try:
        yield held
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
