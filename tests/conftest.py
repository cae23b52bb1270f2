from __future__ import annotations

import pytest
from django.conf import settings

from tests.dbservers import redact


def pytest_report_header(config: pytest.Config) -> str:
    return f"database: {settings.DATABASE_VENDOR} at {redact(settings.DATABASE_URL)}"


def wsgi_get(path: str) -> tuple[int, bytes]:
    """GET ``path`` through Django's real WSGI handler, as a server would.

    Unlike Django's test client, this keeps ``close_old_connections`` connected to the
    request signals, so the connection goes back to the pool at the end of the request.
    """
    from io import BytesIO

    from django.core.handlers.wsgi import WSGIHandler

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": BytesIO(b""),
        "wsgi.errors": BytesIO(),
        "HTTP_HOST": "testserver",
    }
    status: list[str] = []
    response = WSGIHandler()(environ, lambda s, headers, exc_info=None: status.append(s))
    try:
        body = b"".join(response)
    finally:
        response.close()  # sends request_finished, as every WSGI server does
    return int(status[0].split()[0]), body
