"""Draining: signal handlers that chain, pools closed cleanly at exit, in real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from django.db import connections

from django_dbpool import lifecycle, shutdown
from tests import processes
from tools.dbservers import free_port


@pytest.fixture(autouse=True)
def not_draining() -> Iterator[None]:
    shutdown._draining.clear()
    yield
    shutdown._draining.clear()


def test_handler_marks_draining_and_chains_to_the_previous_handler() -> None:
    saved_handler = signal.getsignal(signal.SIGTERM)
    saved_previous = dict(shutdown._previous)
    calls: list[int] = []
    try:
        signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
        shutdown.install_handlers()
        assert signal.getsignal(signal.SIGTERM) is shutdown._handle
        signal.raise_signal(signal.SIGTERM)
        assert shutdown.is_draining()
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, saved_handler)
        shutdown._previous.clear()
        shutdown._previous.update(saved_previous)


def drain_in_background() -> tuple[threading.Thread, dict[str, object]]:
    # At exit the drain runs in the main thread, which gives its own connections back
    # first; here the test thread does that itself.
    connections.close_all()
    out: dict[str, object] = {}
    worker = threading.Thread(target=lambda: out.update(shutdown.close_all_pools(timeout=60)))
    worker.start()
    deadline = time.monotonic() + 30
    while not shutdown._in_drain and time.monotonic() < deadline:
        time.sleep(0.01)
    return worker, out


@pytest.mark.django_db(transaction=True, databases=["default", "small"])
def test_drain_waits_for_borrowed_connections_then_closes_them() -> None:
    borrowed = threading.Event()
    give_back = threading.Event()

    def borrower() -> None:
        connections["small"].ensure_connection()
        borrowed.set()
        give_back.wait(30)
        connections["small"].close()  # an in-flight request finishing during the drain

    holder = threading.Thread(target=borrower)
    holder.start()
    assert borrowed.wait(30)
    worker, results = drain_in_background()
    assert worker.is_alive()  # waiting for the borrowed connection
    give_back.set()
    holder.join(30)
    worker.join(30)
    small = results["small"]
    assert small.force_closed == 0  # type: ignore[attr-defined]
    assert small.pending == 0  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True, databases=["default", "small"])
def test_a_second_signal_stops_the_wait() -> None:
    borrowed = threading.Event()
    done = threading.Event()

    def borrower() -> None:
        connections["small"].ensure_connection()
        borrowed.set()
        done.wait(30)
        connections["small"].close()

    holder = threading.Thread(target=borrower)
    holder.start()
    assert borrowed.wait(30)
    pool = connections["small"].pool
    worker, _ = drain_in_background()
    shutdown._abort_drain()  # what the handler does on a second signal
    worker.join(30)
    assert not worker.is_alive()  # the drain ended while the connection was still out...
    assert pool.stats().closed["shutdown"] == 0  # ...cut off, not closed under its holder
    done.set()
    holder.join(30)
    assert pool.stats().size == 0  # closed when its holder gave it back
    assert pool.stats().closed["shutdown"] == 1


@pytest.mark.django_db(transaction=True)
def test_sigterm_on_a_command_holding_a_connection_drains_and_dies_of_sigterm() -> None:
    processes.manage("migrate", "--noinput", "-v", "0")
    unclean = processes.UncleanDisconnects()
    code = (
        "from django.db import connection, transaction\n"
        "from example_project.bank.models import Account\n"
        "with transaction.atomic():\n"
        "    Account.objects.create(name='held by a command', balance=1)\n"
        "    print('holding', flush=True)\n"
        "    import time; time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, processes.MANAGE, "shell", "--no-imports", "-c", code],
        env=processes.project_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "holding"
        assert processes.app_sessions() == 1
        child.send_signal(signal.SIGTERM)
        assert child.wait(60) == -signal.SIGTERM  # the default action's status, after the drain
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert processes.wait_for_no_app_sessions() == 0
    assert unclean.since() == 0
    assert (
        processes.raw_query("SELECT COUNT(*) FROM bank_account WHERE name = 'held by a command'")[
            0
        ][0]
        == 0
    )  # rolled back


@pytest.mark.django_db(transaction=True)
def test_sigint_on_runserver_finishes_the_request_in_flight_and_drains() -> None:
    processes.manage("migrate", "--noinput", "-v", "0")
    unclean = processes.UncleanDisconnects()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, processes.MANAGE, "runserver", "--noreload", f"127.0.0.1:{port}"],
        env=processes.project_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        processes.wait_until_serving(server, base)
        assert urllib.request.urlopen(f"{base}/health/ready", timeout=10).status == 200
        # A slow request (a one-second query in a transaction) is in flight at Ctrl-C.
        result: dict[str, object] = {}

        def slow() -> None:
            try:
                with urllib.request.urlopen(f"{base}/report/", timeout=60) as response:
                    result["status"] = response.status
                    result["body"] = response.read()
            except Exception as exc:  # reported by the assertion below
                result["error"] = exc

        # Sleeping sessions of other tests' processes may still be ending: count ours.
        sleeping_before = processes.app_sessions(sleeping=True)
        request = threading.Thread(target=slow)
        request.start()
        # In flight: its query is running (the health check's connection, idle in the
        # pool, does not count).
        deadline = time.monotonic() + 30
        while processes.app_sessions(sleeping=True) <= sleeping_before:
            assert time.monotonic() < deadline, f"the slow request never ran its query: {result}"
            time.sleep(0.02)
        server.send_signal(signal.SIGINT)
        request.join(60)
        assert result.get("status") == 200, result
        assert server.wait(60) == 0  # runserver's own status for Ctrl-C
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert processes.wait_for_no_app_sessions() == 0
    assert unclean.since() == 0


def test_celery_worker_process_shutdown_is_connected_when_celery_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import types

    from django.dispatch import Signal

    worker_process_shutdown = Signal()
    celery = types.ModuleType("celery")
    celery_signals = types.ModuleType("celery.signals")
    celery_signals.worker_process_shutdown = worker_process_shutdown  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "celery", celery)
    monkeypatch.setitem(sys.modules, "celery.signals", celery_signals)
    drained: list[bool] = []
    monkeypatch.setattr(shutdown, "close_all_pools", lambda timeout=None: drained.append(True))
    lifecycle.install(handlers=False)
    worker_process_shutdown.send(sender=None, pid=1, exitcode=0)
    assert drained == [True]
