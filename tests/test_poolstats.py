"""poolstats, /metrics and the server view across two real gunicorn workers under load."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from django_dbpool import snapshots
from tests import processes
from tests.pool.fakes import FakeClock, closing, make_pool
from tests.test_stats_dir import snapshot_document, write


def poolstats(stats_dir: Path, *args: str, check: bool = True) -> dict[str, object]:
    """``poolstats --json``; with ``check=False`` an empty report while nothing publishes."""
    result = subprocess.run(
        [sys.executable, processes.MANAGE, "poolstats", "--json", *args],
        env=processes.project_env(DBPOOL_STATS_DIR=str(stats_dir)),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        if check or "No process publishes" not in result.stderr:
            raise AssertionError(result.stderr)
        return {"processes": []}
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def metric_samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            assert name not in samples, f"duplicate series {name}"
            samples[name] = float(value)
    return samples


#: How long the leases of lease_document's parked connections were held.
PARKED_HOLD = 0.25


def lease_document(
    pid: int,
    lease: str,
    holds: Sequence[float],
    pins: Sequence[tuple[str, bool]] = (),
    rate: float = 0.0,
    parked: int = 0,
) -> dict[str, Any]:
    """A snapshot of a process on another host whose ``default`` pool lent a connection for
    each of ``holds`` seconds (on a fake clock), counted ``pins`` ((reason, first) each) and
    has ``parked`` connections parked."""
    clock = FakeClock()
    pool, _ = make_pool(clock=clock, MAX_SIZE=4)
    with closing(pool):
        for seconds in holds:
            with pool.connection():
                clock.advance(seconds)
        for reason, first in pins:
            pool.count_pin(reason, first=first)
        # Parked leases are leases too: each held for PARKED_HOLD seconds.
        conns = [pool.acquire() for _ in range(parked)]
        clock.advance(PARKED_HOLD)
        for conn in conns:
            pool.park(conn)
        stats = pool.stats()
    document = snapshot_document(pid)
    document["pools"]["default"].update(
        lease=lease,
        stats=stats.as_dict(),
        checkouts_per_second=rate,
        hold_p99_seconds=snapshots.percentile(stats, "hold_seconds", 0.99),
    )
    return document


#: Every lease of the documents of write_lease_documents(), parked ones included.
LEASE_DOCUMENTS_HOLDS = (0.125, 0.375, 0.5, *(PARKED_HOLD,) * 3)
#: The pins by reason that the documents of write_lease_documents() add up to.
LEASE_DOCUMENTS_PINS = {
    "transaction": 1,
    "cursor": 3,
    "pinned": 0,
    "raw_connection": 0,
    "session_sql": 1,
    "shared": 0,
}


def write_lease_documents(directory: Path) -> None:
    """Three processes: two with transaction leases that were pinned, one with request
    leases that lent nothing yet."""
    directory.mkdir(mode=0o700)
    pins_a = [("transaction", True), ("cursor", False), ("cursor", True)]
    write(directory, lease_document(424242, "transaction", [0.125, 0.375], pins_a, 2.5, 1))
    pins_b = [("cursor", True), ("session_sql", False)]
    write(directory, lease_document(434343, "transaction", [0.5], pins_b, 1.5, 2))
    write(directory, lease_document(444444, "request", []))


def test_poolstats_without_publishers_says_where_it_looked(
    tmp_path: Path, settings: object
) -> None:
    settings.DBPOOL_STATS_DIR = str(tmp_path / "nothing")  # type: ignore[attr-defined]
    with pytest.raises(CommandError, match=r"No process publishes pool stats in .*nothing"):
        call_command("poolstats")


def test_poolstats_refuses_a_directory_others_can_write(tmp_path: Path, settings: object) -> None:
    directory = tmp_path / "stats"
    directory.mkdir(mode=0o700)
    write(directory, snapshot_document())
    directory.chmod(0o777)
    settings.DBPOOL_STATS_DIR = str(directory)  # type: ignore[attr-defined]
    with pytest.raises(CommandError) as refused:
        call_command("poolstats")
    message = str(refused.value)
    assert f"Not publishing or reading pool stats in {directory}" in message
    assert "writable by other users" in message
    assert "DBPOOL_STATS_DIR" in message


def test_poolstats_prints_no_control_characters_from_a_snapshot(
    tmp_path: Path, settings: object
) -> None:
    directory = tmp_path / "stats"
    directory.mkdir(mode=0o700)
    settings.DBPOOL_STATS_DIR = str(directory)  # type: ignore[attr-defined]
    # Retitle the terminal, clear the screen, a C1 CSI, right-to-left override.
    write(directory, snapshot_document(alias="evil\x1b]0;owned\x07\x1b[2J\x9b\u202e"))
    shown = {}
    for args in [(), ("--json",)]:
        out = io.StringIO()
        call_command("poolstats", *args, stdout=out)
        shown[args] = out.getvalue()
        assert all(c == "\n" or c.isprintable() for c in shown[args]), shown[args]
    # Escaped, not dropped: the odd alias is still there to be noticed.
    assert "evil\\x1b]0;owned\\x07\\x1b[2J\\x9b\\u202e" in shown[()]


def test_poolstats_shows_each_lease_mode_hold_times_and_pins(
    tmp_path: Path, settings: object
) -> None:
    directory = tmp_path / "stats"
    write_lease_documents(directory)
    settings.DBPOOL_STATS_DIR = str(directory)  # type: ignore[attr-defined]
    out = io.StringIO()
    call_command("poolstats", stdout=out)
    lines = out.getvalue().splitlines()
    start = lines.index("Leases per process, and totals per alias")
    assert lines[start + 1 :] == [
        "     pid     alias       lease parked leases/s hold mean hold p99 pinned  pins",
        "  424242   default transaction      1      2.5   250.0ms  375.0ms      2"
        "  transaction 1, cursor 2",
        "  434343   default transaction      2      1.5   333.3ms  500.0ms      1"
        "  cursor 1, session_sql 1",
        "  444444   default     request      0      0.0         -        -      0  -",
        "  3 proc   default       mixed      3      4.0   291.7ms               3"
        "  transaction 1, cursor 3, session_sql 1",
    ]

    out = io.StringIO()
    call_command("poolstats", "--json", stdout=out)
    report = json.loads(out.getvalue())
    total = report["totals"]["default"]
    assert total["lease"] == "mixed"
    assert total["leases"] == {"transaction": 2, "request": 1}
    hold = total["histograms"]["hold_seconds"]
    assert (hold["count"], hold["sum"]) == (len(LEASE_DOCUMENTS_HOLDS), sum(LEASE_DOCUMENTS_HOLDS))
    # The merged histogram's cumulative buckets end with every value.
    assert hold["buckets"]["+Inf"] == len(LEASE_DOCUMENTS_HOLDS)
    assert total["counters"]["pinned"] == 3
    assert total["counters"]["pins"] == LEASE_DOCUMENTS_PINS
    assert [p["pools"]["default"]["lease"] for p in report["processes"]] == [
        "transaction",
        "transaction",
        "request",
    ]
    assert [p["pools"]["default"]["hold_p99_seconds"] for p in report["processes"]] == [
        0.375,
        0.5,
        None,
    ]


@pytest.mark.django_db(transaction=True)
def test_two_workers_poolstats_metrics_and_server_view(tmp_path: Path) -> None:
    processes.manage("migrate", "--noinput", "-v", "0")
    processes.manage("demo_data")
    stats_dir = tmp_path / "stats"
    with processes.gunicorn(processes.database_url(), DBPOOL_STATS_DIR=str(stats_dir)) as (
        server,
        base,
    ):
        stop = threading.Event()

        def client() -> None:
            for _ in range(5000):  # bounded; stopped long before
                if stop.is_set():
                    return
                urllib.request.urlopen(f"{base}/", timeout=30).read()

        clients = [threading.Thread(target=client) for _ in range(8)]
        for thread in clients:
            thread.start()
        try:
            deadline = time.monotonic() + 60
            while True:
                report = poolstats(stats_dir, check=False)
                if len(report["processes"]) == 2:  # type: ignore[arg-type]
                    break
                assert time.monotonic() < deadline, report
                time.sleep(0.5)
        finally:
            stop.set()
            for thread in clients:
                thread.join(60)
        time.sleep(2.5)  # two publications after the load: every figure is settled

        report = poolstats(stats_dir)
        workers = report["processes"]
        assert isinstance(workers, list)
        assert len(workers) == 2
        assert all(parent_of(w["pid"]) == server.pid for w in workers)
        total = report["totals"]["default"]  # type: ignore[index]
        acquired = [w["pools"]["default"]["stats"]["counters"]["acquired"] for w in workers]
        assert total["counters"]["acquired"] == sum(acquired)
        assert all(n > 0 for n in acquired)  # both workers served requests
        assert total["gauges"]["max_size"] == 20
        assert total["processes"] == 2
        # The example project lends connections per request: one lease per checkout, never
        # pinned, each hold time in the histogram.
        assert total["lease"] == "request"
        assert [w["pools"]["default"]["lease"] for w in workers] == ["request", "request"]
        assert total["counters"]["pinned"] == 0
        assert total["histograms"]["hold_seconds"]["count"] == sum(acquired)

        # Any worker's /metrics reports both, once each, in line with poolstats.
        for _ in range(2):
            text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
            samples = metric_samples(text)
            vendor = workers[0]["pools"]["default"]["vendor"]
            labels = f'alias="default",vendor="{vendor}"'
            assert samples[f"django_dbpool_processes{{{labels}}}"] == 2
            assert samples[f"django_dbpool_max_connections{{{labels}}}"] == 20
            assert samples[f"django_dbpool_checkouts_total{{{labels}}}"] == sum(acquired)
            mode = f'alias="default",mode="request",vendor="{vendor}"'  # labels sorted by name
            assert samples[f"django_dbpool_lease_mode{{{mode}}}"] == 2
            assert samples[f"django_dbpool_pinned_leases_total{{{labels}}}"] == 0
            reason = f'alias="default",reason="cursor",vendor="{vendor}"'
            assert samples[f"django_dbpool_lease_pins_total{{{reason}}}"] == 0

        # The server's view, while slow reports run (one after another, so that one is
        # running whenever the view is read, however long poolstats takes to start): the
        # app's connection by its tag.
        seen = threading.Event()

        def reports() -> None:
            for _ in range(30):
                urllib.request.urlopen(f"{base}/report/", timeout=60).read()
                if seen.is_set():
                    return

        slow = threading.Thread(target=reports)
        slow.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                view = poolstats(stats_dir, "--server")["server"]["default"]  # type: ignore[index]
                tagged = [
                    g
                    for g in view["groups"]
                    if g["tag"].startswith("example_project:") and g["state"] == "active"
                ]
                if tagged:
                    break
                assert time.monotonic() < deadline, view
        finally:
            seen.set()
            slow.join(60)
        assert view["max_connections"] > 0
        assert view["headroom"] == view["max_connections"] - view["reserved"] - view["in_use"]


@pytest.mark.django_db(transaction=True)
def test_metrics_in_django_prometheus_multiprocess_mode(tmp_path: Path) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    processes.manage("migrate", "--noinput", "-v", "0")
    env = {"DBPOOL_STATS_DIR": str(tmp_path / "stats"), "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    with processes.gunicorn(processes.database_url(), **env) as (_, base):
        vendor = None
        deadline = time.monotonic() + 60
        while True:
            for _ in range(20):
                urllib.request.urlopen(f"{base}/", timeout=30).read()
            text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
            samples = metric_samples(text)
            processes_seen = {
                name: value
                for name, value in samples.items()
                if name.startswith('django_dbpool_processes{alias="default"')
            }
            counted = [
                v for n, v in samples.items() if n.startswith("django_dbpool_checkouts_total{")
            ]
            if processes_seen and max(processes_seen.values()) == 2 and counted and counted[0]:
                vendor = next(iter(processes_seen))
                break
            assert time.monotonic() < deadline, text[:3000]
            time.sleep(0.5)
    assert vendor is not None
    checkouts = [v for n, v in samples.items() if n.startswith("django_dbpool_checkouts_total{")]
    assert checkouts
    assert checkouts[0] > 0
    assert any(n.startswith("django_db_execute_total{") for n in samples)
    # Each live worker counts once under its LEASE (livesum).
    mode = f'alias="default",mode="request",vendor="{connection.vendor}"'
    assert samples[f"django_dbpool_lease_mode{{{mode}}}"] == 2


@pytest.mark.django_db(transaction=True)
def test_watch_redraws_until_ctrl_c(tmp_path: Path) -> None:
    import signal

    from django.db import connection

    from django_dbpool import snapshots

    connection.ensure_connection()  # this test process has a pool, and publishes it
    published = snapshots.publish_now()
    assert published is not None
    watcher = subprocess.Popen(
        [sys.executable, processes.MANAGE, "poolstats", "--watch", "0.2"],
        env=processes.project_env(DBPOOL_STATS_DIR=str(published.parent)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        screens = 0
        for line in watcher.stdout:
            screens += line.count("\x1b[2J")
            if screens >= 2:
                break
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(30) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert screens >= 2
