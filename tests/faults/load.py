"""A bounded HTTP load generator for the fault suite and the gunicorn tests.

Client threads send requests with ``http.client`` (one TCP connection per request, as
independent browsers would) until ``requests`` per client are sent, ``duration`` seconds
have passed, or :meth:`Load.stop_starting` is called, whichever comes first; every request
begun is waited for (up to the client ``timeout``, a hang guard). Each request is recorded
with its start and end (``time.monotonic()``), status or exception and ``Retry-After``; each
carries its number in a header, so that the server's access log can say which worker
answered it (see ``tests.faults.harness.App.with_workers``).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "NUMBER_HEADER",
    "Load",
    "Request",
    "Result",
    "by_worker",
    "errors_text",
    "first_success_after",
    "get_paths",
    "internal_errors",
    "longest",
    "recovery_by_worker",
    "summary",
    "unanswered",
]

#: The request header that carries each request's number within its Load.
NUMBER_HEADER = "X-Load-Request"


@dataclass(frozen=True)
class Request:
    method: str = "GET"
    path: str = "/"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Anything the scenario wants back with the result (a transfer's identity, say).
    tag: object = None


@dataclass(frozen=True)
class Result:
    client: int
    request: Request
    start: float
    end: float
    #: The HTTP status, or None when the request raised (see ``error``).
    status: int | None
    #: ``"ExceptionName: message"`` when no response came back.
    error: str | None = None
    retry_after: str | None = None
    #: The start of the body of an error response (status >= 500), for failure messages.
    excerpt: str = ""
    #: The request's number within its Load (from 1), sent in NUMBER_HEADER.
    number: int = 0
    #: The pid of the server process that answered it, once known (see the module docstring).
    worker: int | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400

    @property
    def kind(self) -> str:
        """``"200"``, ``"503"``, ... or the exception's name."""
        if self.status is not None:
            return str(self.status)
        return (self.error or "error").split(":", 1)[0]

    def __str__(self) -> str:
        outcome = self.status if self.status is not None else self.error
        worker = "" if self.worker is None else f", worker {self.worker}"
        return (
            f"{self.request.method} {self.request.path} -> {outcome} "
            f"(client {self.client}{worker}, {self.duration:.2f} s) {self.excerpt}"
        ).strip()


def get_paths(paths: Sequence[str]) -> Callable[[int, int], Request]:
    """A request factory: GETs cycling through ``paths``, offset per client."""
    requests = [Request(path=p) for p in paths]
    return lambda client, i: requests[(client + i) % len(requests)]


class Load:
    """``clients`` threads sending ``request(client, i)`` (default: GET /); see the module
    docstring."""

    def __init__(
        self,
        base: str,
        clients: int,
        request: Callable[[int, int], Request] | None = None,
        *,
        requests: int = 10_000,
        duration: float = 600.0,
        timeout: float = 60.0,
        pause: float = 0.0,
    ) -> None:
        self.host, port = base.removeprefix("http://").split(":")
        self.port = int(port)
        self.request = request or get_paths(["/"])
        self.requests = requests
        self.duration = duration
        self.timeout = timeout
        self.pause = pause
        self.lock = threading.Lock()
        self.connected = threading.Condition(self.lock)
        self.stopping = False
        self.in_flight = 0
        self.unconnected = 0
        self.sent = 0
        self.results: list[Result] = []
        self.started_at = 0.0
        self.threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True, name=f"load-{n}")
            for n in range(clients)
        ]

    def _client(self, n: int) -> None:
        deadline = self.started_at + self.duration
        for i in range(self.requests):
            with self.lock:
                if self.stopping or time.monotonic() >= deadline:
                    return
                self.in_flight += 1
                self.unconnected += 1
                self.sent += 1
                number = self.sent
            request = self.request(n, i)
            result = self._send(n, request, number)
            with self.lock:
                self.in_flight -= 1
                self.results.append(result)
            if self.pause:
                time.sleep(self.pause)

    def _send(self, n: int, request: Request, number: int) -> Result:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        start = time.monotonic()
        try:
            try:
                conn.connect()
            finally:
                with self.lock:
                    self.unconnected -= 1
                    self.connected.notify_all()
            headers = {**request.headers, NUMBER_HEADER: str(number)}
            conn.request(request.method, request.path, request.body, headers)
            response = conn.getresponse()
            body = response.read()
            status = response.status
            return Result(
                n,
                request,
                start,
                time.monotonic(),
                status,
                retry_after=response.getheader("Retry-After"),
                excerpt=body[:300].decode(errors="replace") if status >= 500 else "",
                number=number,
            )
        except Exception as exc:  # every failure is recorded and judged by the test
            return Result(
                n,
                request,
                start,
                time.monotonic(),
                None,
                f"{type(exc).__name__}: {exc}",
                number=number,
            )
        finally:
            conn.close()

    def start(self) -> Load:
        self.started_at = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def stop_starting(self) -> None:
        """No new request after this returns; those begun have their TCP connection."""
        with self.lock:
            self.stopping = True
            self.connected.wait_for(lambda: self.unconnected == 0, timeout=30)

    def join(self) -> list[Result]:
        """Wait for every client (each request is bounded by ``timeout``); the results."""
        limit = time.monotonic() + self.timeout + 30
        for thread in self.threads:
            thread.join(max(limit - time.monotonic(), 0.1))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"load clients still running: {alive}"
        return self.snapshot()

    def run_until_stopped(self) -> list[Result]:
        self.stop_starting()
        return self.join()

    def snapshot(self) -> list[Result]:
        with self.lock:
            return sorted(self.results, key=lambda r: r.start)

    def wait_for(self, condition: Callable[[list[Result]], bool], limit: float = 60) -> None:
        """Poll until ``condition(results so far)`` holds; fail after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while not condition(self.snapshot()):
            assert time.monotonic() < deadline, f"load condition not met in {limit:g} s"
            time.sleep(0.02)


# -- summaries --------------------------------------------------------------------------------


def summary(results: Iterable[Result]) -> Counter[str]:
    """Outcomes by kind: ``{"200": 950, "503": 12, "RemoteDisconnected": 1}``."""
    return Counter(r.kind for r in results)


def errors_text(results: Iterable[Result]) -> str:
    """Failed requests by kind, for the report: ``"12 (503: 11, 500: 1)"``, or ``"0"``."""
    failed = Counter(r.kind for r in results if not r.ok)
    if not failed:
        return "0"
    detail = ", ".join(f"{kind}: {count}" for kind, count in sorted(failed.items()))
    return f"{sum(failed.values())} ({detail})"


def first_success_after(results: Iterable[Result], moment: float) -> Result | None:
    """The earliest-ending successful request that started at or after ``moment``."""
    after = [r for r in results if r.ok and r.start >= moment]
    return min(after, key=lambda r: r.end) if after else None


def longest(results: Iterable[Result]) -> Result | None:
    return max(results, key=lambda r: r.duration, default=None)


def unanswered(results: Iterable[Result]) -> list[Result]:
    """Requests that got no HTTP response at all (client timeout, reset, refused)."""
    return [r for r in results if r.status is None]


def internal_errors(results: Iterable[Result]) -> list[Result]:
    """Requests answered with a 500: an exception no middleware turned into a response."""
    return [r for r in results if r.status == 500]


def by_worker(results: Iterable[Result]) -> dict[int, list[Result]]:
    """Answered requests by the pid of the worker that answered them (results with
    ``worker`` set; see the module docstring)."""
    workers: dict[int, list[Result]] = {}
    for r in results:
        if r.worker is not None:
            workers.setdefault(r.worker, []).append(r)
    return workers


def recovery_by_worker(results: Iterable[Result], moment: float) -> dict[int, float | None]:
    """Per worker: seconds from ``moment`` to the end of its first success among requests
    started at or after ``moment``; None for a worker with no such success."""
    recoveries: dict[int, float | None] = {}
    for worker, answered in by_worker(results).items():
        first = first_success_after(answered, moment)
        recoveries[worker] = None if first is None else first.end - moment
    return recoveries
