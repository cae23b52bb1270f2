"""What a caller reads when connects fail: the pool's log lines are written before a waiting
caller wakes with the error (so its traceback is not printed through them), and a
``ConnectFailed`` reaches it without the connector thread's frames, quoted without naming the
pool twice."""

from __future__ import annotations

import logging
import threading
import traceback

import pytest

from django_dbpool.pool import PoolUnavailable
from django_dbpool.pool.errors import ConnectFailed

from .fakes import FakeDriver, closing, make_pool


def test_failing_fast_is_logged_before_the_waiting_caller_wakes() -> None:
    driver = FakeDriver()
    driver.down = True
    pool, _ = make_pool(driver, FAIL_FAST_AFTER=2, BACKOFF_MAX=0.01, TIMEOUT=30)
    woken = threading.Event()
    woken_when_logged: list[bool] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "failing fast" in record.getMessage():
                woken_when_logged.append(woken.is_set())

    def caller() -> None:
        with pytest.raises(PoolUnavailable):
            pool.acquire()
        woken.set()

    spy = Spy()
    logger = logging.getLogger("django_dbpool.pool")
    logger.addHandler(spy)
    try:
        with closing(pool):
            thread = threading.Thread(target=caller)
            thread.start()
            thread.join(30)
    finally:
        logger.removeHandler(spy)
    assert woken.is_set()
    assert woken_when_logged == [False]


def connect_failed() -> ConnectFailed:
    # As the Django backends raise it: from the driver's error, which has frames of its own.
    try:
        raise OSError("connection refused")
    except OSError as driver_error:
        error = ConnectFailed(
            "DATABASES['db']",
            "cannot connect to db:5432 as USER 'app': connection refused",
            "Check HOST.",
        )
        error.__cause__ = driver_error
        return error


def test_a_connect_failed_reaches_the_caller_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    driver = FakeDriver()
    driver.down = True
    driver.error = connect_failed()
    pool, _ = make_pool(driver, FAIL_FAST_AFTER=1, TIMEOUT=30, name="db")
    with (
        closing(pool),
        caplog.at_level(logging.WARNING, logger="django_dbpool.pool"),
        pytest.raises(PoolUnavailable) as info,
    ):
        pool.acquire()
    failed = info.value.__cause__
    assert failed is driver.error
    assert str(failed) == (
        "DATABASES['db']: cannot connect to db:5432 as USER 'app': connection refused. Check HOST."
    )
    quoted = (
        "ConnectFailed: cannot connect to db:5432 as USER 'app': connection refused. Check HOST."
    )
    assert repr(failed) == quoted
    assert str(info.value).endswith(f"Last error: {quoted}")
    assert caplog.messages == [
        f"pool 'db': connect failed (1 in a row); failing fast until a connect succeeds: {quoted}"
    ]
    # One traceback, the caller's; the connect error and its cause a line each above it.
    printed = "".join(traceback.format_exception(info.value))
    assert printed.count("Traceback (most recent call last):") == 1
    assert printed.startswith(
        "OSError: connection refused\n\nThe above exception was the direct cause of the "
        "following exception:\n\ndjango_dbpool.pool.errors.ConnectFailed: DATABASES['db']: "
    )
