"""Fault scenario 3c: a connect that hangs. The first connection the app opens is accepted
and never answered (a proxy swallows it: a half-dead server or load balancer, a PgBouncer
waiting on its auth_query, a slow TLS handshake), while later ones go through.

Other connects go on beside the stuck one, so every caller gets a connection within TIMEOUT,
which is shorter than CONNECT_TIMEOUT here: a pool that waited for the stuck connect would
answer 503s until it was given up. It is given up after CONNECT_TIMEOUT, never later. One
gunicorn worker, so that every request depends on the pool whose first connect hangs."""

from __future__ import annotations

import time

from tests.faults.harness import FULL, GRACE, private_database, record, serving
from tests.faults.load import Load, errors_text, first_success_after, get_paths, unanswered
from tests.faults.report import Row
from tools.tcpproxy import tcp_proxy

CONNECT_TIMEOUT = 10  # the default
TIMEOUT = 3


def test_a_hung_connect_is_given_up_after_the_connect_timeout() -> None:
    with private_database() as db, tcp_proxy("127.0.0.1", db.server.port) as proxy:
        proxy.swallow(1)
        url = db.app_url(
            port=proxy.port, timeout=TIMEOUT, connect_timeout=CONNECT_TIMEOUT, backoff_max=1
        )
        with serving(url, GUNICORN_CMD_ARGS="--workers 1 --threads 8") as app:
            load = Load(app.base, clients=8, request=get_paths(["/"]), pause=0.01).start()
            load.wait_for(lambda rs: sum(r.ok for r in rs) >= (200 if FULL else 20))
            # The app gives the hung attempt up while it runs (its exit would also close
            # the socket): the proxy sees the client close it.
            deadline = time.monotonic() + CONNECT_TIMEOUT + GRACE
            while not proxy.swallowed or proxy.swallowed[0].closed is None:
                assert time.monotonic() < deadline, "the hung connect was never given up"
                time.sleep(0.05)
            results = load.run_until_stopped()
            counters = app.settled_pool_counters()
            after = db.sessions()

    (hung,) = proxy.swallowed
    assert hung.closed is not None
    given_up_after = hung.closed - hung.accepted
    # It failed as a connect error (it did not open a connection that was closed later).
    assert counters["connect_errors"] == 1, counters
    assert unanswered(results) == []
    # Callers got connections within TIMEOUT, while the first connect still hung.
    assert {r.status for r in results} == {200}, [str(r) for r in results if not r.ok]
    longest = max(results, key=lambda r: r.duration)
    assert longest.duration < TIMEOUT + GRACE, str(longest)
    first = first_success_after(results, hung.accepted)
    assert first is not None

    record(
        Row(
            scenario="3c. Hung connect",
            vendor=db.vendor,
            requests=len(results),
            errors=errors_text(results),
            recovery_s=first.end - hung.accepted,
            connections_before=0,
            connections_after=after,
            outcome=(
                f"first connect accepted and never answered: given up after "
                f"{given_up_after:.1f} s (CONNECT_TIMEOUT={CONNECT_TIMEOUT}); longest request "
                f"{longest.duration:.1f} s (TIMEOUT={TIMEOUT})"
            ),
        )
    )
