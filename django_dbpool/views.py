"""``/health/live`` and ``/health/ready``: ``path("health/", include("django_dbpool.urls"))``.

Both are ``never_cache`` and outside ``ATOMIC_REQUESTS``. Liveness never touches a
database. Readiness borrows a connection from each checked alias's pool with its own short
timeout (``DBPOOL_READY_TIMEOUT``), probes it, and gives it back. An alias with Django's own
ENGINE (checked when no alias is pooled, or when ``DBPOOL_READY_ALIASES`` names it) is
probed through a new connection of its own, and marked ``"pooled": false``.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

from .backends.base import PooledWrapperMixin
from .checks import pooled_aliases
from .conf import app_settings
from .pool import PoolStats
from .shutdown import is_draining

__all__ = ["live", "ready"]


@never_cache
@transaction.non_atomic_requests
def live(request: HttpRequest) -> JsonResponse:
    """200 as long as the process can answer. Never touches a database."""
    return JsonResponse({"status": "alive"})


@never_cache
@transaction.non_atomic_requests
def ready(request: HttpRequest) -> JsonResponse:
    """200 when every checked alias can serve a query; 503 when one cannot, its pool is
    failing fast, or the process is draining. Details only for staff or a bearer token,
    when the settings allow it; never a password or a connection string."""
    aliases = app_settings.READY_ALIASES
    if aliases is None:
        # With no pooled alias (system check W008), every alias: ready must not mean that
        # nothing was asked.
        aliases = pooled_aliases() or list(settings.DATABASES)
    timeout = app_settings.READY_TIMEOUT
    draining = is_draining()
    results = {alias: _probe(alias, timeout) for alias in aliases}
    healthy = not draining and all(result["status"] == "ok" for result in results.values())
    body: dict[str, Any] = {
        "status": "ready" if healthy else ("draining" if draining else "unavailable"),
    }
    if _may_see_details(request):
        body["databases"] = results
    else:
        body["databases"] = {
            alias: {key: r[key] for key in ("status", "pooled") if key in r}
            for alias, r in results.items()
        }
    return JsonResponse(body, status=200 if healthy else 503)


def _probe(alias: str, timeout: float) -> dict[str, Any]:
    from django.db import connections

    wrapper = connections[alias]
    if not isinstance(wrapper, PooledWrapperMixin):
        return _probe_unpooled(alias, timeout)
    try:
        pool = wrapper.pool
    except Exception as exc:
        return {"status": "error", "error": type(exc).__name__}
    if pool is None:
        return {"status": "error", "error": "not pooled"}
    result: dict[str, Any] = {}
    # The probe runs in a thread of its own so that a database that stopped answering
    # (a network black hole) cannot hold this request past the readiness timeout.
    worker = threading.Thread(
        target=_borrow_and_probe,
        args=(pool, timeout, result),
        daemon=True,
        name=f"django_dbpool[{alias}] readiness",
    )
    started = time.monotonic()
    worker.start()
    worker.join(timeout)
    stats = pool.stats()
    if worker.is_alive():
        status: dict[str, Any] = {"status": "timeout", "error": f"no answer within {timeout:g} s"}
    elif "error" in result:
        status = {"status": "error", "error": result["error"]}
    else:
        status = {"status": "ok", "probe_ms": round(result["probe_ms"], 3)}
    if stats.unavailable_now and status["status"] == "ok":
        status = {"status": "unavailable", "error": "the pool is failing fast"}
    status["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
    status["pool"] = _gauges(stats)
    return status


def _borrow_and_probe(pool: Any, timeout: float, result: dict[str, Any]) -> None:
    try:
        conn = pool.acquire(timeout=timeout)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        return
    broken = False
    try:
        start = time.monotonic()
        pool.probe(conn)
        result["probe_ms"] = (time.monotonic() - start) * 1000
    except Exception as exc:
        broken = True
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        pool.release(conn, broken=broken)


# The probe threads of aliases with Django's own ENGINE that have not finished: one at a time
# per alias, so that a database that stopped answering holds one thread, not one per request.
_unpooled_probes: dict[str, threading.Thread] = {}
_unpooled_probes_lock = threading.Lock()


def _probe_unpooled(alias: str, timeout: float) -> dict[str, Any]:
    result: dict[str, Any] = {}
    started = time.monotonic()
    with _unpooled_probes_lock:
        previous = _unpooled_probes.get(alias)
        if previous is not None and previous.is_alive():
            return {
                "status": "timeout",
                "error": "the previous probe has not answered yet",
                "pooled": False,
                "elapsed_ms": 0.0,
            }
        worker = threading.Thread(
            target=_connect_and_probe,
            args=(alias, result),
            daemon=True,
            name=f"django_dbpool[{alias}] readiness",
        )
        _unpooled_probes[alias] = worker
        worker.start()
    worker.join(timeout)
    status: dict[str, Any]
    if worker.is_alive():
        status = {"status": "timeout", "error": f"no answer within {timeout:g} s"}
    elif "error" in result:
        status = {"status": "error", "error": result["error"]}
    else:
        status = {"status": "ok", "probe_ms": round(result["probe_ms"], 3)}
    status["pooled"] = False
    status["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
    return status


def _connect_and_probe(alias: str, result: dict[str, Any]) -> None:
    from django.db import connections

    # A wrapper of its own, closed here: the request's connection (and any persistent
    # connection, CONN_MAX_AGE) is left alone.
    wrapper = connections.create_connection(alias)
    try:
        wrapper.ensure_connection()
        start = time.monotonic()
        if not wrapper.is_usable():
            raise ConnectionError("the probe found the connection dead")
        result["probe_ms"] = (time.monotonic() - start) * 1000
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        wrapper.close()


def _gauges(stats: PoolStats) -> dict[str, Any]:
    return {
        "size": stats.size,
        "idle": stats.idle,
        "in_use": stats.in_use,
        "waiting": stats.waiting,
        "max_size": stats.max_size,
        "unavailable_now": stats.unavailable_now,
    }


def _may_see_details(request: HttpRequest) -> bool:
    token = app_settings.HEALTH_TOKEN
    if token:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode()):
            return True
    if app_settings.HEALTH_DETAILS_FOR_STAFF:
        user = getattr(request, "user", None)
        return bool(user is not None and user.is_authenticated and user.is_staff)
    return False
