import asyncio
import random
import time

from django.http import HttpRequest, HttpResponse
from django.urls import path

from .models import Item

#: Rows in ``bench_item``; the views read them at random by primary key.
ROWS = 1000
#: What the waiting views spend between their two queries, as if calling another service.
WAIT_SECONDS = 0.05
#: Queries of the ``ten`` view.
TEN = 10


def _value(using: str = "default") -> str:
    return (
        Item.objects.using(using)
        .filter(pk=random.randint(1, ROWS))
        .values_list("value", flat=True)[0]
    )


async def _avalue() -> str | None:
    pk = random.randint(1, ROWS)
    return await Item.objects.filter(pk=pk).values_list("value", flat=True).afirst()


def item(request: HttpRequest) -> HttpResponse:
    """One indexed ``SELECT`` by primary key."""
    return HttpResponse(_value(), content_type="text/plain")


def ten(request: HttpRequest) -> HttpResponse:
    """:data:`TEN` indexed ``SELECT`` statements, one after another; on the database alias
    ``?using=`` names (default: ``default``)."""
    using = request.GET.get("using", "default")
    return HttpResponse(" ".join(_value(using) for _ in range(TEN)), content_type="text/plain")


def wait(request: HttpRequest) -> HttpResponse:
    """A query, :data:`WAIT_SECONDS` of waiting on something else (no database), a query."""
    first = _value()
    time.sleep(WAIT_SECONDS)
    return HttpResponse(f"{first} {_value()}", content_type="text/plain")


async def item_async(request: HttpRequest) -> HttpResponse:
    """One indexed ``SELECT``, through the ORM's async API."""
    return HttpResponse(await _avalue(), content_type="text/plain")


async def wait_async(request: HttpRequest) -> HttpResponse:
    """:func:`wait` as an async view: the wait is ``asyncio.sleep``."""
    first = await _avalue()
    await asyncio.sleep(WAIT_SECONDS)
    return HttpResponse(f"{first} {await _avalue()}", content_type="text/plain")


def ping(request: HttpRequest) -> HttpResponse:
    """Answers without touching the database: the benchmark waits on it after a start."""
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("item", item),
    path("ten", ten),
    path("wait", wait),
    path("item_async", item_async),
    path("wait_async", wait_async),
    path("ping", ping),
]
