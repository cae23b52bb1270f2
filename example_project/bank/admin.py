from __future__ import annotations

from django.contrib import admin

from .models import Account, Transfer


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["name", "balance"]
    search_fields = ["name"]


@admin.register(Transfer)
class TransferAdmin(admin.ModelAdmin):
    list_display = ["created_at", "source", "target", "amount"]
    list_select_related = ["source", "target"]
