"""The ASGI test site (``tests/asgisite``) under real ASGI servers: uvicorn with 2 workers,
gunicorn with 2 uvicorn workers (``uvicorn-worker``), and daphne as a smoke test, on the
suite's database, with request and transaction leases.

- 256 clients against ``MAX_SIZE`` 4 per worker: every request answered 200, the server's
  session count (sampled all along) never above workers x ``MAX_SIZE``, and afterwards no
  pool of any worker has a connection in use (the workers' published stats snapshots).
- Clients that send a request to a slow view and close the connection mid-request (Django
  ticket #35059) leave no connection out, and the site serves normally afterwards.
- ``/health/live``, ``/health/ready`` and ``PoolUnavailableMiddleware``'s 503 while a
  private database server is stopped, and back to 200 once it is restarted.
- SIGTERM under load: requests in flight finish (all 200), they see readiness turn 503 at
  once (uvicorn), the server exits 0, no session is left and neither database reports an
  unclean disconnect.

A short version of each runs by default; ``DBPOOL_SERVERS=full`` runs every server and
lease combination with more load.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests import processes
from tests.faults.load import Load, Result, get_paths
from tests.processes import asgi_server
from tools.dbservers import private_server

FULL = os.environ.get("DBPOOL_SERVERS") == "full"
WORKERS = 2
MAX_SIZE = 4
LEASES = ("request", "transaction")
ROWS = 10


def combos(*short: tuple[str, str]) -> list[tuple[str, str]]:
    """(server, lease) pairs: ``short`` by default, uvicorn and gunicorn with both leases in
    full mode."""
    return list(itertools.product(("uvicorn", "gunicorn"), LEASES)) if FULL else list(short)


def pooled_url(base: str, lease: str, **options: object) -> str:
    """``base`` (a pgpool:// or mysqlpool:// URL) with MAX_SIZE, LEASE and ``options`` as
    pool_* query parameters."""
    params = {"max_size": MAX_SIZE, "lease": lease, "timeout": 30, **options}
    query = "&".join(f"pool_{key}={value}" for key, value in params.items())
    return f"{base}{'&' if '?' in base else '?'}{query}"


def get(url: str, timeout: float = 30) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def prepare_site(url: str, stats_dir: Path) -> None:
    """The site's table on ``url``'s database, with ROWS rows."""
    processes.asgisite_django(url, stats_dir, "migrate", "--run-syncdb", "-v", "0")
    processes.asgisite_django(
        url,
        stats_dir,
        "shell",
        "-c",
        "from tests.asgisite.models import Item; Item.objects.all().delete(); "
        f"Item.objects.bulk_create(Item(value=f'item {{i}}') for i in range({ROWS}))",
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The suite's real database, with the site's table: its pgpool:// or mysqlpool:// URL."""
    url = processes.database_url()
    prepare_site(url, tmp_path_factory.mktemp("asgi-migrate"))
    return url


@pytest.fixture
def stats_dir(tmp_path: Path) -> Path:
    """A directory of this test's own for the servers' stats snapshots."""
    directory = tmp_path / "stats"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Path]:
    """Where the server writes its output; printed afterwards (pytest shows it when the test
    fails)."""
    path = tmp_path / "server.log"
    yield path
    if path.exists():
        print(path.read_text(errors="replace")[-20_000:])


def failures(results: list[Result]) -> list[str]:
    return [str(r) for r in results if r.status != 200]


def at_rest(stats_dir: Path, after: float, limit: float = 30) -> dict[int, dict[str, Any]]:
    """Every pooled process's snapshot, once each has published one since ``after`` with
    nothing in use: asserts that this happens."""
    pids = set(processes.pool_snapshots(stats_dir))
    assert pids, "no server process published pool stats"
    snapshots = processes.wait_for_pools_at_rest(stats_dir, pids, after, limit)
    in_use = {
        pid: {alias: pool["stats"]["gauges"]["in_use"] for alias, pool in s["pools"].items()}
        for pid, s in snapshots.items()
    }
    assert set(snapshots) == pids, f"processes that stopped publishing: {pids - set(snapshots)}"
    assert all(n == 0 for pools in in_use.values() for n in pools.values()), in_use
    return snapshots


def total(snapshots: dict[int, dict[str, Any]], stat: str) -> int:
    return sum(
        pool["stats"]["counters"][stat] for s in snapshots.values() for pool in s["pools"].values()
    )


@pytest.mark.parametrize(
    ("server", "lease"), combos(("uvicorn", "request"), ("gunicorn", "transaction"))
)
def test_256_clients_stay_within_the_bound_and_return_every_connection(
    site: str, stats_dir: Path, log: Path, server: str, lease: str
) -> None:
    unclean = processes.UncleanDisconnects()
    paths = ["/async", "/sync", "/async-thread", "/slow?seconds=0.05", "/sync-slow?seconds=0.02"]
    with asgi_server(server, pooled_url(site, lease), stats_dir, WORKERS, log) as (_, base):
        sampler = processes.SessionSampler().start()
        load = Load(base, clients=256, request=get_paths(paths), requests=20 if FULL else 2)
        results = load.start().join()
        finished = time.time()
        samples = sampler.stop()
        assert failures(results) == []
        assert len(results) == 256 * (20 if FULL else 2)
        # Sampled during the whole load; the pools opened their connections under it.
        assert 0 < max(samples) <= WORKERS * MAX_SIZE, samples
        snapshots = at_rest(stats_dir, finished)
        # The snapshots account for every request: each borrowed at least one connection.
        assert total(snapshots, "acquired") >= len(results)
        assert total(snapshots, "timeouts") == 0
        assert total(snapshots, "orphans_reclaimed") == 0
    assert processes.wait_for_no_app_sessions() == 0
    assert unclean.since() == 0


def send_and_hang_up(base: str, paths: list[str], linger: float) -> int:
    """Open one connection per path, send a GET for it, wait ``linger`` seconds (the
    requests reach their views) and close every connection before any answer: how many
    answered before the close (a view faster than ``linger``)."""
    host, port = base.removeprefix("http://").split(":")
    sockets = []
    try:
        for path in paths:
            sock = socket.create_connection((host, int(port)), timeout=30)
            sockets.append(sock)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        time.sleep(linger)
        answered = 0
        for sock in sockets:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                answered += bool(sock.recv(1))
        return answered
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize(
    ("server", "lease"), combos(("uvicorn", "request"), ("gunicorn", "transaction"))
)
def test_clients_that_disconnect_mid_request_leave_no_connection_out(
    site: str, stats_dir: Path, log: Path, server: str, lease: str
) -> None:
    clients = 256 if FULL else 32
    # Async views cancelled at their await, and sync views that run to their end; many
    # of them wait for a connection when their client goes (MAX_SIZE 4 per worker).
    paths = ["/slow?seconds=3", "/slow?seconds=3", "/slow?seconds=3", "/sync-slow?seconds=1"]
    paths *= clients // len(paths)
    with asgi_server(server, pooled_url(site, lease), stats_dir, WORKERS, log) as (_, base):
        rounds = 3 if FULL else 1
        for _ in range(rounds):
            assert send_and_hang_up(base, paths, linger=0.5) == 0
        hung_up = time.time()
        # The sync views run to their end, a few at a time (MAX_SIZE per worker).
        at_rest(stats_dir, hung_up, limit=90)
        # Every connection is still there to serve: a full round of ordinary requests.
        load = Load(
            base, clients=16, request=get_paths(["/async", "/sync", "/async-thread"]), requests=8
        )
        results = load.start().join()
        assert failures(results) == []
        # Returned by their requests, not reclaimed from exited threads. (Checkouts of
        # abandoned requests may have timed out in the queue: nobody was waiting for them.)
        snapshots = at_rest(stats_dir, time.time())
        assert total(snapshots, "orphans_reclaimed") == 0
    assert processes.wait_for_no_app_sessions() == 0


@pytest.mark.parametrize(
    ("server", "lease"),
    [("uvicorn", "request"), ("gunicorn", "transaction")] if FULL else [("uvicorn", "request")],
)
def test_health_and_503_follow_the_database_down_and_back_up(
    stats_dir: Path, log: Path, server: str, lease: str
) -> None:
    scheme = {"postgresql": "pgpool", "mysql": "mysqlpool"}[settings.DATABASE_VENDOR]
    with private_server(settings.DATABASE_VENDOR) as db:
        base_url = f"{scheme}://{db.url.split('://', 1)[1]}"
        prepare_site(base_url, stats_dir)
        url = pooled_url(base_url, lease, timeout=2)
        with asgi_server(server, url, stats_dir, WORKERS, log) as (_, base):
            status, body, _ = get(f"{base}/health/ready")
            assert (status, json.loads(body)["status"]) == (200, "ready")
            for path in ("/async", "/sync", "/async-thread"):
                status, body, _ = get(base + path)
                assert status == 200, body
                assert json.loads(body)["count"] == ROWS

            db.stop()
            # Every answer comes back and says 503, whatever state each worker's pool is in
            # (idle connections dead, or connects refused): readiness, and the middleware's
            # page with Retry-After for views whose queries fail.
            for _ in range(3 if FULL else 2):
                status, body, _ = get(f"{base}/health/ready")
                assert (status, json.loads(body)["status"]) == (503, "unavailable"), body
                for path in ("/async", "/sync", "/async-thread"):
                    status, body, headers = get(base + path)
                    assert status == 503, (path, body[:500])
                    assert "Retry-After" in headers, headers
            status, body, _ = get(f"{base}/health/live")
            assert (status, json.loads(body)["status"]) == (200, "alive")

            db.restart()
            # Each worker's pool notices on its own (at its next request): every answer is
            # a 200 or a 503 meanwhile, and then six in a row of each path are 200s.
            paths = ["/health/ready", "/async", "/sync", "/async-thread"]
            deadline = time.monotonic() + 60
            statuses: list[tuple[str, int]] = []
            while time.monotonic() < deadline:
                for path in paths:
                    statuses.append((path, get(base + path)[0]))
                if len(statuses) >= 6 * len(paths) and all(
                    status == 200 for _, status in statuses[-6 * len(paths) :]
                ):
                    break
                time.sleep(0.1)
            assert {status for _, status in statuses} <= {200, 503}, statuses
            assert all(status == 200 for _, status in statuses[-6 * len(paths) :]), statuses


def slow_probe(base: str, seconds: float, answers: list[tuple[int, dict[str, Any]]]) -> None:
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
    try:
        conn.request("GET", f"/slow?seconds={seconds}")
        response = conn.getresponse()
        answers.append((response.status, json.loads(response.read())))
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("server", "lease"), combos(("uvicorn", "transaction"), ("gunicorn", "request"))
)
def test_sigterm_drains_under_load_with_every_request_answered(
    site: str, stats_dir: Path, log: Path, server: str, lease: str
) -> None:
    unclean = processes.UncleanDisconnects()
    with asgi_server(server, pooled_url(site, lease), stats_dir, WORKERS, log) as (process, base):
        load = Load(
            base,
            clients=48 if FULL else 12,
            request=get_paths(["/slow?seconds=1", "/async", "/sync-slow?seconds=0.2", "/sync"]),
        )
        load.start()
        load.wait_for(lambda results: len(results) >= (100 if FULL else 20))
        # Two slow requests of our own, sure to be in their views when SIGTERM comes and
        # to ask readiness after it.
        answers: list[tuple[int, dict[str, Any]]] = []
        probes = [threading.Thread(target=slow_probe, args=(base, 1.5, answers)) for _ in range(2)]
        for probe in probes:
            probe.start()
        time.sleep(0.5)
        load.stop_starting()
        with load.lock:
            in_flight_at_sigterm = load.in_flight
        process.send_signal(signal.SIGTERM)
        results = load.join()
        for probe in probes:
            probe.join(60)
        assert process.wait(90) == 0
    assert in_flight_at_sigterm > 0
    assert failures(results) == []
    assert [status for status, _ in answers] == [200, 200]
    if server == "uvicorn":
        # Our handler runs before uvicorn's: readiness says 503 from the signal on (it
        # does whenever the process is draining, see tests/test_health.py).
        assert [body["draining"] for _, body in answers] == [True, True]
    assert processes.wait_for_no_app_sessions() == 0
    assert unclean.since() == 0


@pytest.mark.parametrize("lease", LEASES if FULL else ("request",))
def test_daphne_serves_the_site_and_exits_cleanly(
    site: str, stats_dir: Path, log: Path, lease: str
) -> None:
    unclean = processes.UncleanDisconnects()
    with asgi_server("daphne", pooled_url(site, lease), stats_dir, 1, log) as (process, base):
        for path in ("/async", "/sync", "/async-thread", "/slow?seconds=0.1", "/health/ready"):
            status, body, _ = get(base + path)
            assert status == 200, (path, body[:500])
        load = Load(base, clients=32, request=get_paths(["/async", "/sync"]), requests=4)
        assert failures(load.start().join()) == []
        at_rest(stats_dir, time.time())
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    assert processes.wait_for_no_app_sessions() == 0
    assert unclean.since() == 0
