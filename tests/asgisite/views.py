"""The site's views. Each answers JSON with the serving process's pid, so that a test knows
which workers served requests.

- ``/sync``: a sync view, two ORM queries.
- ``/async``: an async view, the ORM's async API (``afirst()``, ``acount()``).
- ``/async-thread``: an async view, the ORM through ``sync_to_async``.
- ``/slow?seconds=S``: an async view that queries, awaits ``asyncio.sleep(S)`` (as if
  calling another service) and queries again; it says whether the process was draining by
  then, which is what ``/health/ready`` answers 503 for (a draining server accepts no new
  connection to ask it; and asking it here would borrow a second connection).
- ``/sync-slow?seconds=S``: the same as a sync view (``time.sleep``).
"""

from __future__ import annotations

import asyncio
import os
import time

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse

from django_dbpool.shutdown import is_draining

from .models import Item

#: The longest wait a client may ask of the slow views.
MAX_SECONDS = 30.0


def _seconds(request: HttpRequest) -> float:
    return min(max(float(request.GET.get("seconds", "0.5")), 0.0), MAX_SECONDS)


def _answer(**body: object) -> JsonResponse:
    return JsonResponse({"pid": os.getpid(), **body})


def _read() -> tuple[int, str | None]:
    first = Item.objects.order_by("pk").values_list("value", flat=True).first()
    return Item.objects.count(), first


def sync_view(request: HttpRequest) -> JsonResponse:
    count, first = _read()
    return _answer(count=count, first=first)


async def async_view(request: HttpRequest) -> JsonResponse:
    item = await Item.objects.order_by("pk").afirst()
    count = await Item.objects.acount()
    return _answer(count=count, first=None if item is None else item.value)


async def async_thread_view(request: HttpRequest) -> JsonResponse:
    count, first = await sync_to_async(_read)()
    return _answer(count=count, first=first)


async def slow_view(request: HttpRequest) -> JsonResponse:
    seconds = _seconds(request)
    before = await Item.objects.acount()
    await asyncio.sleep(seconds)
    after = await Item.objects.acount()
    return _answer(count=after, before=before, draining=is_draining())


def sync_slow_view(request: HttpRequest) -> JsonResponse:
    seconds = _seconds(request)
    before = Item.objects.count()
    time.sleep(seconds)
    return _answer(count=Item.objects.count(), before=before)
