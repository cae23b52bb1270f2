"""The stats directory is this user's alone, and what is read from it is checked.

Another local user must not be able to forge, hide or delete the figures that ``poolstats``,
``/metrics`` and the admin page show, nor crash them: a directory that is not private is
neither published to nor read (one warning per process, naming the setting that fixes it),
snapshot files are never read through a symbolic link, and a malformed document is skipped
with a warning naming its file.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from django_dbpool import snapshots
from django_dbpool.dashboard import dashboard_data
from tests.pool.fakes import closing, make_pool

OTHER_UID = 65534  # nobody


def snapshot_document(pid: int = 424242, alias: str = "default") -> dict[str, Any]:
    """A snapshot as a process on another host publishes it (so it is kept although no such
    pid runs here), with the stats of a real pool that served one checkout."""
    pool, _ = make_pool(MAX_SIZE=4)
    with closing(pool):
        with pool.connection():
            pass
        stats = pool.stats()
    return {
        "pid": pid,
        "host": "elsewhere",
        "process": "gunicorn example_project.wsgi",
        "started_at": 1000.0,
        "updated_at": 1001.0,
        "interval": 1.0,
        "pools": {
            alias: {
                "vendor": "postgresql",
                "lease": "request",
                "stats": stats.as_dict(),
                "checkouts_per_second": 2.5,
                "wait_p99_seconds": None,
                "hold_p99_seconds": None,
                "options": pool.options.as_settings(),
            }
        },
    }


def write(directory: Path, document: dict[str, Any]) -> Path:
    path = directory / f"{document['host']}-{document['pid']}.json"
    path.write_text(json.dumps(document))
    return path


def owned_by_someone_else(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``path`` belongs to another user: really (as root), or as this process sees it."""
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, OTHER_UID)
    else:
        me = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: me + 1)


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "django_dbpool"
        and record.levelno == logging.WARNING
        and text in record.getMessage()
    ]


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Warnings are given once per process; each test starts as a new process would.
    monkeypatch.setattr(snapshots, "_warned", set())


@pytest.fixture
def private_dir(tmp_path: Path, settings: Any) -> Path:
    """A configured stats directory as it should be: ours, mode 0700."""
    directory = tmp_path / "stats"
    directory.mkdir(mode=0o700)
    settings.DBPOOL_STATS_DIR = str(directory)
    return directory


@pytest.fixture
def default_dir(tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default stats directory's path (not created), under a temp directory of the test's."""
    settings.DBPOOL_STATS_DIR = None
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return snapshots.stats_dir()


@pytest.fixture
def published() -> Callable[[Path], Path | None]:
    """``publish_now`` into a given directory, with this process's pool open."""
    connection.ensure_connection()
    return snapshots.publish_now


@pytest.mark.django_db(transaction=True)
def test_default_directory_is_per_user_and_created_private(
    default_dir: Path, published: Callable[[Path], Path | None]
) -> None:
    assert default_dir.parent == Path(tempfile.gettempdir())
    assert default_dir.name.startswith(f"django_dbpool-{os.geteuid()}-")
    path = published(default_dir)
    assert path is not None
    assert path.parent == default_dir
    status = os.lstat(default_dir)
    assert stat.S_ISDIR(status.st_mode)
    assert stat.S_IMODE(status.st_mode) == 0o700
    assert status.st_uid == os.geteuid()
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    # What this process publishes is a well-formed snapshot: read back, field for field.
    (own,) = [d for d in snapshots.read_snapshots(default_dir) if d["pid"] == os.getpid()]
    assert own == json.loads(path.read_text())


@pytest.mark.django_db(transaction=True)
def test_directory_of_another_user_is_refused_with_one_warning(
    private_dir: Path,
    published: Callable[[Path], Path | None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    forged = write(private_dir, snapshot_document())
    owned_by_someone_else(private_dir, monkeypatch)
    for _ in range(3):  # as the publisher's ticks and the readers' refreshes would
        assert snapshots.read_snapshots() == []
        assert published(private_dir) is None
    assert sorted(private_dir.iterdir()) == [forged]  # nothing published there
    (warning,) = warnings_about(caplog, str(private_dir))
    message = warning.getMessage()
    assert "belongs to another user" in message
    assert "Set DBPOOL_STATS_DIR to a directory owned by this user" in message
    assert warning.exc_info is None  # a clear sentence, not a traceback
    assert snapshots.check_stats_dir(private_dir) == message


@pytest.mark.parametrize("mode", [0o770, 0o777], ids=["group-writable", "world-writable"])
def test_directory_others_can_write_is_refused(
    private_dir: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    write(private_dir, snapshot_document())
    private_dir.chmod(mode)
    assert snapshots.read_snapshots() == []
    (warning,) = warnings_about(caplog, str(private_dir))
    assert f"is writable by other users (mode {mode:o})" in warning.getMessage()
    assert f"chmod 700 {private_dir}" in warning.getMessage()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_something_planted_at_the_default_path_is_refused(
    default_dir: Path,
    tmp_path: Path,
    planted: str,
    published: Callable[[Path], Path | None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    write(elsewhere, snapshot_document())
    if planted == "symlink":
        default_dir.symlink_to(elsewhere)
        problem = "is a symbolic link"
    else:
        default_dir.write_text("not a directory")
        problem = "is not a directory"
    assert snapshots.read_snapshots() == []
    assert published(default_dir) is None
    assert len(list(elsewhere.iterdir())) == 1  # nothing published through the link
    assert os.path.islink(default_dir) == (planted == "symlink")
    (warning,) = warnings_about(caplog, str(default_dir))
    assert problem in warning.getMessage()
    assert "DBPOOL_STATS_DIR" in warning.getMessage()


def test_snapshot_files_are_not_read_through_symlinks(
    private_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(private_dir, snapshot_document(pid=424242))
    outside = write(tmp_path, snapshot_document(pid=515151))
    link = private_dir / "elsewhere-515151.json"
    link.symlink_to(outside)
    assert [d["pid"] for d in snapshots.read_snapshots()] == [424242]
    (warning,) = warnings_about(caplog, str(link))
    assert "symbolic link" in warning.getMessage()


def _mutated(change: Callable[[dict[str, Any]], object]) -> Callable[[], bytes]:
    def content() -> bytes:
        document = snapshot_document(pid=515151)
        change(document)
        return json.dumps(document).encode()

    return content


def _pools(document: dict[str, Any]) -> dict[str, Any]:
    return document["pools"]["default"]  # type: ignore[no-any-return]


BAD_DOCUMENTS: dict[str, Callable[[], bytes]] = {
    "pid not an integer": _mutated(lambda d: d.update(pid="515151; rm -rf")),
    "pid out of range": _mutated(lambda d: d.update(pid=2**40, host=snapshots._HOST)),
    "gauge not a number": _mutated(lambda d: _pools(d)["stats"]["gauges"].update(in_use="3")),
    "negative counter": _mutated(lambda d: _pools(d)["stats"]["counters"].update(acquired=-5)),
    "boolean counter": _mutated(lambda d: _pools(d)["stats"]["counters"].update(leaks=True)),
    "stats missing": _mutated(lambda d: _pools(d).pop("stats")),
    "pools not an object": _mutated(lambda d: d.update(pools=["default"])),
    "buckets not cumulative": _mutated(
        lambda d: _pools(d)["stats"]["histograms"]["wait_seconds"]["buckets"].update({"+Inf": 0})
    ),
    "NaN rate": lambda: (
        json.dumps(snapshot_document(pid=515151))
        .replace('"checkouts_per_second": 2.5', '"checkouts_per_second": NaN')
        .encode()
    ),
    "not an object": lambda: b"[1, 2, 3]",
    "not JSON": lambda: b'{"pid": 515151,',
    "too large": lambda: (
        json.dumps(snapshot_document(pid=515151)).encode() + b" " * snapshots.MAX_DOCUMENT_BYTES
    ),
}


@pytest.mark.parametrize("content", BAD_DOCUMENTS.values(), ids=BAD_DOCUMENTS.keys())
def test_bad_document_is_skipped_with_a_warning_naming_the_file(
    private_dir: Path, content: Callable[[], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    write(private_dir, snapshot_document(pid=424242))
    bad = private_dir / "elsewhere-515151.json"
    bad.write_bytes(content())
    assert [d["pid"] for d in snapshots.read_snapshots()] == [424242]
    (warning,) = warnings_about(caplog, f"Skipping the pool stats file {bad}: ")
    assert warning.exc_info is None
    assert bad.exists()  # left for its owner to look at


def test_a_document_of_an_earlier_release_without_the_parked_gauge_reads_as_none_parked(
    private_dir: Path,
) -> None:
    # A deploy in progress: a process of the release before parked connections existed.
    earlier = snapshot_document(pid=515151)
    del _pools(earlier)["stats"]["gauges"]["parked"]
    write(private_dir, earlier)
    (document,) = snapshots.read_snapshots()
    assert _pools(document)["stats"]["gauges"]["parked"] == 0
    # Every other gauge is still required.
    del _pools(earlier)["stats"]["gauges"]["idle"]
    write(private_dir, earlier)
    assert snapshots.read_snapshots() == []


def test_the_admin_dashboard_shows_the_good_documents_beside_a_bad_one(
    private_dir: Path,
) -> None:
    write(private_dir, snapshot_document(pid=424242))
    bad = snapshot_document(pid=515151)
    bad["pools"]["default"]["stats"]["gauges"]["in_use"] = "many"
    write(private_dir, bad)
    (default,) = [a for a in dashboard_data(server=False)["aliases"] if a["alias"] == "default"]
    assert [row["pid"] for row in default["per_process"]] == [424242]
    assert default["processes"] == 1


@pytest.mark.django_db(transaction=True)
def test_a_symlink_at_the_publishers_file_name_is_replaced_not_followed(
    private_dir: Path, tmp_path: Path, published: Callable[[Path], Path | None]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    own = private_dir / f"{snapshots._HOST}-{os.getpid()}.json"
    own.symlink_to(victim)
    assert published(private_dir) == own
    assert victim.read_text() == "precious"
    assert stat.S_ISREG(os.lstat(own).st_mode)
    assert os.getpid() in [d["pid"] for d in snapshots.read_snapshots()]
