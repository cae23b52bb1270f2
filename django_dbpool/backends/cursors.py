"""Cursor wrappers that append the current tags to every statement as a comment.

The tagging is a mixin over whatever cursor wrapper the vendor backend makes (Django's
PostgreSQL backend has a debug wrapper of its own, for ``COPY``): one subclass per vendor
class and mixin, made once. A vendor backend may extend the mixin with what it must watch
for in statements (MySQL: raw transaction statements). Outside a tag context a statement
costs one ``ContextVar`` read more than with Django's own wrappers; inside one, the comment
is rendered and appended (see ``django_dbpool.tagging``). :class:`CursorsMixin` is the
wrapper's side: which class each of its cursors gets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

from .. import registry, tagging
from ..tagging import PROCESS_TAGS, TAGS, current_tags, with_comment
from .leasing import lease_cursor_mixin

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper as _Base
else:
    _Base = object

__all__ = ["CursorsMixin", "TaggingCursorMixin", "tagging_cursor_class"]


class TaggingCursorMixin:
    db: Any

    def execute(self, sql: Any, params: Any = None) -> Any:
        # The check is inlined: untagged statements (the common case) pay one ContextVar read.
        if TAGS.get() is not None or PROCESS_TAGS:
            # With params the driver interpolates, so a literal % must be written %%.
            sql = self._tagged(sql, params is not None)
        return super().execute(sql, params)  # type: ignore[misc]

    def executemany(self, sql: Any, param_list: Any) -> Any:
        return super().executemany(self._tagged(sql, True, many=True), param_list)  # type: ignore[misc]

    def _tagged(self, sql: Any, escape_percent: bool, many: bool = False) -> Any:
        tags = current_tags()
        if not tags or not isinstance(sql, str):
            return sql
        at = self._many_comment_at(sql) if many else None
        return with_comment(sql, {"app": self.db.dbpool_app_tag(), **tags}, escape_percent, at)

    def _many_comment_at(self, sql: str) -> int | None:
        """Where executemany()'s comment goes in ``sql``: None for the end, as execute()'s.
        A vendor whose driver rewrites executemany() statements says where it survives."""
        return None


_classes: dict[tuple[type[CursorWrapper], type[TaggingCursorMixin]], type[CursorWrapper]] = {}


def tagging_cursor_class(
    base: type[CursorWrapper], mixin: type[TaggingCursorMixin] = TaggingCursorMixin
) -> type[CursorWrapper]:
    """``base`` with ``mixin`` (tagging, and what the vendor adds): made on first use, then
    reused."""
    cls = _classes.get((base, mixin))
    if cls is None:
        name = mixin.__name__.removesuffix("CursorMixin") + base.__name__
        cls = type(name, (mixin, base), {})
        _classes[(base, mixin)] = cls
    return cls


class CursorsMixin(_Base):
    """Part of :class:`~django_dbpool.backends.base.PooledWrapperMixin`: Django's cursor
    wrappers become tagging cursors (with what the vendor watches for), and with transaction
    leases cursors that hold their lease until closed."""

    #: The mixin over Django's cursor wrappers: tagging, plus what the vendor watches for.
    dbpool_cursor_mixin: type[TaggingCursorMixin] = TaggingCursorMixin

    if TYPE_CHECKING:
        _dbpool_transaction: bool
        _dbpool_app_tag: tuple[int, str]

        def _dbpool_cursor_opened(self, wrapper: CursorWrapper) -> None: ...

    def make_cursor(self, cursor: Any) -> CursorWrapper:
        wrapper = super().make_cursor(cursor)
        if self._dbpool_transaction:
            self._dbpool_lease_cursor(wrapper)
        else:
            wrapper.__class__ = tagging_cursor_class(type(wrapper), self.dbpool_cursor_mixin)
        return wrapper

    def make_debug_cursor(self, cursor: Any) -> CursorDebugWrapper:
        wrapper = super().make_debug_cursor(cursor)
        if self._dbpool_transaction:
            self._dbpool_lease_cursor(wrapper)
        else:
            cls = tagging_cursor_class(type(wrapper), self.dbpool_cursor_mixin)
            wrapper.__class__ = cls  # type: ignore[assignment]
        return wrapper

    def _dbpool_lease_cursor(self, wrapper: CursorWrapper) -> None:
        # With transaction leases: the cursor counts as open (a pin) until closed.
        mixin = lease_cursor_mixin(self.dbpool_cursor_mixin)
        wrapper.__class__ = tagging_cursor_class(type(wrapper), mixin)
        self._dbpool_cursor_opened(wrapper)

    def dbpool_app_tag(self) -> str:
        """The process tag of this alias (``application_name``), for query comments;
        rendered once per process."""
        generation, text = self._dbpool_app_tag
        if generation != registry.fork_generation():
            text = tagging.application_name(self.alias)
            self._dbpool_app_tag = (registry.fork_generation(), text)
        return text
