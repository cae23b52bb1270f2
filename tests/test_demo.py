"""`make demo` serves the example project and Ctrl-C leaves nothing behind.

On the PostgreSQL run the demo starts its own throwaway server; on the MariaDB run it is
pointed at the suite's server through DATABASE_URL, the way a user points it at theirs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from tools.dbservers import MYSQL_URL_VAR, POSTGRES_URL_VAR, free_port

ROOT = Path(__file__).resolve().parent.parent


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def demo_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("demo")
    for path in (tmp, *tmp.parents):
        if path == Path("/tmp"):
            break
        path.chmod(0o755)
    return tmp


def test_demo_serves_pages_and_ctrl_c_cleans_up(demo_tmpdir: Path) -> None:
    bind = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in (POSTGRES_URL_VAR, MYSQL_URL_VAR)}
    env.pop("DATABASE_URL", None)
    env.update({"DEMO_BIND": bind, "TMPDIR": str(demo_tmpdir), "PYTHONUNBUFFERED": "1"})
    if settings.DATABASE_VENDOR == "mysql":
        env["DATABASE_URL"] = "mysqlpool://" + os.environ[MYSQL_URL_VAR].split("://", 1)[1]
    demo = subprocess.Popen(
        [sys.executable, str(ROOT / "example_project" / "demo.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal job
    )
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line)
            if "demo: ready" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(180), "".join(output)
        text = "".join(output)
        password = re.search(r"user: admin, password: (\S+)\)", text)
        assert password, text
        for url in ("/health/live", "/health/ready", "/metrics", "/admin/django_dbpool/"):
            assert f"http://{bind}{url}" in text  # the demo prints the health URLs
        for path in (
            "/",
            "/admin/login/",
            "/static/admin/css/base.css",
            "/static/django_dbpool/dashboard.js",
            "/health/ready",
        ):
            with urllib.request.urlopen(f"http://{bind}{path}", timeout=30) as response:
                assert response.status == 200, path
        with urllib.request.urlopen(f"http://{bind}/", timeout=30) as response:
            assert b"Alice" in response.read()  # the demo data is there
    finally:
        # What a terminal's Ctrl-C does: SIGINT to the whole foreground process group.
        os.killpg(demo.pid, signal.SIGINT)
        try:
            status = demo.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            raise
        reader.join(10)
    text = "".join(output)
    assert status == 0, text
    assert "demo: stopped" in text
    assert re.search(r"demo: database (pgpool|mysqlpool)://", text), text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        processes_mentioning(str(demo_tmpdir)) or processes_mentioning(bind)
    ):
        time.sleep(0.1)
    assert processes_mentioning(str(demo_tmpdir)) == []
    assert processes_mentioning(bind) == []
    assert list(demo_tmpdir.iterdir()) == []
