"""Views the tests call through Django's real request cycle."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse

SESSION_ID_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}


def session_id(request: HttpRequest) -> HttpResponse:
    """One query: the database session serving this request."""
    with connection.cursor() as cursor:
        cursor.execute(SESSION_ID_SQL[connection.vendor])
        return HttpResponse(str(cursor.fetchone()[0]))
