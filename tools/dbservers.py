"""Throwaway PostgreSQL and MariaDB servers for tests, the demo and benchmarks.

Standard library only, so it runs before any virtualenv exists.

Command line::

    python tools/dbservers.py ensure                      # install missing server binaries
    python tools/dbservers.py [--postgres] [--mysql] [--pgbouncer] [--redis] -- COMMAND [ARGS...]

The second form starts the servers (both databases when no flag is given), exports
``DBPOOL_TEST_POSTGRES_URL`` / ``DBPOOL_TEST_MYSQL_URL`` (and ``DBPOOL_TEST_POSTGRES_LOG``,
the server's log file) to COMMAND, waits for it, then
stops the servers and deletes their files whatever happened, and exits with COMMAND's
status. A variable that is already set names a server to use instead: nothing is started
for it.

From Python::

    with database_servers(postgres=True, mysql=False) as urls:
        ...  # urls["DBPOOL_TEST_POSTGRES_URL"]

PostgreSQL listens on 127.0.0.1 only, with SCRAM password authentication and TLS required
(a self-signed certificate for 127.0.0.1/localhost, whose path is in the URL as
``sslrootcert`` with ``sslmode=verify-full``). MariaDB listens on 127.0.0.1 only, with a
password user, and offers TLS with a certificate made the same way, whose path is exported
as ``DBPOOL_TEST_MYSQL_CA`` (its URL does not ask for TLS). PostgreSQL refuses to run as
root, so when started as root both servers run as an unprivileged system user, created on
first use.

``--pgbouncer`` (PostgreSQL implied) also starts Debian's PgBouncer in transaction pooling
mode in front of that PostgreSQL and exports its URL as ``DBPOOL_TEST_PGBOUNCER_URL``: same
user and password (SCRAM), TLS verified on both sides, listening on 127.0.0.1 only. From
Python: ``with pgbouncer(postgres_url) as bouncer: ... bouncer.url``.

``--redis`` also starts Debian's redis-server, a message broker for the Celery worker tests,
and exports its URL as ``DBPOOL_TEST_REDIS_URL`` (``redis://:PASSWORD@127.0.0.1:PORT/0``):
listening on 127.0.0.1 only, with a password, persisting nothing to disk.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

POSTGRES_URL_VAR = "DBPOOL_TEST_POSTGRES_URL"
MYSQL_URL_VAR = "DBPOOL_TEST_MYSQL_URL"
# The server log of a PostgreSQL the launcher started (tests look for unclean disconnects).
POSTGRES_LOG_VAR = "DBPOOL_TEST_POSTGRES_LOG"
# The certificate a MariaDB the launcher started presents for TLS, also the CA that verifies
# it. Its URL connects without TLS (as most MySQL deployments' do): tests that need TLS ask
# for it in OPTIONS with this file.
MYSQL_CA_VAR = "DBPOOL_TEST_MYSQL_CA"
# The Unix-socket addresses of the servers the launcher started, for tests that connect
# without TCP: PostgreSQL's socket directory (a HOST) and MariaDB's socket file.
POSTGRES_SOCKET_VAR = "DBPOOL_TEST_POSTGRES_SOCKET_DIR"
MYSQL_SOCKET_VAR = "DBPOOL_TEST_MYSQL_SOCKET"
# PgBouncer in transaction pooling mode in front of that PostgreSQL (--pgbouncer).
PGBOUNCER_URL_VAR = "DBPOOL_TEST_PGBOUNCER_URL"
# A Redis server (--redis): the broker of the Celery worker tests.
REDIS_URL_VAR = "DBPOOL_TEST_REDIS_URL"
SERVER_USER = "dbpool"
DATABASE_NAME = "dbpool"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0

# Debian packages that provide what the launcher and the mysqlclient build need.
DEBIAN_PACKAGES = {
    "postgresql": ["postgresql-15"],
    # mariadb-client has mysqldump, which Django uses to clone test databases.
    "mariadb": ["mariadb-server-core", "mariadb-client-core", "mariadb-client"],
    "mysqlclient build": ["libmariadb-dev", "pkg-config", "gcc"],
    "openssl": ["openssl"],
    # The admin dashboard's browser test drives Debian's Chromium with Playwright.
    "chromium": ["chromium"],
    # Transaction pooling in front of PostgreSQL (tests/test_pgbouncer.py).
    "pgbouncer": ["pgbouncer"],
    # The HTTP load generator of the benchmarks (benchmarks/web.py).
    "wrk": ["wrk"],
    # Network partitions on loopback for the fault tests: rules that drop packets
    # (tools/partition.py).
    "nftables": ["nftables"],
    # The message broker of the Celery worker tests (tests/test_celery_worker.py).
    "redis": ["redis-server"],
}


class LauncherError(RuntimeError):
    """A server could not be set up, started or reached."""


# --- binaries ------------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def mariadb_binaries() -> tuple[str, str] | None:
    """(install-db, server) executables, or None."""
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    server = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin")
    if install and server:
        return install, server
    return None


def pgbouncer_binary() -> str | None:
    """The PgBouncer executable (Debian installs it in /usr/sbin), or None."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


def redis_binary() -> str | None:
    """Debian's ``redis-server`` executable, or None."""
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")


def nft_binary() -> str | None:
    """nftables' ``nft`` (Debian installs it in /usr/sbin), or None."""
    return shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")


def missing_packages() -> list[str]:
    missing: list[str] = []
    if postgres_bindir() is None:
        missing += DEBIAN_PACKAGES["postgresql"]
    if mariadb_binaries() is None or not all(
        shutil.which(tool) for tool in ("my_print_defaults", "mysqldump")
    ):
        missing += DEBIAN_PACKAGES["mariadb"]
    pkg_config = shutil.which("pkg-config")
    has_client_lib = pkg_config is not None and (
        subprocess.run(
            [pkg_config, "--exists", "libmariadb"], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not has_client_lib or shutil.which("gcc") is None:
        missing += DEBIAN_PACKAGES["mysqlclient build"]
    if shutil.which("openssl") is None:
        missing += DEBIAN_PACKAGES["openssl"]
    if shutil.which("chromium") is None:
        missing += DEBIAN_PACKAGES["chromium"]
    if pgbouncer_binary() is None:
        missing += DEBIAN_PACKAGES["pgbouncer"]
    if shutil.which("wrk") is None:
        missing += DEBIAN_PACKAGES["wrk"]
    if nft_binary() is None:
        missing += DEBIAN_PACKAGES["nftables"]
    if redis_binary() is None:
        missing += DEBIAN_PACKAGES["redis"]
    return missing


def ensure_packages() -> int:
    """Install missing Debian packages when root; otherwise print the command to run."""
    missing = missing_packages()
    if not missing:
        print(
            "dbservers: PostgreSQL, MariaDB, PgBouncer, Redis and build dependencies are present."
        )
        return 0
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        print(
            "dbservers: missing system packages. Run, as root:\n"
            f"    apt-get update && {' '.join(command)}",
            file=sys.stderr,
        )
        return 1
    print(f"dbservers: installing {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*command[:2], "-q", *command[2:]], check=True, env=env)
    still = missing_packages()
    if still:
        print(f"dbservers: still missing after install: {' '.join(still)}", file=sys.stderr)
        return 1
    return 0


# --- helpers -------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_account() -> pwd.struct_passwd | None:
    """The unprivileged account servers run as when we are root (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            check=True,
        )
        return pwd.getpwnam(SERVER_USER)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Server:
    """Shared start/stop plumbing: a private directory and one foreground server process."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, base: Path, account: pwd.struct_passwd | None) -> None:
        self.account = account
        self.dir = base / self.name
        self.dir.mkdir(mode=0o700)
        self._own(self.dir)
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "server.log"

    def _own(self, path: Path) -> None:
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def start(self) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _run(self, args: list[str]) -> None:
        result = subprocess.run(args, capture_output=True, check=False, **self._user_kwargs())
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise LauncherError(f"{self.name}: {' '.join(args[:2])} failed:\n{output[-3000:]}")

    def _user_kwargs(self) -> dict[str, Any]:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def restart(self) -> None:
        """Start the stopped server again on the same data, port and password (fault
        tests: a database that goes away and comes back)."""
        self.stop()
        self._spawn(self._args)
        self._wait_ready(self._probe)

    def _spawn(self, args: list[str]) -> None:
        self._args = args
        log = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self._own(self.log)
        self._log_handle = log
        # A session of its own: a terminal Ctrl-C reaches the command we run, not the
        # servers, which we then stop in order.
        self.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._user_kwargs(),
        )

    def _wait_ready(self, probe: Callable[[], bool]) -> None:
        self._probe = probe
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LauncherError(
                    f"{self.name} exited with status {self.process.returncode} while starting:\n"
                    f"{log_tail(self.log)}"
                )
            if probe():
                return
            time.sleep(0.1)
        raise LauncherError(
            f"{self.name} did not accept connections within {START_TIMEOUT:.0f} s:\n"
            f"{log_tail(self.log)}"
        )

    def _make_certificate(self) -> None:
        # A self-signed certificate for 127.0.0.1/localhost: server.crt is also the
        # root certificate clients verify it with.
        key, cert = self.dir / "server.key", self.dir / "server.crt"
        result = subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "7",
                "-subj",
                "/CN=localhost",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise LauncherError(f"openssl failed:\n{result.stderr.decode(errors='replace')}")
        key.chmod(0o600)
        cert.chmod(0o644)
        self._own(key)
        self._own(cert)

    def stop(self) -> None:
        """Stop the server cleanly (forcefully after STOP_TIMEOUT). Idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        handle = getattr(self, "_log_handle", None)
        if handle is not None:
            handle.close()


class PostgresServer(_Server):
    name = "postgresql"
    # SIGINT is PostgreSQL's "fast" shutdown: sessions are ended, then a clean checkpoint.
    stop_signal = signal.SIGINT
    superuser = "postgres"

    def start(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise LauncherError(
                "PostgreSQL server binaries not found; run: python tools/dbservers.py ensure"
            )
        data = self.dir / "data"
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                self.superuser,
                "--pwfile",
                str(pwfile),
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        pwfile.unlink()
        self._make_certificate()
        (data / "pg_hba.conf").write_text(
            # TLS is required on TCP; the local socket (inside our private directory) is
            # only used by the launcher itself to create the database.
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
        )
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# django_dbpool throwaway server\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "ssl = on\n"
                f"ssl_cert_file = '{self.dir / 'server.crt'}'\n"
                f"ssl_key_file = '{self.dir / 'server.key'}'\n"
                "max_connections = 300\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "shared_buffers = 128MB\n"
                # Server-side statement counts, for tests and benchmarks.
                "shared_preload_libraries = 'pg_stat_statements'\n"
                "pg_stat_statements.track = all\n"
            )
        self._spawn([str(bindir / "postgres"), "-D", str(data)])
        self._wait_ready(lambda: self._ready(bindir))
        self._run(
            [
                str(bindir / "createdb"),
                "-h",
                str(self.dir),
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                DATABASE_NAME,
            ]
        )

    def _ready(self, bindir: Path) -> bool:
        result = subprocess.run(
            [str(bindir / "pg_isready"), "-q", "-h", str(self.dir), "-p", str(self.port)],
            check=False,
        )
        return result.returncode == 0

    @property
    def url(self) -> str:
        ca = quote(str(self.dir / "server.crt"))
        return (
            f"postgres://{self.superuser}:{self.password}@127.0.0.1:{self.port}/{DATABASE_NAME}"
            f"?sslmode=verify-full&sslrootcert={ca}"
        )


class MariaDBServer(_Server):
    name = "mariadb"
    user = "dbpool"

    def start(self) -> None:
        binaries = mariadb_binaries()
        if binaries is None:
            raise LauncherError(
                "MariaDB server binaries not found; run: python tools/dbservers.py ensure"
            )
        install_db, mariadbd = binaries
        data = self.dir / "data"
        self._run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                f"--tmpdir={self.dir}",
            ]
        )
        init = self.dir / "init.sql"
        # Runs at every start, before the server accepts connections.
        init.write_text(
            f"CREATE USER IF NOT EXISTS '{self.user}'@'%' IDENTIFIED BY '{self.password}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'%' WITH GRANT OPTION;\n"
            f"CREATE DATABASE IF NOT EXISTS {DATABASE_NAME} CHARACTER SET utf8mb4;\n"
        )
        init.chmod(0o600)
        self._own(init)
        self._make_certificate()
        self._spawn(
            [
                mariadbd,
                "--no-defaults",
                f"--datadir={data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.dir / 'mysqld.sock'}",
                f"--pid-file={self.dir / 'mysqld.pid'}",
                f"--init-file={init}",
                f"--tmpdir={self.dir}",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--max-connections=500",
                "--innodb-buffer-pool-size=128M",
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-use-native-aio=0",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
                # TLS offered, not required: clients choose with ssl_mode/ssl.
                f"--ssl-cert={self.dir / 'server.crt'}",
                f"--ssl-key={self.dir / 'server.key'}",
            ]
        )
        self._wait_ready(self._ready)

    def _ready(self) -> bool:
        # Ready once the server sends its handshake: protocol version 10 after the
        # 4-byte packet header.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(5)[4:5] == b"\x0a"
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{DATABASE_NAME}"


class PgBouncerServer(_Server):
    """PgBouncer in transaction pooling mode in front of the PostgreSQL at ``postgres_url``.

    Clients log in with that URL's user and password (SCRAM, checked by PgBouncer against
    its own user list) and reach any database of that server by name. TLS on both sides:
    clients verify PgBouncer's own self-signed certificate, and PgBouncer connects to
    PostgreSQL with the URL's ``sslmode`` and ``sslrootcert``.
    """

    name = "pgbouncer"

    def __init__(
        self,
        base: Path,
        account: pwd.struct_passwd | None,
        postgres_url: str,
        pool_size: int = 20,
    ) -> None:
        super().__init__(base, account)
        self.target = urlsplit(postgres_url)
        self.target_options = {k: v[0] for k, v in parse_qs(self.target.query).items()}
        self.pool_size = pool_size
        self.user = unquote(self.target.username or "")
        self.password = unquote(self.target.password or "")
        self.database = self.target.path.lstrip("/") or DATABASE_NAME

    def start(self) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise LauncherError("PgBouncer not found; run: python tools/dbservers.py ensure")
        self._make_certificate()
        # PgBouncer authenticates clients itself, then logs in to PostgreSQL with the
        # same password: it needs it in clear (or as a SCRAM secret) in its user list.
        self._private_file(
            "userlist.txt", f'"{_ini_quote(self.user)}" "{_ini_quote(self.password)}"\n'
        )
        server_tls = [f"server_tls_sslmode = {self.target_options.get('sslmode', 'prefer')}"]
        if "sslrootcert" in self.target_options:
            # A copy PgBouncer's unprivileged user can read.
            ca = Path(self.target_options["sslrootcert"]).read_text()
            server_tls.append(f"server_tls_ca_file = {self._private_file('server-ca.crt', ca)}")
        host = self.target.hostname or "127.0.0.1"
        port = self.target.port or 5432
        ini = self._private_file(
            "pgbouncer.ini",
            "[databases]\n"
            # Any database name goes through to the same server (Django's test databases).
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 1000\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            # The console (database "pgbouncer") for tests: SHOW POOLS, SHOW SERVERS.
            f"admin_users = {self.user}\n"
            "client_tls_sslmode = require\n"
            f"client_tls_key_file = {self.dir / 'server.key'}\n"
            f"client_tls_cert_file = {self.dir / 'server.crt'}\n"
            + "".join(line + "\n" for line in server_tls),
        )
        self._spawn([binary, str(ini)])
        self._wait_ready(self._ready)

    def _private_file(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        path.chmod(0o600)
        self._own(path)
        return path

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        user, password = quote(self.user, safe=""), quote(self.password, safe="")
        ca = quote(str(self.dir / "server.crt"))
        return (
            f"postgres://{user}:{password}@127.0.0.1:{self.port}/{self.database}"
            f"?sslmode=verify-full&sslrootcert={ca}"
        )


class RedisServer(_Server):
    """A Redis server on loopback with a password: a broker for the Celery worker tests.
    Nothing is written to disk but its log (no snapshots, no append-only file)."""

    name = "redis"

    def start(self) -> None:
        binary = redis_binary()
        if binary is None:
            raise LauncherError("redis-server not found; run: python tools/dbservers.py ensure")
        conf = self.dir / "redis.conf"
        conf.write_text(
            "bind 127.0.0.1\n"
            f"port {self.port}\n"
            f"requirepass {self.password}\n"
            "daemonize no\n"
            f"dir {self.dir}\n"
            'logfile ""\n'
            'save ""\n'
            "appendonly no\n"
            "databases 4\n"
        )
        conf.chmod(0o600)
        self._own(conf)
        self._spawn([binary, str(conf)])
        self._wait_ready(self._ready)

    def _ready(self) -> bool:
        # RESP: AUTH with the password answers +OK once the server serves commands.
        password = self.password.encode()
        command = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(command)
                return sock.recv(5).startswith(b"+OK")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"


def _ini_quote(value: str) -> str:
    # PgBouncer's user list: double quotes, a literal one doubled.
    return value.replace('"', '""')


@contextlib.contextmanager
def pgbouncer(postgres_url: str, pool_size: int = 20) -> Iterator[PgBouncerServer]:
    """PgBouncer (transaction pooling, at most ``pool_size`` server connections per
    database and user) in front of the PostgreSQL at ``postgres_url``, running as the
    unprivileged server user; its URL is ``.url``. Stopped and removed afterwards."""
    with (
        _server_directory("dbpool-pgbouncer-") as base,
        _started(PgBouncerServer(base, server_account(), postgres_url, pool_size)) as server,
    ):
        yield server


@contextlib.contextmanager
def database_servers(
    postgres: bool = True, mysql: bool = True, pgbouncer: bool = False, redis: bool = False
) -> Iterator[dict[str, str]]:
    """Start the requested servers; yield their URLs by variable name; always clean up.

    A server whose variable is already set in the environment is not started: the given
    URL is yielded instead. ``pgbouncer`` (which implies ``postgres``) adds PgBouncer in
    transaction pooling mode in front of that PostgreSQL; ``redis`` a Redis server.
    """
    urls: dict[str, str] = {}
    postgres = postgres or pgbouncer
    if pgbouncer and os.environ.get(PGBOUNCER_URL_VAR):
        urls[PGBOUNCER_URL_VAR] = os.environ[PGBOUNCER_URL_VAR]
        pgbouncer = False
    wanted: list[tuple[str, type[_Server]]] = []
    choices: tuple[tuple[bool, str, type[_Server]], ...] = (
        (postgres, POSTGRES_URL_VAR, PostgresServer),
        (mysql, MYSQL_URL_VAR, MariaDBServer),
        (redis, REDIS_URL_VAR, RedisServer),
    )
    for enabled, var, cls in choices:
        if not enabled:
            continue
        if os.environ.get(var):
            urls[var] = os.environ[var]
        else:
            wanted.append((var, cls))
    if not wanted and not pgbouncer:
        yield urls
        return
    account = server_account()
    # Stopped in reverse order of starting (PgBouncer before its PostgreSQL), then removed.
    with _server_directory("dbpool-servers-") as base, contextlib.ExitStack() as running:
        for var, cls in wanted:
            server = running.enter_context(_started(cls(base, account)))
            urls[var] = server.url
            if isinstance(server, PostgresServer):
                urls[POSTGRES_LOG_VAR] = str(server.log)
                urls[POSTGRES_SOCKET_VAR] = str(server.dir)
            if isinstance(server, MariaDBServer):
                urls[MYSQL_CA_VAR] = str(server.dir / "server.crt")
                urls[MYSQL_SOCKET_VAR] = str(server.dir / "mysqld.sock")
        if pgbouncer:
            bouncer = PgBouncerServer(base, account, urls[POSTGRES_URL_VAR])
            urls[PGBOUNCER_URL_VAR] = running.enter_context(_started(bouncer)).url
        yield urls


@contextlib.contextmanager
def private_server(vendor: str) -> Iterator[_Server]:
    """One throwaway server of ``vendor`` ("postgresql" or "mysql") that the caller may stop
    and restart; always stopped and removed afterwards."""
    cls: type[_Server] = PostgresServer if vendor == "postgresql" else MariaDBServer
    with (
        _server_directory("dbpool-server-") as base,
        _started(cls(base, server_account())) as server,
    ):
        yield server


@contextlib.contextmanager
def _server_directory(prefix: str) -> Iterator[Path]:
    """A new directory that the unprivileged server account can enter; removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


S = TypeVar("S", bound=_Server)


@contextlib.contextmanager
def _started(server: S) -> Iterator[S]:
    """``server``, started; stopped afterwards, also when starting failed half-way."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


def redact(url: str) -> str:
    """The URL with its password hidden, for printing."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


def interrupt_on_sigterm() -> None:
    """Give SIGTERM the same orderly path as Ctrl-C: a KeyboardInterrupt in the main thread."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def wait_child(child: subprocess.Popen[bytes], interrupt: signal.Signals = signal.SIGINT) -> int:
    """Wait for CHILD; on Ctrl-C or SIGTERM, send it ``interrupt`` and wait (kill after
    STOP_TIMEOUT). Returns its exit status, 128+N when killed by signal N."""
    try:
        status = child.wait()
    except KeyboardInterrupt:
        # A child in our process group already got a terminal's SIGINT; one in a session of
        # its own, or any child when we got SIGTERM, did not.
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(interrupt)
        try:
            status = child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            status = child.wait()
    return 128 - status if status < 0 else status


def run(
    command: list[str], postgres: bool, mysql: bool, pgbouncer: bool = False, redis: bool = False
) -> int:
    """Run COMMAND with the servers up; return its exit status."""
    interrupt_on_sigterm()
    try:
        with database_servers(
            postgres=postgres, mysql=mysql, pgbouncer=pgbouncer, redis=redis
        ) as urls:
            for var, url in urls.items():
                print(f"dbservers: {var}={redact(url)}", flush=True)
            return wait_child(subprocess.Popen(command, env={**os.environ, **urls}))
    except LauncherError as exc:
        print(f"dbservers: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: list[str]) -> int:
    if argv[:1] == ["ensure"]:
        return ensure_packages()
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    flags, command = argv[:split], argv[split + 1 :]
    unknown = set(flags) - {"--postgres", "--mysql", "--pgbouncer", "--redis"}
    if unknown or not command:
        print(__doc__, file=sys.stderr)
        return 2
    both = not flags
    return run(
        command,
        postgres=both or "--postgres" in flags,
        mysql=both or "--mysql" in flags,
        pgbouncer="--pgbouncer" in flags,
        redis="--redis" in flags,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
