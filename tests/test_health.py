"""/health/live, /health/ready and the 503 middleware, in process."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client, override_settings

from django_dbpool import shutdown
from tests.conftest import holding_every_connection, wsgi_get

TOKEN = "health-token-0123456789abcdef"
ALIASES = ["default", "small", "reset", "lease"]


@pytest.fixture(autouse=True)
def not_draining() -> Iterator[None]:
    shutdown._draining.clear()
    yield
    shutdown._draining.clear()


def test_live_answers_without_a_database(client: Client) -> None:
    # No django_db mark: any database access in the view would fail this test.
    response = client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_ready_anonymous_sees_status_only(client: Client) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "databases": {alias: {"status": "ok"} for alias in ALIASES},
    }
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db(transaction=True, databases=ALIASES)
@override_settings(DBPOOL_HEALTH_TOKEN=TOKEN)
def test_ready_details_with_the_bearer_token(client: Client) -> None:
    body = client.get("/health/ready", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").json()
    default = body["databases"]["default"]
    assert default["status"] == "ok"
    assert default["probe_ms"] >= 0
    assert default["pool"]["max_size"] == 4
    assert default["pool"]["in_use"] == 0  # the probe's connection went back
    text = str(body)
    for alias in ALIASES:
        assert connections[alias].settings_dict["PASSWORD"] not in text
    # A wrong token sees what anonymous callers see.
    wrong = client.get("/health/ready", HTTP_AUTHORIZATION="Bearer " + "x" * len(TOKEN))
    assert wrong.json()["databases"]["default"] == {"status": "ok"}


@pytest.mark.django_db(transaction=True, databases=ALIASES)
@override_settings(DBPOOL_HEALTH_DETAILS_FOR_STAFF=True)
def test_ready_details_for_staff_only(client: Client) -> None:
    user = get_user_model().objects.create_user("ops", password="pw", is_staff=False)
    client.force_login(user)
    assert "pool" not in client.get("/health/ready").json()["databases"]["default"]
    user.is_staff = True
    user.save()
    assert "pool" in client.get("/health/ready").json()["databases"]["default"]


@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_ready_is_503_while_draining(client: Client) -> None:
    shutdown.begin_drain()
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "draining"
    assert client.get("/health/live").status_code == 200


@pytest.mark.django_db(transaction=True, databases=ALIASES)
@override_settings(DBPOOL_READY_ALIASES=["small"], DBPOOL_HEALTH_TOKEN=TOKEN)
def test_ready_is_503_when_a_database_is_unreachable_then_200_again(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools.dbservers import free_port

    wrapper = connections["small"]
    wrapper.close()
    with monkeypatch.context() as patch:
        patch.setitem(wrapper.settings_dict, "PORT", str(free_port()))  # nothing listens
        try:
            response = client.get("/health/ready", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
            assert response.status_code == 503
            small = response.json()["databases"]["small"]
            assert small["status"] in {"error", "timeout", "unavailable"}
        finally:
            wrapper.close_pool()
    response = client.get("/health/ready")
    assert response.status_code == 200


@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_pool_timeout_becomes_503_with_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    with (
        holding_every_connection("small"),
        caplog.at_level(logging.WARNING, logger="django_dbpool"),
    ):
        status, body = wsgi_get("/probe/small/")
    assert status == 503
    assert b"Service temporarily unavailable" in body
    logged = [r for r in caplog.records if r.getMessage().startswith("503 for GET /probe/small/")]
    assert len(logged) == 1
    assert "size 2, in use 2" in logged[0].getMessage()
    # Once the connections are back, the same request succeeds.
    assert wsgi_get("/probe/small/")[0] == 200


def test_retry_after_header() -> None:
    from django.test import RequestFactory

    from django_dbpool.middleware import PoolUnavailableMiddleware
    from django_dbpool.pool import PoolExhausted

    middleware = PoolUnavailableMiddleware(lambda request: None)  # type: ignore[arg-type,return-value]
    request = RequestFactory().get("/x")
    with override_settings(DBPOOL_RETRY_AFTER=7):
        response = middleware.process_exception(request, PoolExhausted("full"))
    assert response is not None
    assert response.status_code == 503
    assert response["Retry-After"] == "7"
    assert middleware.process_exception(request, ValueError("other")) is None


@pytest.mark.django_db(transaction=True)
def test_other_errors_stay_500() -> None:
    assert wsgi_get("/probe/create-then-fail/")[0] == 500


@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_ready_under_the_async_handler() -> None:
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    response = async_to_sync(AsyncClient().get)("/health/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
