from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Q


class Account(models.Model):
    name = models.CharField(max_length=100, unique=True)
    balance = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0.00"))

    class Meta:
        ordering = ["name"]
        constraints = [
            # The database itself refuses an overdraft, so a transfer that would cause one
            # fails inside its transaction and everything it did is rolled back.
            models.CheckConstraint(
                condition=Q(balance__gte=0), name="bank_account_balance_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Transfer(models.Model):
    source = models.ForeignKey(Account, models.PROTECT, related_name="transfers_out")
    target = models.ForeignKey(Account, models.PROTECT, related_name="transfers_in")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="bank_transfer_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.amount} from {self.source} to {self.target}"
