from __future__ import annotations

from django.urls import include, path, re_path

from tests import views

urlpatterns = [
    path("health/", include("django_dbpool.urls")),
    path("", include("django_prometheus.urls")),  # /metrics
    path("probe/session/", views.session_id, name="probe-session"),
    path("probe/async-session/", views.async_session_id),
    path("probe/create-then-fail/", views.create_then_fail),
    path("probe/small/", views.small_session_id),
    path("probe/process-session/", views.process_session),
    path("probe/small-leak-in-thread/", views.small_leak_in_thread),
    path("probe/sleep/", views.sleep),
    path("probe/echo/", views.echo),
    path("probe/accounts/", views.account_names),
    path("probe/accounts-retried/", views.account_names_retried),
    re_path(r"^probe/odd\*/(?P<rest>.*)$", views.echo),  # a route that contains "*/"
    path("", include("example_project.urls")),
]
