"""The "Connection pools" page of the Django admin: a dashboard instead of a change list.

Registered on the default admin site; no custom ``AdminSite`` is needed. Staff users with
the ``django_dbpool.view_connectionpool`` permission (superusers have it) see it in the
admin index. Two URLs, both behind the admin's login: the page, at the model's change-list
URL (``admin:django_dbpool_connectionpool_changelist``), and the JSON it refreshes from
(``admin:django_dbpool_connectionpool_data``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.text import capfirst

from .dashboard import dashboard_data, page_context
from .models import ConnectionPool

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[ConnectionPool]
else:
    _ModelAdmin = admin.ModelAdmin

__all__ = ["ConnectionPoolAdmin"]


@admin.register(ConnectionPool)
class ConnectionPoolAdmin(_ModelAdmin):
    """Read-only: viewing is the only permission; there is nothing to add, change or delete."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: ConnectionPool | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: ConnectionPool | None = None
    ) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        # Only these two: the stock add/change/delete/history views would query a table
        # that does not exist. admin_view() sends anonymous and non-staff users to the login
        # page and marks both never_cache.
        return [
            path(
                "",
                self.admin_site.admin_view(self.changelist_view),
                name="{}_{}_changelist".format(*info),
            ),
            path(
                "data.json",
                self.admin_site.admin_view(self.data_view),
                name="{}_{}_data".format(*info),
            ),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        self._require_view_permission(request)
        opts = self.opts
        data = dashboard_data()
        data_url = reverse(
            f"admin:{opts.app_label}_{opts.model_name}_data", current_app=self.admin_site.name
        )
        context = {
            **self.admin_site.each_context(request),
            "title": capfirst(opts.verbose_name_plural),
            "opts": opts,
            "app_label": opts.app_label,
            "data": data,
            "pools": page_context(data),
            "data_url": data_url,
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "django_dbpool/admin/dashboard.html", context)

    def data_view(self, request: HttpRequest) -> JsonResponse:
        """The dashboard's data as JSON (see :func:`django_dbpool.dashboard.dashboard_data`);
        ``?server=0`` leaves out the servers' view, which borrows a connection per server."""
        self._require_view_permission(request)
        return JsonResponse(dashboard_data(server=request.GET.get("server") != "0"))

    def _require_view_permission(self, request: HttpRequest) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied
