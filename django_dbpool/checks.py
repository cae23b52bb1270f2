"""System checks for pooled database aliases.

Without ``--database`` the checks read settings only, never connect. ``check --deploy`` adds
the TLS and password checks; ``check --database ALIAS`` connects through the pool. An alias
that declares PgBouncer transaction pooling (``POOL["PGBOUNCER"] = "transaction"``) is also
checked for settings that rely on session state, which that mode does not keep.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import django
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import __version__
from .backends.support import VendorSupport, support_for_alias
from .conf import SETTINGS, app_settings
from .options import AliasOptions, alias_options, pool_options
from .pool.errors import ConnectFailed

ENGINE_PREFIX = "django_dbpool.backends."
#: The Django feature releases the test suite runs on: keep in step with the "Framework ::
#: Django ::" classifiers of setup.cfg and the Django factor of tox.ini.
TESTED_DJANGO_VERSIONS = ((5, 2),)


def pooled_aliases() -> list[str]:
    """The aliases of ``DATABASES`` whose ENGINE is one of ours."""
    return [
        alias
        for alias, config in settings.DATABASES.items()
        if str(config.get("ENGINE", "")).startswith(ENGINE_PREFIX)
    ]


def _support(alias: str) -> VendorSupport:
    # A pooled alias's ENGINE is one of ours, each of which has a support object.
    support = support_for_alias(alias)
    assert support is not None, alias
    return support


@checks.register(checks.Tags.database)
def check_pooled_aliases(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """The app is installed, so some alias should use one of its ENGINEs."""
    if pooled_aliases():
        return []
    engines = "; ".join(
        f"{alias!r} uses {config.get('ENGINE') or 'no ENGINE'}"
        for alias, config in settings.DATABASES.items()
    )
    return [
        checks.Warning(
            "django_dbpool is in INSTALLED_APPS, but no alias of DATABASES uses one of its "
            f"ENGINEs ({engines or 'DATABASES is empty'}): nothing is pooled.",
            hint="Set ENGINE to 'django_dbpool.backends.postgresql' or "
            "'django_dbpool.backends.mysql'; in a database URL, use the pgpool:// or "
            "mysqlpool:// scheme (postgres:// and mysql:// keep Django's own ENGINE).",
            id="django_dbpool.W008",
        )
    ]


@checks.register(checks.Tags.compatibility)
def check_django_version(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """A Django release the test suite does not run on."""
    if django.VERSION[:2] in TESTED_DJANGO_VERSIONS:
        return []
    tested = ", ".join(f"{major}.{minor}" for major, minor in TESTED_DJANGO_VERSIONS)
    return [
        checks.Warning(
            f"django_dbpool {__version__} is tested with Django {tested}, and this is Django "
            f"{django.get_version()}. Its backends re-implement part of Django's connect() "
            "(the per-connection state a checkout resets), which a release it was not "
            "tested with may do differently.",
            hint=f"Use Django {tested}, or a django_dbpool release tested with this one. "
            "Once your own test suite passes on it, silence this warning with "
            "SILENCED_SYSTEM_CHECKS = ['django_dbpool.W009'].",
            id="django_dbpool.W009",
        )
    ]


@checks.register(checks.Tags.compatibility)
def check_app_settings(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Every ``DBPOOL_*`` setting has a valid value (read now rather than at the first
    request that needs it)."""
    messages: list[checks.CheckMessage] = []
    for setting in SETTINGS:
        try:
            getattr(app_settings, setting.removeprefix("DBPOOL_"))
        except ImproperlyConfigured as exc:
            messages.append(
                checks.Error(
                    str(exc),
                    hint=f"Fix or remove {setting} in your settings (the README's App "
                    "settings table lists what each accepts).",
                    id="django_dbpool.E008",
                )
            )
    return messages


@checks.register(checks.Tags.database)
def check_configuration(
    app_configs: Sequence[Any] | None = None, databases: Iterable[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Pool options, Django's own pool option, CONN_MAX_AGE; and, with ``--database``,
    a real connection and the server's connection headroom."""
    messages: list[checks.CheckMessage] = []
    for alias in pooled_aliases():
        config = settings.DATABASES[alias]
        try:
            pool_options(alias, config)
        except ImproperlyConfigured as exc:
            messages.append(
                checks.Error(
                    str(exc),
                    hint="Fix the option in DATABASES[...]['POOL'] (or the pool_* query "
                    "parameter of DATABASE_URL); the README lists every option.",
                    id="django_dbpool.E001",
                )
            )
        if (config.get("OPTIONS") or {}).get("pool"):
            messages.append(
                checks.Error(
                    f"DATABASES[{alias!r}] uses {config['ENGINE']} and also Django's own "
                    "pool (OPTIONS['pool']): connections would be pooled twice.",
                    hint="Remove OPTIONS['pool'] and put pool settings in DATABASES[...]['POOL'].",
                    id="django_dbpool.E002",
                )
            )
        support = _support(alias)
        try:
            support.driver_options(alias, config.get("OPTIONS") or {})
        except ImproperlyConfigured as exc:
            messages.append(
                checks.Error(str(exc), hint=support.driver_options_fix, id="django_dbpool.E007")
            )
        max_age = config.get("CONN_MAX_AGE", 0)
        if max_age != 0:
            messages.append(
                checks.Error(
                    f"DATABASES[{alias!r}] sets CONN_MAX_AGE={max_age!r}: with a pool, a "
                    "thread would keep its connection between requests, so the pool's "
                    "bound would run out as soon as there are more threads than MAX_SIZE.",
                    hint="Set CONN_MAX_AGE to 0 (the default): connections go back to the "
                    "pool at the end of each request and are reused from there.",
                    id="django_dbpool.E003",
                )
            )
    checked = _checked_servers.get() or {}
    # The aliases the check command checked (some left out of databases), then the others.
    for alias in dict.fromkeys([*checked, *(databases or ())]):
        if alias in checked:
            messages.extend(checked[alias])
        elif alias in pooled_aliases():
            messages.extend(_check_server(alias))
    return messages


# What the check command found for each pooled alias of --database, before the other checks
# ran (see skipping_unreachable): the unreachable ones are not in their databases any more.
_checked_servers: ContextVar[dict[str, list[checks.CheckMessage]] | None] = ContextVar(
    "_checked_servers", default=None
)


@contextlib.contextmanager
def skipping_unreachable(databases: Iterable[str]) -> Iterator[list[str]]:
    """For the ``check`` command: yields the aliases of ``databases`` that are not pooled
    aliases failing to connect; those are left out, so that no other check connects to
    them. What the server checks found for each alias is reported by
    :func:`check_configuration`, which does not connect again."""
    reachable: list[str] = []
    checked: dict[str, list[checks.CheckMessage]] = {}
    pooled = pooled_aliases()
    for alias in databases:
        if alias in pooled:
            checked[alias] = _check_server(alias)
        if not any(m.id == "django_dbpool.E004" for m in checked.get(alias, ())):
            reachable.append(alias)
    token = _checked_servers.set(checked)
    try:
        yield reachable
    finally:
        _checked_servers.reset(token)


def _declared_options() -> Iterator[tuple[str, Any, AliasOptions]]:
    # Each pooled alias, its settings and its validated POOL options; an alias whose
    # options do not validate is left out (check_configuration reports it as E001).
    for alias in pooled_aliases():
        config = settings.DATABASES[alias]
        try:
            declared = alias_options(alias, config)
        except ImproperlyConfigured:
            continue
        yield alias, config, declared


@checks.register(checks.Tags.database)
def check_pgbouncer(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Settings that break, or do nothing, behind PgBouncer in transaction pooling mode.

    There, each transaction (each statement, in autocommit) may run on a different server
    connection, shared with other clients: session state set by one transaction is not
    seen by the next. PgBouncer itself carries the time zone, ``application_name`` and
    client encoding over (it re-sends them when it switches server connections), so
    Django's per-connection time zone setup and the process tag keep working.
    """
    messages: list[checks.CheckMessage] = []
    for alias, config, declared in _declared_options():
        mode = declared.pgbouncer
        if mode is not None and not _support(alias).supports_pgbouncer:
            messages.append(
                checks.Error(
                    f"DATABASES[{alias!r}]: POOL option PGBOUNCER={mode!r} is for "
                    f"PostgreSQL aliases only; this alias uses {config['ENGINE']}.",
                    hint="Remove PGBOUNCER from DATABASES[...]['POOL'].",
                    id="django_dbpool.E009",
                )
            )
        elif mode == "transaction":
            messages.extend(_check_transaction_pooling(alias, config, declared.reset))
    return messages


def _check_transaction_pooling(alias: str, config: Any, reset: bool) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    options = config.get("OPTIONS") or {}
    declared = f"DATABASES[{alias!r}] declares PgBouncer transaction pooling"
    if config.get("DISABLE_SERVER_SIDE_CURSORS") is not True:
        messages.append(
            checks.Error(
                f"{declared} but leaves server-side cursors on: QuerySet.iterator() "
                "outside a transaction declares a cursor WITH HOLD on one server connection "
                "and fetches from whichever one PgBouncer assigns next (cursor does not "
                "exist).",
                hint="Set DATABASES[...]['DISABLE_SERVER_SIDE_CURSORS'] = True.",
                id="django_dbpool.E005",
            )
        )
    if options.get("assume_role"):
        messages.append(
            checks.Error(
                f"{declared} and sets OPTIONS['assume_role']: Django runs SET ROLE once per "
                "connection, which holds on one server connection only. Later transactions "
                "may run as the login user, and other clients given that server connection "
                "run as the role.",
                hint="Remove OPTIONS['assume_role'] and log in as that role: set USER and "
                "PASSWORD (and PgBouncer's user list) to it.",
                id="django_dbpool.E006",
            )
        )
    threshold = options.get("prepare_threshold")
    # Django's default cursors bind parameters client-side and never prepare; only
    # server-side binding makes psycopg prepare statements.
    if threshold is not None and options.get("server_side_binding") is True:
        messages.append(
            checks.Warning(
                f"{declared} and sets OPTIONS['prepare_threshold']={threshold!r} with "
                "OPTIONS['server_side_binding']=True: psycopg prepares statements on one "
                "server connection and runs them on whichever one PgBouncer assigns next "
                "(prepared statement does not exist).",
                hint="Remove OPTIONS['prepare_threshold'] (Django's default, None, turns "
                "prepared statements off). PgBouncer 1.21+ with max_prepared_statements > 0 "
                "tracks them; if yours does, silence django_dbpool.W005.",
                id="django_dbpool.W005",
            )
        )
    if reset:
        messages.append(
            checks.Warning(
                f"{declared} and sets POOL['RESET']=True: DISCARD ALL then resets whichever "
                "server connection PgBouncer assigns to it, not the ones earlier "
                "transactions left session state on, and costs round trips every request.",
                hint="Remove RESET from DATABASES[...]['POOL']; under transaction pooling, "
                "keep session settings inside transactions (SET LOCAL).",
                id="django_dbpool.W006",
            )
        )
    if options.get("options"):
        messages.append(
            checks.Warning(
                f"{declared} and sets OPTIONS['options']={options['options']!r}: PgBouncer "
                "rejects this startup parameter (unsupported startup parameter: options) "
                "unless it only sets parameters PgBouncer tracks (1.20+), or drops it when "
                "listed in ignore_startup_parameters; the settings never reach PostgreSQL.",
                hint="Set them on the server for the user or database instead (ALTER ROLE "
                "... SET name = value), or per transaction with SET LOCAL.",
                id="django_dbpool.W007",
            )
        )
    return messages


@checks.register(checks.Tags.database)
def check_leases(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Settings that undo transaction-scoped leases (``POOL["LEASE"] = "transaction"``)."""
    messages: list[checks.CheckMessage] = []
    for alias, config, declared in _declared_options():
        if declared.lease != "transaction":
            continue
        if declared.reset:
            messages.append(
                checks.Warning(
                    f"DATABASES[{alias!r}] has transaction leases and POOL['RESET']=True: "
                    "the session is reset each time a connection is given back, that is "
                    "after every statement and transaction, at a round trip or more each.",
                    hint="Remove RESET from DATABASES[...]['POOL'] and keep session state "
                    "inside transactions (SET LOCAL) or django_dbpool.pinned(); or use LEASE "
                    "'request'.",
                    id="django_dbpool.W010",
                )
            )
        if config.get("AUTOCOMMIT", True) is False:
            messages.append(
                checks.Warning(
                    f"DATABASES[{alias!r}] has transaction leases and AUTOCOMMIT=False: a "
                    "transaction is always open, so a connection is held from the first "
                    "query to the end of the request, as with LEASE 'request'.",
                    hint="Keep AUTOCOMMIT on (Django's default) and use atomic(), or remove "
                    "LEASE from DATABASES[...]['POOL'].",
                    id="django_dbpool.W011",
                )
            )
    return messages


@checks.register(checks.Tags.database, deploy=True)
def check_deployment(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """TLS that verifies the server, and a password, for every pooled alias."""
    messages: list[checks.CheckMessage] = []
    for alias in pooled_aliases():
        config = settings.DATABASES[alias]
        options = config.get("OPTIONS") or {}
        unverified = _support(alias).unverified_tls(alias, options)
        if unverified is not None:
            messages.append(unverified)
        if not config.get("PASSWORD"):
            messages.append(
                checks.Warning(
                    f"DATABASES[{alias!r}] has an empty PASSWORD.",
                    hint="Give the database user a password and set it in PASSWORD (or "
                    "in DATABASE_URL).",
                    id="django_dbpool.W003",
                )
            )
    return messages


def _check_server(alias: str) -> list[checks.CheckMessage]:
    from django.db import connections

    connection = connections[alias]
    try:
        options = pool_options(alias, settings.DATABASES[alias])
    except ImproperlyConfigured:
        return []  # already reported as E001
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            limit = _support(alias).connection_limit(cursor)
    except Exception as exc:
        failed = _connect_failed(exc)
        if failed is not None:
            # The pool's errors quote the last connect error: say it once, the fix as hint.
            cause, hint = f"{failed.failure}.", failed.fix
        else:
            cause = f"{type(exc).__name__}: {exc}"
            hint = (
                "Check HOST, PORT, NAME, USER and PASSWORD, and that the server accepts "
                "connections from this host."
            )
        return [
            checks.Error(
                f"DATABASES[{alias!r}]: could not run SELECT 1 through the pool: {cause}",
                hint=hint,
                id="django_dbpool.E004",
            )
        ]
    finally:
        connection.close()
    if alias_options(alias, settings.DATABASES[alias]).pgbouncer is not None:
        # The pool's connections end at PgBouncer, which caps the server side itself.
        return []
    workers = _worker_processes()
    wanted = options.max_size * workers
    if wanted > limit:
        return [
            checks.Warning(
                f"DATABASES[{alias!r}]: MAX_SIZE {options.max_size} x {workers} worker "
                f"process(es) = {wanted} connections, but the server allows {limit} for "
                "this application.",
                hint="Lower MAX_SIZE or the number of workers (WEB_CONCURRENCY), raise the "
                "server's max_connections, or put PgBouncer in front of PostgreSQL.",
                id="django_dbpool.W004",
            )
        ]
    return []


def _connect_failed(error: BaseException) -> ConnectFailed | None:
    # PoolUnavailable's cause, or the error itself.
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, ConnectFailed):
        seen = seen.__cause__
    return seen


def _worker_processes() -> int:
    value = os.environ.get("WEB_CONCURRENCY", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1
