"""Django's parallel test runner on a pool used before it forks (tests/faults/test_fork.py).

``manage.py test --parallel 2 tests.faults.fork_runner`` with the settings in
tests/faults/fork_settings.py: :class:`PreforkRunner` uses the pool once the test databases
exist, right before the runner forks its workers, leaving one connection checked out by the
forking thread and one idle. Every test and the parent record ``{"pid", "session",
"database"}`` as JSON files in DBPOOL_FORK_RECORDS; the two test classes wait for each other
so that both workers take part.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from django.db import connection
from django.test import TestCase
from django.test.runner import DiscoverRunner

from example_project.bank.models import Account
from tests.views import SESSION_KEY_SQL

RECORDS = Path(os.environ.get("DBPOOL_FORK_RECORDS", "."))


def session() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute(SESSION_KEY_SQL[connection.vendor])
        key = str(cursor.fetchone()[0])
    return {"pid": os.getpid(), "session": key, "database": connection.settings_dict["NAME"]}


def write(name: str, data: Any) -> None:
    path = RECORDS / f"{name}.json"
    path.with_suffix(".tmp").write_text(json.dumps(data))
    path.with_suffix(".tmp").rename(path)


class PreforkRunner(DiscoverRunner):
    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        held = session()  # stays checked out by this thread, which forks
        write("parent-before", [held, in_a_thread()])  # the second one is left idle
        result = super().run_suite(suite, **kwargs)
        # After the workers have exited: both sessions are still the parent's.
        write("parent-after", [session(), in_a_thread()])
        return result


def in_a_thread() -> dict[str, Any]:
    """The session a new thread checks out, then gives back to the pool."""
    out: list[dict[str, Any]] = []

    def use_and_return() -> None:
        out.append(session())
        connection.close()

    thread = threading.Thread(target=use_and_return)
    thread.start()
    thread.join(30)
    return out[0]


def record_and_meet(test: TestCase) -> None:
    """Record this test's session, then wait (bounded) until a test has run in a second
    worker process, so that both workers are known to have taken part."""
    Account.objects.count()
    write(f"test-{uuid.uuid4().hex}", session())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = {json.loads(p.read_text())["pid"] for p in RECORDS.glob("test-*.json")}
        if len(pids) >= 2:
            return
        time.sleep(0.05)
    test.fail("only one worker process ran tests")


class FirstWorkerTests(TestCase):
    def test_session(self) -> None:
        record_and_meet(self)

    def test_session_again(self) -> None:
        record_and_meet(self)


class SecondWorkerTests(TestCase):
    def test_session(self) -> None:
        record_and_meet(self)

    def test_session_again(self) -> None:
        record_and_meet(self)
