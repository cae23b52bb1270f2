from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path, re_path
from django.views.static import serve

urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("health/", include("django_dbpool.urls")),
    path("", include("django_prometheus.urls")),  # /metrics
    path("", include("example_project.bank.urls")),
]

if settings.SERVE_STATIC:
    # The demo serves collected static files itself so that one gunicorn is the whole site.
    urlpatterns.append(
        re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT})
    )
