from __future__ import annotations

from django.contrib import messages
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from .forms import TransferForm
from .models import Account, Transfer
from .services import InsufficientFunds, transfer


def account_list(request: HttpRequest) -> HttpResponse:
    return _render_list(request, TransferForm())


@require_POST
def transfer_view(request: HttpRequest) -> HttpResponse:
    form = TransferForm(request.POST)
    if not form.is_valid():
        return _render_list(request, form, status=400)
    data = form.cleaned_data
    try:
        record = transfer(data["source"], data["target"], data["amount"])
    except InsufficientFunds:
        form.add_error("amount", f"{data['source']} does not have {data['amount']}.")
        return _render_list(request, form, status=409)
    messages.success(request, f"Moved {record.amount} from {record.source} to {record.target}.")
    return redirect("bank:accounts", permanent=False)


SLEEP_SQL = {"postgresql": "SELECT pg_sleep(%s)", "mysql": "SELECT SLEEP(%s)"}


def slow_report(request: HttpRequest) -> HttpResponse:
    """The total of all balances, from a report that takes a second (a slow query inside a
    transaction): what a request looks like when a deploy or a restart catches it."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(SLEEP_SQL[connection.vendor], [1])
        total = sum(Account.objects.values_list("balance", flat=True))
    return HttpResponse(f"total {total}\n", content_type="text/plain")


def _render_list(request: HttpRequest, form: TransferForm, status: int = 200) -> HttpResponse:
    context = {
        "accounts": Account.objects.all(),
        "transfers": Transfer.objects.select_related("source", "target")[:20],
        "form": form,
    }
    return render(request, "bank/accounts.html", context, status=status)
