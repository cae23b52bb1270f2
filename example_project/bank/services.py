from __future__ import annotations

from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F

from .models import Account, Transfer


class InsufficientFunds(Exception):
    """The source account cannot cover the amount; nothing was changed."""


def transfer(source: Account, target: Account, amount: Decimal) -> Transfer:
    """Move ``amount`` from ``source`` to ``target`` atomically.

    Both balances are updated, then the transfer is recorded; when the debit would overdraw
    the source, the database's check constraint rejects it and the whole transaction is
    rolled back.
    """
    try:
        with transaction.atomic():
            # Update rows in primary-key order so that two opposite transfers running at
            # once lock the same rows in the same order and cannot deadlock.
            deltas = {target.pk: amount, source.pk: -amount}
            for pk in sorted(deltas):
                Account.objects.filter(pk=pk).update(balance=F("balance") + deltas[pk])
            # Recorded last: its foreign-key checks then find both rows locked by this
            # transaction already. Recorded first, they would take shared locks (InnoDB
            # does), which two concurrent transfers cannot both upgrade: a deadlock.
            record = Transfer.objects.create(source=source, target=target, amount=amount)
    except IntegrityError as exc:
        raise InsufficientFunds(f"{source} cannot cover {amount}") from exc
    return record
