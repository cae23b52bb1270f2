"""Views the tests call through Django's real request cycle."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from django.db import connection, connections
from django.http import HttpRequest, HttpResponse, JsonResponse

from django_dbpool.retry import retry_on_disconnect

SESSION_ID_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}
#: The session's id and, on PostgreSQL, its start time: unique for the server's lifetime
#: (a PostgreSQL backend's pid is an OS pid, which may be reused).
SESSION_KEY_SQL = {
    "postgresql": (
        "SELECT pg_backend_pid() || '@' || backend_start FROM pg_stat_activity"
        " WHERE pid = pg_backend_pid()"
    ),
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


def process_session(request: HttpRequest) -> HttpResponse:
    """The serving process and its database session: ``{"pid": ..., "session": ...}``, the
    session as SESSION_KEY_SQL names it."""
    with connection.cursor() as cursor:
        cursor.execute(SESSION_KEY_SQL[connection.vendor])
        return JsonResponse({"pid": os.getpid(), "session": str(cursor.fetchone()[0])})


def leaky_task(sessions: list[int]) -> None:
    """Code outside the request cycle: queries the "small" alias through the ORM and ends
    without closing its connection."""
    from example_project.bank.models import Account

    Account.objects.using("small").exists()  # the connection is checked out here
    with connections["small"].cursor() as cursor:
        cursor.execute(SESSION_ID_SQL[connections["small"].vendor])
        sessions.append(int(cursor.fetchone()[0]))
    # No connections["small"].close(): the thread exits holding the connection.


def small_leak_in_thread(request: HttpRequest) -> HttpResponse:
    """Runs leaky_task in a thread of its own and answers with the session it used."""
    sessions: list[int] = []
    thread = threading.Thread(target=leaky_task, args=(sessions,), name="leaky-task")
    thread.start()
    thread.join(30)
    return HttpResponse(str(sessions[0]))


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


#: Called by the account views with the session id they hold, before their query; set by
#: tests/test_retry.py to kill that session in between.
ACCOUNTS_HOOK: Callable[[int], None] | None = None


def _account_names() -> JsonResponse:
    from example_project.bank.models import Account

    with connection.cursor() as cursor:
        cursor.execute(SESSION_ID_SQL[connection.vendor])
        session = int(cursor.fetchone()[0])
    if ACCOUNTS_HOOK is not None:
        ACCOUNTS_HOOK(session)
    names = list(Account.objects.values_list("name", flat=True))
    return JsonResponse({"session": session, "names": names})


def account_names(request: HttpRequest) -> HttpResponse:
    """Read-only: the session it used and the account names."""
    return _account_names()


@retry_on_disconnect(backoff=0.01)
def account_names_retried(request: HttpRequest) -> HttpResponse:
    """The same, run again on a fresh connection if the first one dies under it."""
    return _account_names()
