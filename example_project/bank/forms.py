from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms

from .models import Account


class TransferForm(forms.Form):
    source = forms.ModelChoiceField(queryset=Account.objects.all())
    target = forms.ModelChoiceField(queryset=Account.objects.all())
    amount = forms.DecimalField(max_digits=12, decimal_places=2, min_value=Decimal("0.01"))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("source") is not None and data.get("source") == data.get("target"):
            raise forms.ValidationError("Choose two different accounts.")
        return data
