"""Middleware: ``ConnectionTagMiddleware`` (see ``django_dbpool.tagging``), and a 503 with
``Retry-After`` when the database cannot serve a request.

Add ``"django_dbpool.middleware.PoolUnavailableMiddleware"`` to ``MIDDLEWARE``. These
exceptions, raised by the view (or by anything the view calls), become a 503 response
rendering ``django_dbpool/unavailable.html``, with ``Retry-After: DBPOOL_RETRY_AFTER``,
logged once on the ``django_dbpool`` logger:

- ``PoolTimeout``, ``PoolExhausted`` or ``PoolUnavailable``: no connection could be
  borrowed (logged with the pool's state);
- an error that means the request's connection was lost: the server restarted or ended the
  session, the network failed (:func:`django_dbpool.retry.lost_connection_alias`; logged
  with the alias).

Every other exception is left alone: Django answers it with its 500. A project without a
template engine that finds the app's templates gets a plain-text 503 instead.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.template import TemplateDoesNotExist
from django.template.loader import render_to_string
from django.utils.deprecation import MiddlewareMixin

from .conf import app_settings
from .pool import PoolExhausted, PoolTimeout, PoolUnavailable
from .retry import lost_connection_alias
from .tagging import ConnectionTagMiddleware

__all__ = [
    "POOL_ERRORS",
    "ConnectionTagMiddleware",
    "PoolUnavailableMiddleware",
    "unavailable_response",
]

logger = logging.getLogger("django_dbpool")

#: The errors that mean "no connection for you now", not "your request is wrong".
POOL_ERRORS = (PoolTimeout, PoolExhausted, PoolUnavailable)
#: The 503's body where ``django_dbpool/unavailable.html`` cannot be found (no template
#: engine with ``APP_DIRS``, say): a 503 all the same, never a 500.
PLAIN_TEXT = "Service unavailable: the database cannot serve this request now. Try again soon.\n"


def unavailable_response(
    request: HttpRequest, error: BaseException, lost: str | None = None
) -> HttpResponse:
    """The 503 for ``error``; logs it once. ``lost``: the alias whose connection ``error``
    says was lost, if that is why (the pool's own errors name their pool themselves)."""
    if lost is None:
        logger.warning(
            "503 for %s %s: %s", request.method, request.path, error, extra={"request": request}
        )
    else:
        logger.warning(
            "503 for %s %s: the connection to database %r was lost: %s: %s",
            request.method,
            request.path,
            lost,
            type(error).__name__,
            " ".join(str(error).split()),  # one line: libpq's messages span several
            extra={"request": request},
        )
    try:
        response = HttpResponse(
            render_to_string("django_dbpool/unavailable.html", request=request), status=503
        )
    except TemplateDoesNotExist:
        response = HttpResponse(PLAIN_TEXT, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(app_settings.RETRY_AFTER)
    return response


class PoolUnavailableMiddleware(MiddlewareMixin):
    """Sync and async capable (Django's ``MiddlewareMixin``)."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, POOL_ERRORS):
            return unavailable_response(request, exception)
        # Called on the thread that ran the view's queries (under ASGI too: Django runs it
        # thread-sensitively), so the connections asked are the ones the request used.
        alias = lost_connection_alias(exception)
        if alias is not None:
            return unavailable_response(request, exception, lost=alias)
        return None
