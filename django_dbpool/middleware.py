"""Middleware: ``ConnectionTagMiddleware`` (see ``django_dbpool.tagging``), and a 503 with
``Retry-After`` when the pool cannot serve a request.

Add ``"django_dbpool.middleware.PoolUnavailableMiddleware"`` to ``MIDDLEWARE``. A
``PoolTimeout``, ``PoolExhausted`` or ``PoolUnavailable`` raised by the view (or by anything
the view calls) becomes a 503 response rendering ``django_dbpool/unavailable.html``, with
``Retry-After: DBPOOL_RETRY_AFTER``, logged once with the pool's state on the
``django_dbpool`` logger. Every other exception is left alone.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.deprecation import MiddlewareMixin

from .conf import app_settings
from .pool import PoolExhausted, PoolTimeout, PoolUnavailable
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


def unavailable_response(request: HttpRequest, error: BaseException) -> HttpResponse:
    """The 503 for ``error``; logs it once."""
    logger.warning(
        "503 for %s %s: %s", request.method, request.path, error, extra={"request": request}
    )
    response = HttpResponse(
        render_to_string("django_dbpool/unavailable.html", request=request), status=503
    )
    response["Retry-After"] = str(app_settings.RETRY_AFTER)
    return response


class PoolUnavailableMiddleware(MiddlewareMixin):
    """Sync and async capable (Django's ``MiddlewareMixin``)."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, POOL_ERRORS):
            return unavailable_response(request, exception)
        return None
