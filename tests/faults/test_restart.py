"""Fault scenario 1: the database restarts under load (PostgreSQL's fast shutdown, MariaDB's
stop and start). While it is down, requests fail fast with 503 and readiness says 503; once
it accepts connections again, the same worker processes serve again, and no request that
starts after it is back gets a dead connection."""

from __future__ import annotations

import time

from tests.faults.harness import FULL, GRACE, get, private_database, record, serving
from tests.faults.load import Load, errors_text, first_success_after, get_paths, unanswered
from tests.faults.report import Row

TIMEOUT = 3
BACKOFF_MAX = 1


def test_database_restart_fails_fast_and_recovers_without_a_process_restart() -> None:
    rounds, down_for = (3, 4.0) if FULL else (1, 2.0)
    with private_database() as db:
        url = db.app_url(max_size=4, timeout=TIMEOUT, backoff_max=BACKOFF_MAX)
        with serving(url) as app:
            workers = app.worker_pids()
            load = Load(app.base, clients=8, request=get_paths(["/"]), pause=0.01).start()
            load.wait_for(lambda rs: sum(r.ok for r in rs) >= 20)
            before = db.sessions()
            # (stop begun, server gone, server back)
            downs: list[tuple[float, float, float]] = []
            ready_while_down: list[int] = []
            recoveries: list[float] = []
            for _ in range(rounds):
                stopping = time.monotonic()
                db.stop()  # returns once the server process has exited
                gone = time.monotonic()
                deadline = gone + down_for
                while time.monotonic() < deadline:
                    ready_while_down.append(get(f"{app.base}/health/ready", timeout=60)[0])
                    time.sleep(0.2)
                db.start()  # returns once the server accepts connections
                back = time.monotonic()
                downs.append((stopping, gone, back))
                load.wait_for(lambda rs, t=back: sum(r.ok and r.start >= t for r in rs) >= 20)
                first = first_success_after(load.snapshot(), back)
                assert first is not None
                recoveries.append(first.end - back)
            results = load.run_until_stopped()
            after = db.sessions()
            # Served again by the very processes that saw the database go: nothing restarted.
            assert app.worker_pids() == workers

    assert unanswered(results) == []
    # Nothing hangs: a request waits at most TIMEOUT for a connection (GRACE: see harness).
    assert max(r.duration for r in results) < TIMEOUT + GRACE
    ends = [stopping for stopping, _, _ in downs[1:]] + [float("inf")]
    for (_, gone, back), next_stop in zip(downs, ends, strict=True):
        # Started while the server was down: a 503 (never a 500 from a dead connection), or,
        # for one that reached the database after it came back, a success.
        during = [r for r in results if gone <= r.start < back]
        assert during, "no request was sent while the database was down"
        assert {r.status for r in during} <= {503, 200}, [str(r) for r in during if r.status != 503]
        assert any(r.status == 503 for r in during)
        assert all(r.retry_after for r in during if r.status == 503)
        # Started once it accepted connections again (and over before the next stop): never
        # a stale-connection error, only a 503 from a worker whose pool had not reconnected.
        since = [r for r in results if r.start >= back and r.end < next_stop]
        assert {r.status for r in since} <= {200, 503}, [str(r) for r in since if not r.ok]
    assert ready_while_down
    assert set(ready_while_down) == {503}
    # The first success after the restart: reported, and bounded by the reconnect backoff
    # plus a connect and a request, with the hang guard's grace (a tighter bound would
    # measure the machine, not the pool).
    assert max(recoveries) < BACKOFF_MAX + TIMEOUT + GRACE

    record(
        Row(
            scenario="1. Database restart",
            vendor=db.vendor,
            requests=len(results),
            errors=errors_text(results),
            recovery_s=max(recoveries),
            connections_before=before,
            connections_after=after,
            outcome=(
                f"{rounds} restart(s), down {down_for:g} s each: 503 while down, readiness "
                "503, same workers serve again, no stale-connection error"
            ),
        )
    )
