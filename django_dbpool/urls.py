"""``path("health/", include("django_dbpool.urls"))``: ``health/live`` and ``health/ready``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "django_dbpool"

urlpatterns = [
    path("live", views.live, name="live"),
    path("ready", views.ready, name="ready"),
]
