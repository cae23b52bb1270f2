import random

from django.http import HttpRequest, HttpResponse
from django.urls import path

from .models import Item

#: Rows in ``bench_item``; the view reads one of them at random by primary key.
ROWS = 1000


def item(request: HttpRequest) -> HttpResponse:
    """One indexed ``SELECT`` by primary key."""
    value = Item.objects.filter(pk=random.randint(1, ROWS)).values_list("value", flat=True)[0]
    return HttpResponse(value, content_type="text/plain")


def ping(request: HttpRequest) -> HttpResponse:
    """Answers without touching the database: the benchmark waits on it after a start."""
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [path("item", item), path("ping", ping)]
