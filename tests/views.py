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


def small_session_id(request: HttpRequest) -> HttpResponse:
    """One query through the deliberately small pool of the "small" alias."""
    from django.db import connections

    with connections["small"].cursor() as cursor:
        cursor.execute(SESSION_ID_SQL[connections["small"].vendor])
        return HttpResponse(str(cursor.fetchone()[0]))


def create_then_fail(request: HttpRequest) -> HttpResponse:
    """Writes a row, then fails: under ATOMIC_REQUESTS the row must not survive."""
    from example_project.bank.models import Account

    Account.objects.create(name="Written before the failure", balance=1)
    raise RuntimeError("the view failed after writing")


async def async_session_id(request: HttpRequest) -> HttpResponse:
    """An async view using the ORM's connection through sync_to_async."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(session_id)(request)


def sleep(request: HttpRequest) -> HttpResponse:
    """A slow query (a second and a half), to be seen in the database's activity view."""
    sql = {"postgresql": "SELECT pg_sleep(1.5)", "mysql": "SELECT SLEEP(1.5)"}
    with connection.cursor() as cursor:
        cursor.execute(sql[connection.vendor])
    return HttpResponse("slept")


def echo(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Sends the ``q`` parameter through the database as a query parameter and back."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s", [request.GET.get("q", "")])
        return HttpResponse(cursor.fetchone()[0])
