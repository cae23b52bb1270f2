from __future__ import annotations

from django.urls import include, path

from tests import views

urlpatterns = [
    path("probe/session/", views.session_id, name="probe-session"),
    path("", include("example_project.urls")),
]
