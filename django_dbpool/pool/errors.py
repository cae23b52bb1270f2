"""Exceptions raised by the pool.

Every runtime error of the pool derives from :class:`django.db.utils.OperationalError`
(re-exported by Django as ``django.db.OperationalError``). This is the one Django import of
the pool package, and it is deliberate: code that already catches ``OperationalError``
around database work (retry loops, health checks, error middleware) keeps catching the pool's
failures without changes. Nothing else in ``django_dbpool.pool`` imports Django.

Configuration errors are different: they are programming mistakes found before any connection
exists, so :class:`PoolConfigError` is a :class:`ValueError`. The Django backend adds the
database alias and turns it into ``ImproperlyConfigured``.
"""

from __future__ import annotations

from typing import Any

from django.db.utils import OperationalError

__all__ = [
    "ConnectFailed",
    "PoolClosed",
    "PoolConfigError",
    "PoolError",
    "PoolExhausted",
    "PoolTimeout",
    "PoolUnavailable",
]


class PoolError(OperationalError):
    """Base class of the errors raised while acquiring or using a pooled connection."""


class PoolTimeout(PoolError):
    """No connection could be handed out within the acquire timeout (``TIMEOUT``)."""


class PoolExhausted(PoolError):
    """``MAX_WAITING`` callers were already queued; raised at once instead of queueing."""


class PoolUnavailable(PoolError):
    """The database refused ``FAIL_FAST_AFTER`` consecutive connects; raised at once.

    ``__cause__`` is the last connect error. The pool keeps trying in the background and the
    first successful connect makes it available again.
    """


class PoolClosed(PoolError):
    """The pool was closed: raised by acquire, and to callers that were waiting."""


class ConnectFailed(PoolError):
    """A new connection could not be opened; ``__cause__`` is the driver's error.

    The Django backends raise it from their connect callable; its message is ``"{subject}:
    {failure}. {fix}"``: who could not connect (``DATABASES['default']``), what failed and
    why (where it connected, as which user, the cause, on one line), and what to check. It
    never holds the password. The pool treats it like any other connect error, except that
    it drops the connector thread's frames from it and its cause (the message says what
    happened; no caller called that thread): callers usually meet it as the ``__cause__``
    and the last error quoted by ``PoolUnavailable`` or ``PoolTimeout``.
    """

    def __init__(self, subject: str, failure: str, fix: str) -> None:
        self.subject = subject
        self.failure = failure
        self.fix = fix
        super().__init__(f"{subject}: {failure}. {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.subject, self.failure, self.fix))

    def __repr__(self) -> str:
        # Quoted with %r by the pool's messages and logs, which name the pool (the alias)
        # first: read like the last line of a traceback, without naming the alias again.
        return f"{type(self).__name__}: {self.failure}. {self.fix}"


class PoolConfigError(ValueError):
    """A ``POOL`` option has an unknown name or an unacceptable value.

    ``option`` is the setting name as the user wrote it (``"MAX_SIZE"``), ``value`` the value
    given and ``accepted`` a short description of what is accepted.
    """

    def __init__(self, option: str, value: object, accepted: str, message: str = "") -> None:
        self.option = option
        self.value = value
        self.accepted = accepted
        super().__init__(
            message or f"POOL option {option}={value!r} is invalid; expected {accepted}."
        )
