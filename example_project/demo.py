"""`make demo`: the example project on a throwaway PostgreSQL, served by gunicorn.

With DATABASE_URL set, that database is used instead and nothing is started. DEMO_BIND
(default 127.0.0.1:8000) is where gunicorn listens. Ctrl-C (or SIGTERM) stops gunicorn,
then the database, and removes every temporary file.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.dbservers import (  # noqa: E402
    POSTGRES_URL_VAR,
    LauncherError,
    database_servers,
    interrupt_on_sigterm,
    redact,
    wait_child,
)


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "manage.py"), *args], env=env, check=True
    )


def wait_listening(host: str, port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise LauncherError(f"gunicorn exited with status {server.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise LauncherError(f"gunicorn is not listening on {host}:{port} after 60 s")


def serve(database_url: str, workdir: Path, bind: str) -> int:
    host, _, port = bind.rpartition(":")
    password = secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": f"{host},localhost,127.0.0.1",
        "DJANGO_STATIC_ROOT": str(workdir / "static"),
        "DJANGO_SERVE_STATIC": "1",
        "DEMO_ADMIN_PASSWORD": password,
        "DBPOOL_STATS_DIR": str(workdir / "stats"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    print(f"demo: database {redact(database_url)}", flush=True)
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "demo_data")
    manage(env, "collectstatic", "--noinput", "-v", "0")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "example_project.wsgi",
            "--config",
            str(ROOT / "example_project" / "gunicorn.conf.py"),
            "--bind",
            bind,
            "--chdir",
            str(ROOT),
            "--access-logfile",
            "-",
            "--no-control-socket",
        ],
        env=env,
        # A session of its own: on Ctrl-C the demo sends gunicorn's master one SIGTERM (a
        # graceful stop) instead of the terminal signalling the master and every worker
        # at once, which races with the master's own SIGQUIT to its workers.
        start_new_session=True,
    )
    try:
        wait_listening(host, int(port), server)
    except LauncherError:
        server.kill()
        server.wait()
        raise
    except KeyboardInterrupt:
        return wait_child(server, signal.SIGTERM)
    base = f"http://{bind}"
    print(
        "\n"
        f"demo: ready. Open:\n"
        f"  {base}/                 accounts and the transfer form\n"
        f"  {base}/admin/           admin (user: admin, password: {password})\n"
        f"  {base}/admin/django_dbpool/connectionpool/  connection pools of every worker\n"
        f"  {base}/report/          a slow report (a one-second query in a transaction)\n"
        f"  {base}/health/live      liveness: the process answers\n"
        f"  {base}/health/ready     readiness: every pooled database answers\n"
        f"  {base}/metrics          Prometheus metrics (pools and queries, every worker)\n"
        "demo: press Ctrl-C to stop; the throwaway database and its files are removed.\n",
        flush=True,
    )
    return wait_child(server, signal.SIGTERM)


def pooled(url: str) -> str:
    """The URL with the scheme of django_dbpool's ENGINE for its database."""
    scheme, sep, rest = url.partition("://")
    return (
        {"postgres": "pgpool", "postgresql": "pgpool", "mysql": "mysqlpool"}.get(scheme, scheme)
        + sep
        + rest
    )


def main() -> int:
    interrupt_on_sigterm()
    bind = os.environ.get("DEMO_BIND", "127.0.0.1:8000")
    given_url = os.environ.get("DATABASE_URL")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="dbpool-demo-") as workdir,
            database_servers(postgres=not given_url, mysql=False) as urls,
        ):
            status = serve(given_url or pooled(urls[POSTGRES_URL_VAR]), Path(workdir), bind)
    except LauncherError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        status = 0
    print("demo: stopped; temporary database and files removed.", flush=True)
    # gunicorn stopped by Ctrl-C or SIGTERM is a normal end of the demo.
    return 0 if status in (0, 130, 128 + 15) else status


if __name__ == "__main__":
    sys.exit(main())
