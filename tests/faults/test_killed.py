"""Fault scenario 2: every app session killed on the server under load (PostgreSQL
``pg_terminate_backend``, MariaDB ``KILL CONNECTION``). Only the statements running at that
instant fail, each with a 503 (its connection was lost), never a 500; killed idle
connections are found and replaced without a user-visible error."""

from __future__ import annotations

import time

from tests.faults.harness import FULL, GRACE, private_database, record, serving
from tests.faults.load import (
    Load,
    errors_text,
    first_success_after,
    get_paths,
    internal_errors,
    recovery_by_worker,
    unanswered,
)
from tests.faults.report import Row

TIMEOUT = 5


def test_killed_sessions_fail_only_the_statements_running_then() -> None:
    rounds = 4 if FULL else 1
    with (
        private_database() as db,
        serving(db.app_url(max_size=4, timeout=TIMEOUT), record_workers=True) as app,
    ):
        # Mostly fast pages (their connections are idle in the pool at the kill) and some
        # one-second reports (whose statement is running at the kill).
        load = Load(app.base, clients=6, request=get_paths(["/", "/", "/report/"]))
        workers = app.worker_pids()
        load.start()
        load.wait_for(lambda rs: sum(r.ok for r in rs) >= 20)
        before = db.sessions()
        windows: list[tuple[float, float]] = []
        recoveries: list[float] = []
        killed = 0
        for _ in range(rounds):
            begun = time.monotonic()
            killed += db.kill_sessions()
            # Every session killed is gone from the server when kill_sessions returns.
            ended = time.monotonic()
            windows.append((begun, ended))
            load.wait_for(lambda rs, t=ended: sum(r.ok and r.start >= t for r in rs) >= 20)
            first = first_success_after(load.snapshot(), ended)
            assert first is not None
            recoveries.append(first.end - ended)
            time.sleep(1.5 if FULL else 0)  # let connections sit idle past VALIDATE_AFTER
        results = app.with_workers(load.run_until_stopped())
        after = db.sessions()
        assert app.worker_pids() == workers

    assert killed >= 2
    assert unanswered(results) == []
    # Requests in flight while sessions were being killed may fail (their statement was
    # running); every other request succeeds: none got a dead connection from the pool.
    overlapping = [
        r for r in results if any(r.start < end and r.end > begin for begin, end in windows)
    ]
    failed_elsewhere = [r for r in results if not r.ok and r not in overlapping]
    assert failed_elsewhere == [], "\n".join(map(str, failed_elsewhere))
    # Those that failed lost their connection mid-statement: a 503 with Retry-After.
    assert internal_errors(results) == [], [str(r) for r in internal_errors(results)]
    for r in results:
        if not r.ok:
            assert r.status == 503, r
            assert r.retry_after, r
    assert max(r.duration for r in results) < 1 + TIMEOUT + GRACE
    worker_recoveries: dict[int, float] = {}
    for (_, ended), next_kill in zip(
        windows, [begun for begun, _ in windows[1:]] + [float("inf")], strict=True
    ):
        since = [r for r in results if r.start >= ended and r.end < next_kill]
        for worker, seconds in recovery_by_worker(since, ended).items():
            if seconds is not None:
                worker_recoveries[worker] = max(worker_recoveries.get(worker, 0.0), seconds)

    record(
        Row(
            scenario="2. Killed sessions",
            vendor=db.vendor,
            requests=len(results),
            errors=errors_text(results),
            recovery_s=max(recoveries),
            connections_before=before,
            connections_after=after,
            outcome=(
                f"{rounds} kill(s) of every app session ({killed} killed); only requests "
                "running at the kill failed, with a 503"
            ),
            server_errors=len(internal_errors(results)),
            worker_recovery_s=sorted(worker_recoveries.values()),
        )
    )
