from __future__ import annotations

from django.urls import include, path

from tests import views

urlpatterns = [
    path("probe/session/", views.session_id, name="probe-session"),
    path("probe/async-session/", views.async_session_id),
    path("probe/create-then-fail/", views.create_then_fail),
    path("", include("example_project.urls")),
]
