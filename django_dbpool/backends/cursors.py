"""Cursor wrappers that append the current tags to every statement as a comment.

The tagging is a mixin over whatever cursor wrapper the vendor backend makes (Django's
PostgreSQL backend has a debug wrapper of its own, for ``COPY``): one subclass per vendor
class, made once. Outside a tag context a statement costs one ``ContextVar`` read more than
with Django's own wrappers; inside one, the comment is rendered and appended (see
``django_dbpool.tagging``).
"""

from __future__ import annotations

from typing import Any

from django.db.backends.utils import CursorWrapper

from ..tagging import _process_tags, _tags, current_tags, with_comment

__all__ = ["tagging_cursor_class"]


class TaggingCursorMixin:
    db: Any

    def execute(self, sql: Any, params: Any = None) -> Any:
        # The check is inlined: untagged statements (the common case) pay one ContextVar read.
        if _tags.get() is not None or _process_tags:
            # With params the driver interpolates, so a literal % must be written %%.
            sql = self._tagged(sql, params is not None)
        return super().execute(sql, params)  # type: ignore[misc]

    def executemany(self, sql: Any, param_list: Any) -> Any:
        return super().executemany(self._tagged(sql, True), param_list)  # type: ignore[misc]

    def _tagged(self, sql: Any, escape_percent: bool) -> Any:
        tags = current_tags()
        if not tags or not isinstance(sql, str):
            return sql
        return with_comment(sql, {"app": self.db.dbpool_app_tag(), **tags}, escape_percent)


_classes: dict[type[CursorWrapper], type[CursorWrapper]] = {}


def tagging_cursor_class(base: type[CursorWrapper]) -> type[CursorWrapper]:
    """``base`` with tagging: made on first use, then reused."""
    cls = _classes.get(base)
    if cls is None:
        cls = type(f"Tagging{base.__name__}", (TaggingCursorMixin, base), {})
        _classes[base] = cls
    return cls
