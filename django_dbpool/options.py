"""Pool options of a database alias: ``DATABASES[alias]["POOL"]`` and ``OPTIONS["pool_*"]``.

Options may be written in two places, merged here into one validated
:class:`~django_dbpool.pool.PoolOptions`:

- ``"POOL": {"MAX_SIZE": 10, "TIMEOUT": 5}``, a top-level key of the alias;
- ``"OPTIONS": {"pool_max_size": "10"}``, where django-environ puts a URL's query parameters
  (``?pool_max_size=10``). Strings are cast to the option's type. These keys never reach the
  database driver.

The same option in both places is an error, as is an unknown key or a bad value: each
raises ``ImproperlyConfigured`` naming the alias, the key, the value and what is accepted.

The backends' own options (``LEASE``, ``SESSION_SQL``, ``RESET``, ``PGBOUNCER``,
``CONNECT_TIMEOUT``, ``NETWORK_TIMEOUT``) are validated here too but kept out of the pool
core: they set up the driver and the wrapper, not the pool (:class:`AliasOptions`,
:class:`TcpTimeouts`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .pool import PoolConfigError, PoolOptions
from .pool.options import closest_option

__all__ = [
    "OPTIONS_PREFIX",
    "AliasOptions",
    "TcpTimeouts",
    "alias_options",
    "driver_options",
    "parse_database_url",
    "pool_options",
]

#: Prefix of pool options inside ``OPTIONS`` (django-environ's URL query parameters).
OPTIONS_PREFIX = "pool_"

#: Options of the backend rather than of the pool core: yes/no ones, and the timeouts the
#: backends hand the driver (in seconds).
_BOOLEAN_OPTIONS = frozenset({"RESET"})
_TIMEOUT_OPTIONS = frozenset({"CONNECT_TIMEOUT", "NETWORK_TIMEOUT"})
#: Options that take one of a few words: the words, and what each means.
_CHOICE_OPTIONS: dict[str, dict[str, str]] = {
    "LEASE": {
        "request": "a connection is held from the first query of a request to its end",
        "transaction": "a connection is held only while a statement or a transaction runs",
    },
    "SESSION_SQL": {
        "pin": "a statement that changes the session keeps the connection for the rest of "
        "the request, with a warning",
        "error": "such a statement raises SessionStatementError",
    },
}
_BACKEND_OPTIONS = _BOOLEAN_OPTIONS | _TIMEOUT_OPTIONS | frozenset(_CHOICE_OPTIONS)
#: The defaults: a connect that takes longer than this has hung (a TCP connect, TLS and
#: authentication take milliseconds); a peer silent this long is gone.
DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_NETWORK_TIMEOUT = 30.0
#: NETWORK_TIMEOUT's range when not 0: the kernel counts keepalive times in whole seconds
#: (1 at least), and a day without a word from the server is no network timeout.
_NETWORK_TIMEOUT_RANGE = (1, 86400)
#: PgBouncer pool modes Django can run behind (statement pooling cannot run a transaction).
PGBOUNCER_MODES = ("transaction", "session")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

_KNOWN_OPTIONS = frozenset(f.name.upper() for f in fields(PoolOptions))
#: Every name POOL takes: the pool core's options and the backend's.
_ALL_OPTIONS = _KNOWN_OPTIONS | _BACKEND_OPTIONS | {"PGBOUNCER"}
_INTEGER_OPTIONS = frozenset(
    {f.name.upper() for f in fields(PoolOptions) if f.type in ("int", int)} | {"CONNECT_TIMEOUT"}
)


@dataclass(frozen=True)
class AliasOptions:
    """Everything the ``POOL`` settings of one alias say."""

    pool: PoolOptions
    #: How long a connection is held: ``"request"`` (from the first query to the end of the
    #: request) or ``"transaction"`` (a statement, or a transaction; see ``backends/leases``).
    lease: str = "request"
    #: With transaction leases, what a statement that changes the session outside a pin
    #: does: ``"pin"`` (hold the connection for the rest of the request, and warn) or
    #: ``"error"`` (raise ``SessionStatementError``).
    session_sql: str = "pin"
    #: Run a full session reset (``DISCARD ALL``; MySQL's COM_CHANGE_USER) on every return.
    reset: bool = False
    #: The pool mode of the PgBouncer the alias connects through, or None (no PgBouncer).
    pgbouncer: str | None = None
    #: Whole seconds a connect may take (the drivers' ``connect_timeout``); 0: the driver's
    #: own default.
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    #: Seconds of silence from the server after which a connection fails; 0: off.
    network_timeout: float = DEFAULT_NETWORK_TIMEOUT

    @property
    def tcp_timeouts(self) -> TcpTimeouts | None:
        """The socket settings that carry out ``network_timeout``; None when it is off."""
        if not self.network_timeout:
            return None
        return TcpTimeouts.for_network_timeout(self.network_timeout)


@dataclass(frozen=True)
class TcpTimeouts:
    """How a connection's TCP socket is set up so that a silent server is given up on after
    about ``NETWORK_TIMEOUT`` seconds, while a statement on a healthy link, however long,
    is never cut (no read timeout: a server that runs a statement says nothing until it
    ends, but its kernel still answers TCP).

    Two silences are told apart. Data sent and not acknowledged (a query sent into a dead
    link): TCP_USER_TIMEOUT ends the connection after ``user_timeout_ms``. Nothing
    unacknowledged (a statement sent, its result awaited): only keepalive probes notice,
    which the server's kernel answers as long as the link works. Linux, with
    TCP_USER_TIMEOUT set, ends such a connection at the first probe time at which the
    server has been silent for the user timeout and a probe went unanswered. So the first
    probe goes after half the timeout of silence (a healthy idle connection exchanges one
    probe per half timeout, nothing more) and the next ones often enough that one is
    always out by then: the connection ends within ``NETWORK_TIMEOUT`` plus one interval of
    the server's last word. ``idle + count * interval`` is also about ``NETWORK_TIMEOUT``,
    for a kernel that counts probes instead.
    """

    #: TCP_USER_TIMEOUT (libpq's ``tcp_user_timeout``), in milliseconds.
    user_timeout_ms: int
    #: TCP_KEEPIDLE, TCP_KEEPINTVL (seconds) and TCP_KEEPCNT (libpq's ``keepalives_*``).
    keepalive_idle: int
    keepalive_interval: int
    keepalive_count: int

    @classmethod
    def for_network_timeout(cls, seconds: float) -> TcpTimeouts:
        # Whole seconds, at least 1, at most what Linux accepts (32767 s; 127 probes).
        idle = min(max(int(seconds / 2), 1), 32767)
        interval = min(max(int((seconds - idle) / 3), 1), 32767)
        count = min(max(round((seconds - idle) / interval), 1), 127)
        return cls(round(seconds * 1000), idle, interval, count)


def alias_options(alias: str, settings_dict: Mapping[str, Any]) -> AliasOptions:
    """The validated options of ``alias``; ``ImproperlyConfigured`` if any is wrong."""
    pool = settings_dict.get("POOL")
    if pool is None:
        pool = {}
    elif not isinstance(pool, Mapping):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['POOL'] must be a dict of pool options such as "
            f"{{'MAX_SIZE': 10}}, not {type(pool).__name__} {pool!r}."
        )
    for key in pool:
        if key not in _ALL_OPTIONS:
            raise _unknown_option(alias, key)
    merged: dict[str, Any] = dict(pool)
    for key, value in (settings_dict.get("OPTIONS") or {}).items():
        if not (isinstance(key, str) and key.startswith(OPTIONS_PREFIX)):
            continue
        name = key[len(OPTIONS_PREFIX) :].upper()
        if name not in _ALL_OPTIONS:
            raise _unknown_option(alias, name, key)
        if name in pool:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}] sets the pool option {name} twice: in POOL "
                f"({pool[name]!r}) and as OPTIONS[{key!r}] ({value!r}). Keep one of them."
            )
        merged[name] = _cast(alias, key, name, value)
    reset = merged.pop("RESET", False)
    if not isinstance(reset, bool):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]: POOL option RESET={reset!r} is invalid; expected True or False."
        )
    lease = _choice(alias, pool, "LEASE", merged.pop("LEASE", "request"))
    session_sql = _choice(alias, pool, "SESSION_SQL", merged.pop("SESSION_SQL", "pin"))
    pgbouncer = merged.pop("PGBOUNCER", None)
    if pgbouncer is not None and pgbouncer not in PGBOUNCER_MODES:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]: POOL option PGBOUNCER={pgbouncer!r} is invalid; expected "
            "'transaction' or 'session' (PgBouncer's pool_mode), or None."
        )
    driver_timeout = (settings_dict.get("OPTIONS") or {}).get("connect_timeout")
    if "CONNECT_TIMEOUT" in merged and driver_timeout is not None:
        # Both drivers call theirs connect_timeout. The driver's own wins over CONNECT_TIMEOUT
        # (see the backends), so that given in both places, one would be silently ignored.
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] sets the connect timeout twice: as the pool option "
            f"CONNECT_TIMEOUT ({merged['CONNECT_TIMEOUT']!r}) and as the driver's "
            f"OPTIONS['connect_timeout'] ({driver_timeout!r}). Keep one of them."
        )
    connect_timeout = merged.pop("CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)
    network_timeout = merged.pop("NETWORK_TIMEOUT", DEFAULT_NETWORK_TIMEOUT)
    try:
        _check_connect_timeout(connect_timeout)
        _check_network_timeout(network_timeout)
        return AliasOptions(
            PoolOptions.from_mapping(merged),
            lease=lease,
            session_sql=session_sql,
            reset=reset,
            pgbouncer=pgbouncer,
            connect_timeout=connect_timeout,
            network_timeout=float(network_timeout),
        )
    except PoolConfigError as exc:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]: {exc}{_url_origin(exc.option, pool)}"
        ) from None


def _choice(alias: str, pool: Mapping[str, Any], name: str, value: object) -> str:
    choices = _CHOICE_OPTIONS[name]
    if isinstance(value, str) and value in choices:
        return value
    accepted = "; ".join(f"{word!r}: {meaning}" for word, meaning in choices.items())
    raise ImproperlyConfigured(
        f"DATABASES[{alias!r}]: POOL option {name}={value!r} is invalid; expected one of "
        f"{accepted}.{_url_origin(name, pool)}"
    )


def _check_connect_timeout(value: object) -> None:
    # bool is an int subclass; True seconds is a mistake. Whole seconds: both drivers take
    # an integer (and libpq waits 2 s at least).
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PoolConfigError(
            "CONNECT_TIMEOUT",
            value,
            "a whole number of seconds >= 0 (0 leaves the driver's own default, which for "
            "mysqlclient is no timeout)",
        )


def _check_network_timeout(value: object) -> None:
    low, high = _NETWORK_TIMEOUT_RANGE
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value == 0 or low <= value <= high)
    ):
        raise PoolConfigError(
            "NETWORK_TIMEOUT", value, f"0 (off) or a number of seconds from {low} to {high}"
        )


def pool_options(alias: str, settings_dict: Mapping[str, Any]) -> PoolOptions:
    """The validated pool core options of ``alias``; ``ImproperlyConfigured`` if wrong."""
    return alias_options(alias, settings_dict).pool


def driver_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the pool's ``pool_*`` keys: what the driver may see."""
    return {
        key: value
        for key, value in options.items()
        if not (isinstance(key, str) and key.startswith(OPTIONS_PREFIX))
    }


def _cast(alias: str, key: str, name: str, value: object) -> object:
    # URL query parameters arrive as strings (django-environ already turns "10" into 10).
    if name in _BOOLEAN_OPTIONS:
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]: OPTIONS[{key!r}]={value!r} is not a boolean "
            "(true/false, 1/0, yes/no, on/off)."
        )
    if not isinstance(value, str) or name == "PGBOUNCER" or name in _CHOICE_OPTIONS:
        return value
    text = value.strip()
    try:
        return int(text) if name in _INTEGER_OPTIONS else float(text)
    except ValueError:
        kind = "an integer" if name in _INTEGER_OPTIONS else "a number of seconds"
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]: OPTIONS[{key!r}]={value!r} is not {kind} "
            f"(it sets the pool option {name}). Write a number, as in ?{key}=2 in the "
            "database URL."
        ) from None


def _unknown_option(alias: str, name: object, key: str | None = None) -> ImproperlyConfigured:
    # name: a key of POOL, or the option a pool_* key of OPTIONS (key) names, upper-cased.
    match = closest_option(name, _ALL_OPTIONS) if isinstance(name, str) else None
    if match is None:
        hint = ""
    elif key is not None:
        # In the spelling of the database URL, where the key most likely came from.
        hint = f" Did you mean {OPTIONS_PREFIX}{match.lower()}?"
    elif match == str(name).upper():
        hint = f" Option names are upper case: did you mean {match!r}?"
    else:
        hint = f" Did you mean {match!r}?"
    message = (
        f"DATABASES[{alias!r}]: Unknown POOL option {name!r}.{hint} Known options: "
        f"{', '.join(sorted(_ALL_OPTIONS))}."
    )
    if key is not None:
        message += _url_origin(str(name), {})
    return ImproperlyConfigured(message)


def _url_origin(option: str, pool: Mapping[str, Any]) -> str:
    # An option that is not in POOL came from OPTIONS, that is, most likely from a query
    # parameter of the database URL: say so, in the spelling the user wrote.
    if option in pool:
        return ""
    key = OPTIONS_PREFIX + option.lower()
    origin = f" It was set by OPTIONS[{key!r}], the {key} parameter of the database URL."
    if option not in _ALL_OPTIONS:
        origin += (
            f" URL parameters are the option names in lower case with the {OPTIONS_PREFIX} "
            f"prefix, as in {OPTIONS_PREFIX}max_size."
        )
    return origin


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")
_URL_FORM = "pgpool://USER:PASSWORD@HOST:PORT/NAME (or mysqlpool://...)"


def parse_database_url(url: str | None, *, setting: str = "DATABASE_URL") -> dict[str, Any]:
    """``url`` as a ``DATABASES`` entry, parsed by django-environ (which knows
    ``pgpool://`` and ``mysqlpool://``), with clear errors where django-environ's are not.

    Raises ``ImproperlyConfigured`` naming ``setting`` and the fix for a value that is not a
    URL, an unknown scheme, or a port that is not a number from 0 to 65535. The message
    never quotes the URL, which holds the password. Pool options in the query string are
    validated with the alias's other options (``manage.py check``, first connection).
    """
    try:
        import environ
    except ImportError:
        raise ImproperlyConfigured(
            f"{setting}: reading a database URL needs django-environ: "
            "pip install 'dj-dbpool[environ]'."
        ) from None
    scheme, sep, _ = url.partition("://") if isinstance(url, str) else ("", "", "")
    if not sep or not _SCHEME.match(scheme):
        raise ImproperlyConfigured(
            f"{setting} is empty or not a database URL; expected {_URL_FORM}."
        )
    if scheme not in environ.Env.DB_SCHEMES:
        raise ImproperlyConfigured(
            f"{setting}: unknown scheme {scheme + '://'!r}. Use pgpool:// (PostgreSQL) or "
            "mysqlpool:// (MySQL/MariaDB), as in " + _URL_FORM + "."
        )
    try:
        return dict(environ.Env.db_url_config(url))
    except ValueError:
        # django-environ's message quotes what it took for the port: part of the password
        # when the password holds an unencoded "/" or "?".
        raise ImproperlyConfigured(
            f"{setting}: the port is not a number from 0 to 65535. Write HOST:PORT with a "
            "numeric PORT; if the password contains /, ?, # or %, percent-encode it "
            "(urllib.parse.quote(password, safe=''))."
        ) from None
