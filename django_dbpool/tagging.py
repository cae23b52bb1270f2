"""Who is running this query? Tags the database can show without any tool of ours.

- **Per connection**: PostgreSQL's ``application_name`` is set at connect from
  ``DBPOOL_APPLICATION_NAME`` (default ``"{project}:{host}:{pid}:{alias}"``), cut to 63 bytes.
- **Per statement**: inside a tag context (a request under :class:`ConnectionTagMiddleware`,
  a ``with tag(...)`` block, a management command) every statement gets a comment in the
  sqlcommenter format, ``/*app='...',route='...',view='...'*/``: keys sorted, values
  URL-encoded, so no value can end the comment or quote anything. ``app`` is the process tag
  (the same text as ``application_name``). The request id is added only with
  ``DBPOOL_SQL_COMMENT_REQUEST_ID = True``: a value that changes at every request makes
  every statement text unique, which defeats statement caches keyed by text.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ContextDecorator, contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote

from django.conf import settings

from .conf import app_settings

__all__ = [
    "PROCESS_TAGS",
    "TAGS",
    "ConnectionTagMiddleware",
    "application_name",
    "current_tags",
    "holder_info",
    "sql_comment",
    "tag",
]

#: The tags of the code running now: a mapping of key to value, or None. Set through
#: :class:`tag` (and the middleware); public for the cursors' per-statement check.
TAGS: ContextVar[Mapping[str, str] | None] = ContextVar("django_dbpool_tags", default=None)
#: The current request's id, for leak and orphan warnings (comments carry it only opt-in).
_request_id: ContextVar[str | None] = ContextVar("django_dbpool_request_id", default=None)
#: Tags for statements outside any request or tag() block (a management command's name).
#: Public for the cursors' per-statement check; set through :func:`set_process_tags`.
PROCESS_TAGS: dict[str, str] = {}

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_POSTGRES_NAME_LIMIT = 63  # bytes: NAMEDATALEN - 1


def current_tags() -> Mapping[str, str] | None:
    """The tags in effect here: the innermost tag context's, else the process's, else None."""
    return TAGS.get() or PROCESS_TAGS or None


class tag(ContextDecorator):
    """Tag the statements run inside: ``with tag(route="nightly-report"):`` or as a
    decorator. Keys are added to (and override) the enclosing tags."""

    def __init__(self, **tags: object) -> None:
        self.tags = {key: str(value) for key, value in tags.items()}
        self._tokens: list[Any] = []

    def __enter__(self) -> tag:
        merged = {**(current_tags() or {}), **self.tags}
        self._tokens.append(TAGS.set(merged))
        return self

    def __exit__(self, *exc: object) -> None:
        TAGS.reset(self._tokens.pop())


def holder_info() -> str | None:
    """What the pool records at each checkout for its leak and orphan warnings."""
    tags = TAGS.get()
    request_id = _request_id.get()
    if not tags and request_id is None:
        return None
    parts = [f"{key}={value}" for key, value in sorted((tags or {}).items())]
    if request_id is not None and "request_id" not in (tags or {}):
        parts.append(f"request_id={request_id}")
    return ", ".join(parts)


def application_name(alias: str) -> str:
    """The process tag for ``alias``: ``DBPOOL_APPLICATION_NAME`` rendered now (the pid of
    this process), cut to PostgreSQL's 63 bytes."""
    template = app_settings.APPLICATION_NAME
    module = getattr(settings, "SETTINGS_MODULE", None) or "django"
    text = template.format(
        project=module.split(".")[0], host=socket.gethostname(), pid=os.getpid(), alias=alias
    )
    return text.encode()[:_POSTGRES_NAME_LIMIT].decode(errors="ignore")


def sql_comment(tags: Mapping[str, str], escape_percent: bool) -> str:
    """`` /*key='value',...*/`` for ``tags``: keys sorted, values URL-encoded (no character
    is left unencoded but letters, digits and ``_.-~``). ``%`` is doubled when the driver will
    interpolate parameters into the statement."""
    body = ",".join(
        f"{_KEY.sub('', key)}='{quote(value, safe='')}'" for key, value in sorted(tags.items())
    )
    if escape_percent:
        body = body.replace("%", "%%")
    return f" /*{body}*/"


_KEY = re.compile(r"[^A-Za-z0-9_]")


@functools.lru_cache(maxsize=4096)
def _cached_comment(items: tuple[tuple[str, str], ...], escape_percent: bool) -> str:
    return sql_comment(dict(items), escape_percent)


def with_comment(
    sql: str, tags: Mapping[str, str], escape_percent: bool, at: int | None = None
) -> str:
    """``sql`` with the comment appended (before a final semicolon, if any), or inserted at
    index ``at``, which must fall between two tokens. The rendered comment is cached: a
    request's statements share their tags."""
    comment = _cached_comment(tuple(tags.items()), escape_percent)
    if at is not None:
        return f"{sql[:at]}{comment}{sql[at:]}"
    stripped = sql.rstrip()
    if stripped.endswith(";"):
        return f"{stripped[:-1]}{comment};"
    return f"{sql}{comment}"


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-ID`` if it is 1 to 64 of ``[A-Za-z0-9._-]``, else a new
    UUID."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def set_process_tags(**tags: str) -> None:
    """Tags for every statement outside a tag context in this process."""
    PROCESS_TAGS.clear()
    PROCESS_TAGS.update(tags)


def command_name(argv: list[str]) -> str | None:
    """The management command ``argv`` runs (``manage.py migrate`` gives ``migrate``)."""
    if len(argv) < 2 or argv[1].startswith("-"):
        return None
    program = os.path.basename(argv[0])
    if program in {"manage.py", "django-admin", "django-admin.py", "__main__.py"}:
        return argv[1]
    return None


def tag_management_command() -> None:
    """Called from ``AppConfig.ready()``: in a management command's process, tag its
    statements with ``command=<name>``."""
    name = command_name(sys.argv)
    if name is not None:
        set_process_tags(command=name)


@contextmanager
def request_tags(tags: Mapping[str, str]) -> Iterator[None]:
    token = TAGS.set(tags)
    try:
        yield
    finally:
        TAGS.reset(token)


# The middleware lives here with the context it sets; django_dbpool.middleware re-exports it.
def _make_middleware() -> type:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.http import HttpRequest, HttpResponse

    class ConnectionTagMiddleware:
        """Tags the database statements of each request with its route and view (and, with
        ``DBPOOL_SQL_COMMENT_REQUEST_ID``, its request id), and echoes ``X-Request-ID``.
        Sync and async capable."""

        sync_capable = True
        async_capable = True

        def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
            self.get_response = get_response
            self.async_mode = iscoroutinefunction(get_response)
            if self.async_mode:
                markcoroutinefunction(self)

        def __call__(self, request: HttpRequest) -> Any:
            if self.async_mode:
                return self.__acall__(request)
            tags = self._begin(request)
            token = TAGS.set(tags)
            id_token = _request_id.set(request.dbpool_request_id)  # type: ignore[attr-defined]
            try:
                response = self.get_response(request)
            finally:
                _request_id.reset(id_token)
                TAGS.reset(token)
            return self._end(request, response)

        async def __acall__(self, request: HttpRequest) -> HttpResponse:
            tags = self._begin(request)
            token = TAGS.set(tags)
            id_token = _request_id.set(request.dbpool_request_id)  # type: ignore[attr-defined]
            try:
                response = await self.get_response(request)
            finally:
                _request_id.reset(id_token)
                TAGS.reset(token)
            return self._end(request, response)

        def _begin(self, request: HttpRequest) -> dict[str, str]:
            request_id = request_id_from(request.headers.get("X-Request-ID"))
            request.dbpool_request_id = request_id  # type: ignore[attr-defined]
            # route and view are filled in by process_view, once the URL is resolved; the
            # comment keys identify the endpoint, not the request.
            tags: dict[str, str] = {}
            request.dbpool_tags = tags  # type: ignore[attr-defined]
            if app_settings.SQL_COMMENT_REQUEST_ID:
                tags["request_id"] = request_id
            return tags

        def process_view(
            self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
        ) -> None:
            tags: dict[str, str] = request.dbpool_tags  # type: ignore[attr-defined]
            match = request.resolver_match
            if match is not None:
                tags["route"] = str(match.route)
                tags["view"] = match.view_name or _qualname(view)
            else:
                tags["view"] = _qualname(view)

        def _end(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
            response["X-Request-ID"] = request.dbpool_request_id  # type: ignore[attr-defined]
            return response

    return ConnectionTagMiddleware


def _qualname(view: Callable[..., Any]) -> str:
    func = getattr(view, "view_class", view)
    return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"


ConnectionTagMiddleware = _make_middleware()
