"""Fault scenario 3: a network black hole between the app and the database. A TCP proxy
stops forwarding without closing anything; requests that need a connection get a 503
(PoolTimeout or PoolUnavailable) instead of hanging, readiness says 503, and service resumes
when the proxy heals.

Only the requests that hold a connection when the link goes dark (at most MAX_SIZE per
worker) wait for it to heal: their statement is on the wire, and nothing short of a read
timeout of the driver's could end it sooner. Every other request is a borrower, and
borrowers never wait longer than TIMEOUT."""

from __future__ import annotations

import time

from tests.faults.harness import FULL, GRACE, get, private_database, record, serving
from tests.faults.load import Load, errors_text, first_success_after, get_paths, unanswered
from tests.faults.report import Row
from tools.tcpproxy import tcp_proxy

TIMEOUT = 1
MAX_SIZE = 2
WORKERS = 2


def test_black_hole_gives_503_not_hangs_and_heals() -> None:
    # Longer than TIMEOUT + GRACE, so that a borrower stuck in the black hole would be seen.
    dark_for = TIMEOUT + GRACE + (8 if FULL else 2)
    with private_database() as db, tcp_proxy("127.0.0.1", db.server.port) as proxy:
        url = db.app_url(port=proxy.port, max_size=MAX_SIZE, timeout=TIMEOUT, backoff_max=1)
        # More threads than connections: most requests in flight are borrowers.
        with serving(url, threads=8) as app:
            workers = app.worker_pids()
            load = Load(app.base, clients=16, request=get_paths(["/"]), pause=0.01).start()
            load.wait_for(lambda rs: sum(r.ok for r in rs) >= 20)
            before = db.sessions()
            proxy.blackhole()
            dark = time.monotonic()
            ready_while_dark: list[int] = []
            while time.monotonic() < dark + dark_for:
                ready_while_dark.append(get(f"{app.base}/health/ready")[0])
                time.sleep(0.5)
            healed = time.monotonic()
            proxy.heal()
            load.wait_for(lambda rs: sum(r.ok and r.start >= healed for r in rs) >= 20)
            results = load.run_until_stopped()
            after = db.sessions()
            assert app.worker_pids() == workers

    assert unanswered(results) == []
    answered_in_the_dark = [r for r in results if dark <= r.start and r.end < healed]
    assert answered_in_the_dark, "no request was answered while the link was dark"
    assert {r.status for r in answered_in_the_dark} == {503}
    assert all(r.retry_after for r in answered_in_the_dark)
    # Those that waited for the link to heal: only holders of a connection, never more than
    # there are connections.
    held = [r for r in results if r.duration > TIMEOUT + GRACE]
    assert len(held) <= WORKERS * MAX_SIZE, [str(r) for r in held]
    assert set(ready_while_dark) == {503}
    since = [r for r in results if r.start >= healed]
    assert {r.status for r in since} <= {200, 503}, [str(r) for r in since if not r.ok]
    first = first_success_after(results, healed)
    assert first is not None

    record(
        Row(
            scenario="3. Network black hole",
            vendor=db.vendor,
            requests=len(results),
            errors=errors_text(results),
            recovery_s=first.end - healed,
            connections_before=before,
            connections_after=after,
            outcome=(
                f"link dark {dark_for:g} s: borrowers 503 within TIMEOUT, readiness 503, "
                f"{len(held)} request(s) holding a connection waited for the heal"
            ),
        )
    )
