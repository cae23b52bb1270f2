"""Passwords never appear in errors, logs, reprs or stats."""

from __future__ import annotations

import json
import logging

import pytest
from django.db import connections

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "small"])


def test_no_password_in_errors_logs_reprs_or_stats(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrapper = connections["small"]
    real = wrapper.settings_dict["PASSWORD"]
    secret = "Not-The-Password-4c1e8b"
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        # Working connections: the pool and its stats.
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
        texts += [repr(wrapper.pool), repr(wrapper.pool._adapter), str(wrapper.pool)]
        texts.append(json.dumps(wrapper.pool.stats().as_dict()))
        wrapper.close()
        # A failing one: the error chain and whatever was logged.
        monkeypatch.setitem(wrapper.settings_dict, "PASSWORD", secret)
        try:
            for _ in range(3):
                try:
                    wrapper.ensure_connection()
                except Exception as exc:  # every error text is inspected
                    while exc is not None:
                        texts += [str(exc), repr(exc)]
                        exc = exc.__cause__ or exc.__context__
            texts += [repr(wrapper.pool), json.dumps(wrapper.pool.stats().as_dict())]
        finally:
            wrapper.close_pool()
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.exc_info[1]) for record in caplog.records if record.exc_info]
    assert any("password authentication failed" in t or "Access denied" in t for t in texts)
    for text in texts:
        assert secret not in text
        assert real not in text
