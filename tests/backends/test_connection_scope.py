"""``django_dbpool.connection_scope()`` on a real server: ORM work outside a request (a
script's ``asyncio.run()``, a thread of one's own) keeps its connections without it and gives
them back with it, on an alias with request leases and one with transaction leases."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.db import connections, transaction

from django_dbpool import connection_scope
from django_dbpool.leases import give_back_connections
from example_project.bank.models import Account

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "lease"])

#: "default" has request leases (a connection from the first statement to the end of the
#: request, or here of the scope); "lease" has transaction leases, and a statement in a
#: transaction still holds one across an await.
ALIASES = ["default", "lease"]


def in_use(alias: str) -> int:
    """Connections of ``alias``'s pool checked out right now, by any thread."""
    return connections[alias].pool.stats().in_use


@pytest.fixture(autouse=True)
def nothing_out() -> Iterator[None]:
    connections.close_all()
    # Whatever asgiref's process-wide thread for sync_to_async outside any context still
    # holds (from this module's tests without a scope) goes back before and after each test.
    asyncio.run(sync_to_async(give_back_connections)())
    yield
    asyncio.run(sync_to_async(give_back_connections)())
    connections.close_all()


def begin(alias: str) -> None:
    """Open a transaction that outlives the call (``atomic()`` cannot span an await)."""
    transaction.set_autocommit(False, using=alias)


def commit(alias: str) -> None:
    transaction.commit(using=alias)
    transaction.set_autocommit(True, using=alias)


async def held_across_an_await(alias: str) -> int:
    """A transaction that creates a row and awaits before it commits: how many connections
    were out during the await."""
    await sync_to_async(begin)(alias)
    await Account.objects.using(alias).acreate(name="scoped")
    await asyncio.sleep(0)
    middle = in_use(alias)
    await sync_to_async(commit)(alias)
    return middle


@pytest.mark.parametrize("alias", ALIASES)
def test_async_orm_outside_a_request_keeps_its_connection_without_a_scope(alias: str) -> None:
    async def main() -> int:
        return await Account.objects.using(alias).acount()

    assert asyncio.run(main()) == 0
    if alias == "default":
        # Request leases: the statement's connection stays with asgiref's process-wide thread.
        assert in_use(alias) == 1
    else:
        # Transaction leases give a statement's connection back by themselves.
        assert in_use(alias) == 0

    # A transaction left open by the block (no scope to end it) keeps the connection.
    async def left_open() -> None:
        await sync_to_async(begin)(alias)
        await Account.objects.using(alias).acount()

    asyncio.run(left_open())
    assert in_use(alias) == 1
    # (the fixture's give_back_connections() rolls it back and returns it)


@pytest.mark.parametrize("alias", ALIASES)
def test_an_async_scope_gives_back_what_its_block_used(alias: str) -> None:
    async def main() -> tuple[int, int]:
        async with connection_scope():
            await Account.objects.using(alias).acreate(name="a")
            await sync_to_async(lambda: Account.objects.using(alias).count())()
            # An open transaction across an await holds its connection in either mode.
            middle = await held_across_an_await(alias)
            # One left open: the scope's end rolls it back.
            await sync_to_async(begin)(alias)
            await Account.objects.using(alias).acreate(name="rolled back")
            inside = in_use(alias)
        return middle, inside

    middle, inside = asyncio.run(main())
    assert middle == 1
    assert inside == 1
    assert in_use(alias) == 0
    # The block's unfinished transaction was rolled back, its committed one kept.
    assert sorted(Account.objects.using(alias).values_list("name", flat=True)) == ["a", "scoped"]


@pytest.mark.parametrize("alias", ALIASES)
def test_connection_scope_decorates_a_coroutine_function(alias: str) -> None:
    @connection_scope()
    async def task(name: str) -> int:
        await sync_to_async(begin)(alias)
        await Account.objects.using(alias).acreate(name=name)
        assert in_use(alias) == 1
        await sync_to_async(commit)(alias)
        return await Account.objects.using(alias).acount()

    assert asyncio.run(task("decorated")) == 1
    assert in_use(alias) == 0


def test_concurrent_tasks_in_one_scope_share_its_thread_and_give_everything_back() -> None:
    alias = "default"

    async def one(i: int) -> str:
        await Account.objects.using(alias).acreate(name=f"task-{i}")
        return threading.current_thread().name

    async def main() -> None:
        async with connection_scope():
            await asyncio.gather(*(one(i) for i in range(8)))

    asyncio.run(main())
    assert in_use(alias) == 0
    assert Account.objects.using(alias).count() == 8


@pytest.mark.parametrize("alias", ALIASES)
def test_a_sync_scope_gives_back_the_threads_connections(alias: str) -> None:
    seen: dict[str, int] = {}

    @connection_scope()
    def job() -> None:
        Account.objects.using(alias).create(name="job")
        begin(alias)
        Account.objects.using(alias).create(name="rolled back")
        seen["inside"] = in_use(alias)

    def worker() -> None:
        job()
        seen["after"] = in_use(alias)
        with connection_scope(), transaction.atomic(using=alias):
            Account.objects.using(alias).create(name="block")
            seen["block"] = in_use(alias)
        seen["after block"] = in_use(alias)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    assert seen == {"inside": 1, "after": 0, "block": 1, "after block": 0}
    # The job's transaction was left open at the scope's end: rolled back, nothing kept of it.
    assert sorted(Account.objects.using(alias).values_list("name", flat=True)) == ["block", "job"]
