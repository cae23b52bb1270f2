"""The launcher starts real servers, secures them as promised, and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import MySQLdb
import psycopg
import pytest

from tools import dbservers


def pg_params(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    return {
        "host": parts.hostname or "",
        "port": str(parts.port),
        "user": parts.username or "",
        "password": parts.password or "",
        "dbname": parts.path.lstrip("/"),
        **query,
    }


def mysql_params(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    return {
        "host": parts.hostname,
        "port": parts.port,
        "user": parts.username,
        "password": parts.password,
        "database": parts.path.lstrip("/"),
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def fresh_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No inherited server URLs, and a private TMPDIR the server user can enter.

    Not under pytest's own temporary root: another pytest run starting meanwhile resets
    that to mode 0700, which locks the server user out.
    """
    monkeypatch.delenv(dbservers.POSTGRES_URL_VAR, raising=False)
    monkeypatch.delenv(dbservers.MYSQL_URL_VAR, raising=False)
    tmp = Path(tempfile.mkdtemp(prefix="dbpool-launcher-test-"))
    tmp.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def test_launcher_starts_both_servers_with_tls_and_passwords_then_cleans_up(
    fresh_environment: Path,
) -> None:
    with dbservers.database_servers(postgres=True, mysql=True) as urls:
        pg_url, my_url = urls[dbservers.POSTGRES_URL_VAR], urls[dbservers.MYSQL_URL_VAR]
        assert urlsplit(pg_url).hostname == urlsplit(my_url).hostname == "127.0.0.1"
        server_dirs = list(fresh_environment.iterdir())
        assert len(server_dirs) == 1
        pids = [
            int(p.read_text().split()[0])
            for p in (
                server_dirs[0] / "postgresql" / "data" / "postmaster.pid",
                server_dirs[0] / "mariadb" / "mysqld.pid",
            )
        ]

        # PostgreSQL: a verified TLS connection with SCRAM authentication.
        params = pg_params(pg_url)
        assert params["sslmode"] == "verify-full"
        with psycopg.connect(**params) as conn:
            ssl, version = conn.execute(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert ssl is True
            assert version.startswith("TLS")
            (stored,) = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = current_user"
            ).fetchone()
            assert stored.startswith("SCRAM-SHA-256$")
        # TLS is required, not merely offered, and the password is checked.
        with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
            psycopg.connect(**{**params, "sslmode": "disable"}).close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**{**params, "password": "wrong"}).close()

        # MariaDB: a password user that can create databases (the test runner needs it).
        conn = MySQLdb.connect(**mysql_params(my_url))
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT VERSION(), CURRENT_USER()")
            version, user = cursor.fetchone()
            assert "MariaDB" in version
            assert user.startswith("dbpool@")
            cursor.execute("CREATE DATABASE launcher_probe")
            cursor.execute("DROP DATABASE launcher_probe")
        finally:
            conn.close()
        with pytest.raises(MySQLdb.OperationalError, match="Access denied"):
            MySQLdb.connect(**{**mysql_params(my_url), "password": "wrong"})
        # TLS offered (not required), verifiable with the exported certificate.
        ca = urls[dbservers.MYSQL_CA_VAR]
        assert Path(ca).parent == server_dirs[0] / "mariadb"
        # Both also listen on a Unix socket, whose address is exported.
        pg_socket = Path(urls[dbservers.POSTGRES_SOCKET_VAR]) / f".s.PGSQL.{params['port']}"
        assert stat.S_ISSOCK(pg_socket.stat().st_mode)
        assert stat.S_ISSOCK(Path(urls[dbservers.MYSQL_SOCKET_VAR]).stat().st_mode)
        tls = {"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": ca}}
        conn = MySQLdb.connect(**mysql_params(my_url), **tls)
        try:
            cursor = conn.cursor()
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
            assert cursor.fetchone()[1].startswith("TLSv1.")
        finally:
            conn.close()

        assert all(alive(pid) for pid in pids)

    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)
    assert list(fresh_environment.iterdir()) == []


def test_launcher_uses_given_servers_and_starts_nothing(
    fresh_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = {
        dbservers.POSTGRES_URL_VAR: "postgres://u:p@127.0.0.1:1/db",
        dbservers.MYSQL_URL_VAR: "mysql://u:p@127.0.0.1:2/db",
    }
    for var, url in given.items():
        monkeypatch.setenv(var, url)
    with dbservers.database_servers() as urls:
        assert urls == given
        assert list(fresh_environment.iterdir()) == []


def test_launcher_stops_servers_when_the_body_fails(fresh_environment: Path) -> None:
    def use_and_fail() -> None:
        with dbservers.database_servers(mysql=False) as urls:
            assert dbservers.POSTGRES_URL_VAR in urls
            assert list(fresh_environment.iterdir()) != []
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        use_and_fail()
    assert list(fresh_environment.iterdir()) == []


def test_redact_hides_the_password() -> None:
    url = "postgres://app:s3cr%40t@db:5432/app?sslmode=require"
    assert dbservers.redact(url) == "postgres://app:***@db:5432/app?sslmode=require"


def test_launcher_puts_pgbouncer_in_front_of_postgresql_then_cleans_up(
    fresh_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(dbservers.PGBOUNCER_URL_VAR, raising=False)
    with dbservers.database_servers(postgres=False, mysql=False, pgbouncer=True) as urls:
        assert set(urls) == {
            dbservers.POSTGRES_URL_VAR,
            dbservers.POSTGRES_LOG_VAR,
            dbservers.POSTGRES_SOCKET_VAR,
            dbservers.PGBOUNCER_URL_VAR,
        }
        bouncer_params = pg_params(urls[dbservers.PGBOUNCER_URL_VAR])
        assert bouncer_params["host"] == "127.0.0.1"
        assert bouncer_params["port"] != pg_params(urls[dbservers.POSTGRES_URL_VAR])["port"]
        assert bouncer_params["sslmode"] == "verify-full"
        (pid,) = [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit()
            and str(fresh_environment) in _cmdline(entry)
            and "pgbouncer" in _cmdline(entry)
        ]
        if os.geteuid() == 0:
            # Like the servers, PgBouncer runs as the unprivileged server user.
            uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
            assert uid == dbservers.server_account().pw_uid  # type: ignore[union-attr]

        # TLS verified up to PgBouncer, and from PgBouncer to PostgreSQL.
        with psycopg.connect(**bouncer_params, autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use
            (ssl,) = conn.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert ssl is True
        # PgBouncer checks the password itself (SCRAM).
        with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
            psycopg.connect(**{**bouncer_params, "password": "wrong"}).close()
        # Transaction pooling, for the launcher's database and any other (the test runner's).
        console = {**bouncer_params, "dbname": "pgbouncer"}
        with psycopg.connect(**console, autocommit=True, prepare_threshold=None) as conn:
            cursor = conn.cursor()
            cursor.execute("SHOW POOLS")
            columns = [column.name for column in cursor.description or ()]
            pools = {row[0]: dict(zip(columns, row, strict=True)) for row in cursor.fetchall()}
        assert pools[dbservers.DATABASE_NAME]["pool_mode"] == "transaction"
        with psycopg.connect(**{**bouncer_params, "dbname": "postgres"}) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)

    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert list(fresh_environment.iterdir()) == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_launcher_starts_redis_on_loopback_with_a_password_then_cleans_up(
    fresh_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    monkeypatch.delenv(dbservers.REDIS_URL_VAR, raising=False)
    with dbservers.database_servers(postgres=False, mysql=False, redis=True) as urls:
        assert set(urls) == {dbservers.REDIS_URL_VAR}
        url = urls[dbservers.REDIS_URL_VAR]
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1"
        (pid,) = [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit()
            and "redis-server" in _cmdline(entry)
            and f":{parts.port}" in _cmdline(entry)
        ]
        client = redis.Redis.from_url(url)
        try:
            assert client.ping()
            # Nothing is persisted: no snapshots, no append-only file.
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            client.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=parts.port, password="wrong").ping()

    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert list(fresh_environment.iterdir()) == []
