"""The example project under a real gunicorn (2 gthread workers): readiness follows the
database down and back up, and SIGTERM drains under load with nothing lost."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest
from django.conf import settings

from tests import processes
from tests.faults.load import Load, get_paths
from tests.processes import gunicorn
from tools.dbservers import private_server


def get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_readiness_follows_the_database_down_and_back_up() -> None:
    scheme = {"postgresql": "pgpool", "mysql": "mysqlpool"}[settings.DATABASE_VENDOR]
    with private_server(settings.DATABASE_VENDOR) as db:
        url = f"{scheme}://{db.url.split('://', 1)[1]}"
        with gunicorn(url) as (_, base):
            status, body = get(f"{base}/health/ready")
            assert status == 200, body
            assert json.loads(body)["status"] == "ready"

            db.stop()
            # Every answer comes back (nothing hangs) and says 503, whichever worker and
            # whatever state its pool is in (idle connections dead, or connects refused).
            for _ in range(6):
                status, body = get(f"{base}/health/ready")
                assert status == 503, body
                assert json.loads(body)["status"] == "unavailable"
            assert get(f"{base}/health/live")[0] == 200

            db.restart()
            deadline = time.monotonic() + 60
            statuses: list[int] = []
            while time.monotonic() < deadline:
                statuses.append(get(f"{base}/health/ready")[0])
                if statuses[-3:] == [200, 200, 200]:
                    break
                time.sleep(0.2)
            assert statuses[-3:] == [200, 200, 200], statuses


@pytest.mark.django_db(transaction=True)
def test_sigterm_drains_under_load_with_every_request_answered() -> None:
    processes.manage("migrate", "--noinput", "-v", "0")
    processes.manage("demo_data")
    unclean = processes.UncleanDisconnects()
    with gunicorn(processes.database_url()) as (server, base):
        # GET / and, for one request in four, the one-second /report/.
        load = Load(base, clients=12, request=get_paths(["/report/", "/", "/", "/"]))
        load.start()
        deadline = time.monotonic() + 30
        # Run until slow requests are in flight and some requests are done.
        while time.monotonic() < deadline:
            with load.lock:
                if len(load.results) >= 20 and load.in_flight >= 6:
                    break
            time.sleep(0.05)
        load.stop_starting()
        with load.lock:
            in_flight_at_sigterm = load.in_flight
        server.send_signal(signal.SIGTERM)
        results = load.join()
        assert server.wait(90) == 0
    assert in_flight_at_sigterm > 0
    failures = [str(r) for r in results if r.status != 200]
    assert failures == []
    assert len(results) >= 20
    assert processes.wait_for_no_app_sessions() == 0
    assert unclean.since() == 0
