"""/health/ready for an alias with Django's own ENGINE: probed through a new connection of its
own, one probe at a time. (A project with no pooled alias at all, where readiness checks
every alias this way, is tried in tests/test_new_project.py.)
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connections
from django.test import Client, override_settings

from django_dbpool import views

TOKEN = "health-token-0123456789abcdef"


@pytest.fixture(scope="module", autouse=True)
def stock_alias() -> Iterator[dict[str, Any]]:
    """A "stock" alias: the suite's database through Django's own ENGINE. Module-scoped so
    that it exists before the test case checks which aliases its tests may use."""
    default = connections["default"].settings_dict
    stock = {
        **default,
        "ENGINE": f"django.db.backends.{connections['default'].vendor}",
        "OPTIONS": dict(default["OPTIONS"]),
        "TEST": {"MIRROR": "default"},
    }
    connections.settings["stock"] = stock
    try:
        yield stock
    finally:
        del connections.settings["stock"]


@contextmanager
def black_hole() -> Iterator[int]:
    """A port that takes connections and never answers; the connections it took are reset
    when the block ends."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.mark.django_db(transaction=True, databases=["default", "stock"])
@override_settings(
    DBPOOL_READY_ALIASES=["stock"], DBPOOL_READY_TIMEOUT=0.5, DBPOOL_HEALTH_TOKEN=TOKEN
)
def test_ready_probes_an_alias_with_djangos_own_engine(
    client: Client, stock_alias: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def ready() -> tuple[int, dict[str, Any]]:
        response = client.get("/health/ready", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        body = response.json()["databases"]["stock"]
        assert body.pop("elapsed_ms") >= 0
        return response.status_code, body

    status, body = ready()
    assert body.pop("probe_ms") >= 0
    assert (status, body) == (200, {"status": "ok", "pooled": False})
    anonymous = client.get("/health/ready").json()
    assert anonymous["databases"] == {"stock": {"status": "ok", "pooled": False}}

    # A server that stopped answering holds one probe thread, not one per request.
    with black_hole() as port:
        monkeypatch.setitem(stock_alias, "HOST", "127.0.0.1")
        monkeypatch.setitem(stock_alias, "PORT", str(port))
        assert ready() == (
            503,
            {"status": "timeout", "error": "no answer within 0.5 s", "pooled": False},
        )
        assert ready() == (
            503,
            {
                "status": "timeout",
                "error": "the previous probe has not answered yet",
                "pooled": False,
            },
        )
        probe = views._unpooled_probes["stock"]
    probe.join(60)  # the reset ends it
    assert not probe.is_alive()
    status, body = ready()
    assert (status, body["status"], body["pooled"]) == (503, "error", False)
