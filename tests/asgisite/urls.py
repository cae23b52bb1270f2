from __future__ import annotations

from django.urls import include, path

from . import views

urlpatterns = [
    path("sync", views.sync_view),
    path("async", views.async_view),
    path("async-thread", views.async_thread_view),
    path("slow", views.slow_view),
    path("sync-slow", views.sync_slow_view),
    path("health/", include("django_dbpool.urls")),
]
