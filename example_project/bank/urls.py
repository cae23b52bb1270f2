from __future__ import annotations

from django.urls import path

from . import views

app_name = "bank"

urlpatterns = [
    path("", views.account_list, name="accounts"),
    path("transfer/", views.transfer_view, name="transfer"),
    path("report/", views.slow_report, name="report"),
]
