"""Fault scenario 3b: a network partition between the app and the database. Every packet to
and from the database's port is dropped (nftables rules, see tools/partition.py), so that
neither end hears anything, TCP acknowledgements included: unlike the stalled proxy of
scenario 3, whose kernel acknowledges every byte, this is a silence TCP itself can notice.

With NETWORK_TIMEOUT, a request whose statement is in flight when the link goes dark ends
with a connection-lost error within NETWORK_TIMEOUT (plus a keepalive interval), not when the
partition ends; borrowers get a 503 within TIMEOUT, connects are given up after
CONNECT_TIMEOUT, readiness says 503, and service resumes when the link comes back. The
example project's slow report keeps a statement on the server for a second, so that some
requests are mid-statement when the link goes dark; the others are sent into it."""

from __future__ import annotations

import time

from tests.faults.harness import FULL, GRACE, get, private_database, record, serving
from tests.faults.load import (
    Load,
    errors_text,
    first_success_after,
    get_paths,
    summary,
    unanswered,
)
from tests.faults.report import Row
from tools.partition import dropped_link

NETWORK_TIMEOUT = 2
CONNECT_TIMEOUT = 2
TIMEOUT = 1
MAX_SIZE = 2
WORKERS = 2
#: What a request that lost its connection is answered with (PoolUnavailableMiddleware).
LOST = {503}


def test_partition_ends_requests_in_flight_within_the_network_timeout() -> None:
    # Longer than NETWORK_TIMEOUT + GRACE, so that a request held for the whole partition
    # would be seen.
    dark_for = NETWORK_TIMEOUT + GRACE + (8 if FULL else 2)
    with private_database() as db:
        url = db.app_url(
            max_size=MAX_SIZE,
            timeout=TIMEOUT,
            network_timeout=NETWORK_TIMEOUT,
            connect_timeout=CONNECT_TIMEOUT,
            backoff_max=1,
        )
        with serving(url, threads=8) as app:
            workers = app.worker_pids()
            load = Load(
                app.base, clients=16, request=get_paths(["/report/", "/"]), pause=0.01
            ).start()
            load.wait_for(lambda rs: sum(r.ok for r in rs) >= 20)
            before = db.sessions()
            ready_while_dark: list[int] = []
            # The bound is a hang guard: the block ends the partition after dark_for.
            with dropped_link(db.server.port, limit=dark_for + 60) as partition:
                assert partition.started is not None
                dark = partition.started
                while time.monotonic() < dark + dark_for:
                    ready_while_dark.append(get(f"{app.base}/health/ready")[0])
                    time.sleep(0.5)
            healed = partition.healed
            assert healed is not None
            load.wait_for(lambda rs: sum(r.ok and r.start >= healed for r in rs) >= 20)
            results = load.run_until_stopped()
            after = db.sessions()
            assert app.worker_pids() == workers

    assert unanswered(results) == []
    # Every request ended within NETWORK_TIMEOUT (and a hang guard) of its start: none
    # waited for the partition to heal, which took longer than that.
    longest = max(results, key=lambda r: r.duration)
    assert longest.duration < NETWORK_TIMEOUT + GRACE, str(longest)
    # Those running when the link went dark: the ones mid-statement lost their connection.
    caught = [r for r in results if r.start < dark < r.end]
    lost = [r for r in caught if r.status in LOST]
    assert lost, [str(r) for r in caught]
    assert all(r.end - dark < NETWORK_TIMEOUT + GRACE for r in caught), [str(r) for r in caught]
    answered_in_the_dark = [r for r in results if dark <= r.start and r.end < healed]
    assert answered_in_the_dark, "no request was answered while the link was dark"
    assert {r.status for r in answered_in_the_dark} <= LOST
    assert set(ready_while_dark) == {503}
    since = [r for r in results if r.start >= healed]
    assert {r.status for r in since} <= {200, 503}, [str(r) for r in since if not r.ok]
    first = first_success_after(results, healed)
    assert first is not None

    longest_in_the_dark = max(r.duration for r in results if r.end > dark and r.start < healed)
    statuses = ", ".join(f"{kind}: {n}" for kind, n in sorted(summary(lost).items()))
    record(
        Row(
            scenario="3b. Network partition",
            vendor=db.vendor,
            requests=len(results),
            errors=errors_text(results),
            recovery_s=first.end - healed,
            connections_before=before,
            connections_after=after,
            outcome=(
                f"packets dropped for {dark_for:g} s with NETWORK_TIMEOUT={NETWORK_TIMEOUT} s: "
                f"{len(lost)} request(s) caught mid-statement failed ({statuses}); longest "
                f"request in the partition {longest_in_the_dark:.1f} s; borrowers 503 within "
                "TIMEOUT, readiness 503"
            ),
        )
    )
