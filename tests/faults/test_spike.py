"""Fault scenario 4: a spike of 256 concurrent clients against MAX_SIZE 4 per worker.
Without MAX_WAITING every request waits its turn and succeeds; with it, the excess gets an
immediate 503 with Retry-After and the rest succeed. The server never sees more sessions
than 2 workers x MAX_SIZE."""

from __future__ import annotations

from typing import Any

from tests.faults.harness import (
    FULL,
    GRACE,
    Database,
    SessionSampler,
    private_database,
    record,
    serving,
)
from tests.faults.load import Load, Result, errors_text, get_paths, unanswered
from tests.faults.report import Row

CLIENTS = 256
MAX_SIZE = 4
WORKERS = 2
# Long enough that no request waits it out: every 503 below is a PoolExhausted.
TIMEOUT = 60
# Enough gunicorn threads that most of the spike reaches the pool rather than gunicorn's
# accept queue.
THREADS = 64


def spike(db: Database, **pool: Any) -> tuple[list[Result], int, dict[str, int]]:
    """Every client sends its requests at once; (results, most server sessions seen at
    once, the workers' pool counters)."""
    url = db.app_url(max_size=MAX_SIZE, timeout=TIMEOUT, **pool)
    with serving(url, threads=THREADS) as app:
        # Nothing else may connect to the server while the sampler counts.
        with SessionSampler(db) as sampler:
            load = Load(
                app.base,
                clients=CLIENTS,
                request=get_paths(["/"]),
                requests=4 if FULL else 2,
                timeout=TIMEOUT + GRACE,
            ).start()
            results = load.join()
        assert sampler.samples > 0
        counters = app.settled_pool_counters()
    return results, sampler.peak, counters


def test_spike_waits_within_the_bound_and_max_waiting_sheds_the_excess() -> None:
    with private_database() as db:
        before = db.sessions()
        queued, queued_peak, queued_counters = spike(db)
        shed, shed_peak, shed_counters = spike(db, max_waiting=8)
        after = db.sessions()

    # Without MAX_WAITING: every request waits for a connection and succeeds.
    assert unanswered(queued) == []
    assert [str(r) for r in queued if r.status != 200] == []
    assert len(queued) == CLIENTS * (4 if FULL else 2)
    assert queued_counters["timeouts"] == 0
    # With MAX_WAITING: a 503 with Retry-After for the excess, raised at once (no request
    # waited out TIMEOUT), and success for the rest.
    assert unanswered(shed) == []
    statuses = {r.status for r in shed}
    assert statuses <= {200, 503}, [str(r) for r in shed if r.status not in (200, 503)]
    rejected = [r for r in shed if r.status == 503]
    assert rejected, "MAX_WAITING=8 turned nobody away from 256 clients"
    assert all(r.retry_after for r in rejected)
    assert shed_counters["timeouts"] == 0
    assert shed_counters["exhausted"] == len(rejected)
    assert any(r.status == 200 for r in shed)
    # The bound, as the server saw it.
    assert queued_peak <= WORKERS * MAX_SIZE
    assert shed_peak <= WORKERS * MAX_SIZE

    slowest_rejection = max(r.duration for r in rejected)
    record(
        Row(
            scenario="4. Spike and exhaustion",
            vendor=db.vendor,
            requests=len(queued) + len(shed),
            errors=f"{errors_text(queued)} queued; {errors_text(shed)} with MAX_WAITING=8",
            recovery_s=None,
            connections_before=before,
            connections_after=after,
            outcome=(
                f"{CLIENTS} clients, MAX_SIZE {MAX_SIZE} x {WORKERS} workers: server sessions "
                f"peaked at {max(queued_peak, shed_peak)}; slowest 503 {slowest_rejection:.2f} s"
            ),
        )
    )
