from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from example_project.bank.models import Account, Transfer
from example_project.bank.services import transfer

ACCOUNTS = {
    "Alice": Decimal("1200.00"),
    "Bob": Decimal("350.00"),
    "Carol": Decimal("4800.00"),
    "Dave": Decimal("75.50"),
}


class Command(BaseCommand):
    help = (
        "Create the demo accounts and a few transfers (once), and an 'admin' superuser whose "
        "password is read from the DEMO_ADMIN_PASSWORD environment variable, if set."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        accounts = {}
        for name, balance in ACCOUNTS.items():
            accounts[name], _ = Account.objects.get_or_create(
                name=name, defaults={"balance": balance}
            )
        if not Transfer.objects.exists():
            transfer(accounts["Carol"], accounts["Alice"], Decimal("250.00"))
            transfer(accounts["Alice"], accounts["Bob"], Decimal("42.00"))
            transfer(accounts["Bob"], accounts["Dave"], Decimal("10.00"))
        password = os.environ.get("DEMO_ADMIN_PASSWORD")
        if password:
            user, _ = get_user_model().objects.get_or_create(
                username="admin", defaults={"is_staff": True, "is_superuser": True}
            )
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
        self.stdout.write(
            f"{Account.objects.count()} accounts, {Transfer.objects.count()} transfers."
        )
