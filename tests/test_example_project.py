"""The example project's transfer view commits on success and rolls back on failure.

These tests commit for real (transaction=True): a rollback to a savepoint inside a test
transaction would prove less.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from example_project.bank.models import Account, Transfer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def accounts() -> tuple[Account, Account]:
    return (
        Account.objects.create(name="Alice", balance=Decimal("100.00")),
        Account.objects.create(name="Bob", balance=Decimal("20.00")),
    )


def balances() -> dict[str, Decimal]:
    return dict(Account.objects.values_list("name", "balance"))


def post_transfer(client: Client, source: Account, target: Account, amount: str):  # type: ignore[no-untyped-def]
    return client.post(
        reverse("bank:transfer"), {"source": source.pk, "target": target.pk, "amount": amount}
    )


def test_transfer_commits(client: Client, accounts: tuple[Account, Account]) -> None:
    alice, bob = accounts
    response = post_transfer(client, alice, bob, "30.50")
    assert response.status_code == 302
    assert balances() == {"Alice": Decimal("69.50"), "Bob": Decimal("50.50")}
    record = Transfer.objects.get()
    assert (record.source, record.target, record.amount) == (alice, bob, Decimal("30.50"))
    # The list shows the committed state.
    page = client.get(reverse("bank:accounts"))
    assert page.status_code == 200
    assert b"69.50" in page.content
    assert b"Moved 30.50 from Alice to Bob." in page.content


def test_overdraft_rolls_back_everything(client: Client, accounts: tuple[Account, Account]) -> None:
    bob, alice = accounts[1], accounts[0]
    # The record is written and Alice credited before Bob's debit hits the check
    # constraint: the rollback must undo both.
    response = post_transfer(client, bob, alice, "20.01")
    assert response.status_code == 409
    assert b"Bob does not have 20.01." in response.content
    assert balances() == {"Alice": Decimal("100.00"), "Bob": Decimal("20.00")}
    assert not Transfer.objects.exists()


def test_exact_balance_can_be_moved(client: Client, accounts: tuple[Account, Account]) -> None:
    alice, bob = accounts
    assert post_transfer(client, bob, alice, "20.00").status_code == 302
    assert balances() == {"Alice": Decimal("120.00"), "Bob": Decimal("0.00")}


@pytest.mark.parametrize("amount", ["0", "-5", "abc"])
def test_invalid_amount_is_refused_without_writing(
    client: Client, accounts: tuple[Account, Account], amount: str
) -> None:
    alice, bob = accounts
    assert post_transfer(client, alice, bob, amount).status_code == 400
    assert balances() == {"Alice": Decimal("100.00"), "Bob": Decimal("20.00")}
    assert not Transfer.objects.exists()


def test_same_account_is_refused(client: Client, accounts: tuple[Account, Account]) -> None:
    alice = accounts[0]
    response = post_transfer(client, alice, alice, "1.00")
    assert response.status_code == 400
    assert b"Choose two different accounts." in response.content


def test_transfer_needs_post(client: Client) -> None:
    assert client.get(reverse("bank:transfer")).status_code == 405


def test_admin_lists_accounts(client: Client, accounts: tuple[Account, Account]) -> None:
    get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
    client.login(username="admin", password="pw")
    page = client.get(reverse("admin:bank_account_changelist"))
    assert page.status_code == 200
    assert b"Alice" in page.content
    assert b"Bob" in page.content
