"""NETWORK_TIMEOUT on the real server: the socket settings each driver's connections get, a
long statement on a healthy link that no timeout cuts, a Unix socket left alone, and a
partition (packets dropped by nftables, see tools/partition.py) that ends the statement in
flight within NETWORK_TIMEOUT plus a margin, whichever way the link went silent.

CONNECT_TIMEOUT against a server that accepts and never answers is a row of
tests/test_bad_input.py."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import OperationalError, connection

from tests.backends.test_pooling import raw_connection, session_id
from tests.test_bad_input import ALIAS, misconfigured
from tools.dbservers import MYSQL_SOCKET_VAR, POSTGRES_SOCKET_VAR
from tools.partition import Partition, dropped_link

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", ALIAS])

SLEEP_SQL = {"postgresql": "SELECT pg_sleep(%s)", "mysql": "SELECT SLEEP(%s)"}
NETWORK_TIMEOUT = 2
#: The longest a partition lasts (it heals itself then), and the statement in flight sleeps
#: as long: without the timeouts, the statement outlives the partition and succeeds.
PARTITION_LIMIT = 20.0
#: Added to NETWORK_TIMEOUT in the bound a failure must meet: room for a loaded machine,
#: and still far below PARTITION_LIMIT, so that a statement that only ended because the
#: link healed is told apart.
MARGIN = 6.0
#: How long to wait for the server to show the statement running (a hang guard).
EVENT_LIMIT = 30.0


def tcp_settings(raw: Any) -> dict[str, int]:
    """The socket settings of a driver connection, read from the kernel."""
    tcp = socket.IPPROTO_TCP
    with socket.socket(fileno=os.dup(raw.fileno())) as sock:
        assert sock.family == socket.AF_INET
        return {
            "user_timeout_ms": sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT),
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(tcp, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(tcp, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(tcp, socket.TCP_KEEPCNT),
        }


def local_port(raw: Any) -> int:
    with socket.socket(fileno=os.dup(raw.fileno())) as sock:
        return int(sock.getsockname()[1])


@contextmanager
def network_timeout(monkeypatch: pytest.MonkeyPatch, seconds: float, **pool: Any) -> Iterator[Any]:
    """The "small" alias with NETWORK_TIMEOUT=``seconds`` (and ``pool``), connected."""
    settings = {"MAX_SIZE": 2, "TIMEOUT": 60, "NETWORK_TIMEOUT": seconds, **pool}
    with misconfigured(monkeypatch, POOL=settings) as wrapper:
        wrapper.ensure_connection()
        yield wrapper


def test_connections_get_the_default_network_timeout() -> None:
    connection.ensure_connection()
    assert tcp_settings(connection.connection) == {
        "user_timeout_ms": 30_000,
        "keepalive": 1,
        "idle": 15,
        "interval": 5,
        "count": 3,
    }


def test_network_timeout_0_leaves_the_socket_as_the_driver_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with network_timeout(monkeypatch, 0) as wrapper:
        assert tcp_settings(wrapper.connection)["user_timeout_ms"] == 0


def test_a_statement_longer_than_the_timeouts_on_a_healthy_link_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with network_timeout(monkeypatch, 1, CONNECT_TIMEOUT=1) as wrapper:
        assert tcp_settings(wrapper.connection)["user_timeout_ms"] == 1000
        with wrapper.cursor() as cursor:
            cursor.execute(SLEEP_SQL[wrapper.vendor], [3])
            assert cursor.fetchone() is not None


def test_a_unix_socket_connection_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    var = POSTGRES_SOCKET_VAR if connection.vendor == "postgresql" else MYSQL_SOCKET_VAR
    address = os.environ.get(var)
    assert address, f"{var} is not set: run the suite through tools/dbservers.py"
    settings = {"MAX_SIZE": 2, "TIMEOUT": 60, "NETWORK_TIMEOUT": NETWORK_TIMEOUT}
    with misconfigured(monkeypatch, HOST=address, POOL=settings) as wrapper:
        assert session_id(ALIAS) > 0
        with socket.socket(fileno=os.dup(wrapper.connection.fileno())) as sock:
            assert sock.family == socket.AF_UNIX


def statement_running(session: int) -> bool:
    """Whether the server is running a statement for ``session`` (seen from outside)."""
    if connection.vendor == "postgresql":
        sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
    else:
        sql = (
            "SELECT COUNT(*) FROM information_schema.processlist"
            " WHERE id = %s AND command = 'Query'"
        )
    with raw_connection() as conn:
        cursor = conn.cursor()
        cursor.execute(sql, (session,))
        return int(cursor.fetchone()[0]) > 0


def end_session(session: int) -> None:
    # The server still runs the statement of the session the client gave up on.
    with raw_connection() as conn:
        cursor = conn.cursor()
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_terminate_backend(%s)", (session,))
        else:
            try:
                cursor.execute(f"KILL CONNECTION {int(session)}")
            except Exception as exc:  # 1094: it ended by itself meanwhile
                if getattr(exc, "args", (None,))[0] != 1094:
                    raise


def assert_lost_within_the_timeout(
    wrapper: Any, error: BaseException, partition: Partition, failed: float
) -> None:
    assert partition.started is not None, "the partition never started"
    # Ended by the timeouts, not by the partition healing.
    assert partition.healed is None or partition.healed > failed
    assert failed - partition.started < NETWORK_TIMEOUT + MARGIN
    assert wrapper.connection_is_dead_error(error), repr(error)


def test_a_partition_ends_a_statement_awaiting_its_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The statement is on the server when the link goes silent: nothing is left
    # unacknowledged, so only keepalive probes can notice.
    with network_timeout(monkeypatch, NETWORK_TIMEOUT) as wrapper:
        victim = session_id(ALIAS)
        raw = wrapper.connection
        partition = Partition(int(wrapper.settings_dict["PORT"]), local_port(raw))
        problems: list[BaseException] = []

        def partition_once_running() -> None:
            try:
                deadline = time.monotonic() + EVENT_LIMIT
                while not statement_running(victim):
                    assert time.monotonic() < deadline, "the statement never started"
                    time.sleep(0.05)
                partition.start(limit=PARTITION_LIMIT)
            except BaseException as exc:  # reported below
                problems.append(exc)

        helper = threading.Thread(target=partition_once_running, daemon=True)
        helper.start()
        try:
            with pytest.raises(OperationalError) as info, wrapper.cursor() as cursor:
                cursor.execute(SLEEP_SQL[wrapper.vendor], [PARTITION_LIMIT])
            failed = time.monotonic()
            assert_lost_within_the_timeout(wrapper, info.value, partition, failed)
        finally:
            helper.join(EVENT_LIMIT)
            partition.heal()
            end_session(victim)
            if problems:  # the cause of any failure above (nft missing, say)
                raise problems[0]
        # The lost connection was given back as broken; the next checkout gets a new one.
        wrapper.close()
        assert session_id(ALIAS) != victim


def test_a_partition_ends_a_statement_sent_into_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The link is already silent when the statement is sent: what is sent is never
    # acknowledged (TCP_USER_TIMEOUT).
    with network_timeout(monkeypatch, NETWORK_TIMEOUT) as wrapper:
        victim = session_id(ALIAS)
        port = int(wrapper.settings_dict["PORT"])
        try:
            with dropped_link(port, local_port(wrapper.connection), limit=PARTITION_LIMIT) as link:
                with pytest.raises(OperationalError) as info, wrapper.cursor() as cursor:
                    cursor.execute("SELECT 1")
                failed = time.monotonic()
            assert_lost_within_the_timeout(wrapper, info.value, link, failed)
        finally:
            end_session(victim)
        wrapper.close()
        assert session_id(ALIAS) != victim
