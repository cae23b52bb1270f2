"""The example project's WSGI application, with the pool used before gunicorn forks.

Under ``gunicorn --preload`` the master imports this module, so when it forks its workers
its pool holds two live connections: one checked out by the master's main thread (the
thread that forks, whose Django connection every worker inherits) and one idle. Their
session keys (tests.views.SESSION_KEY_SQL) and the master's pid are written as JSON to the
file named by DBPOOL_FORK_PRELOAD_FILE.
"""

from __future__ import annotations

import json
import os
import threading

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.faults.fork_settings")

application = get_wsgi_application()


def _session_key() -> str:
    from django.db import connection

    from tests.views import SESSION_KEY_SQL

    with connection.cursor() as cursor:
        cursor.execute(SESSION_KEY_SQL[connection.vendor])
        return str(cursor.fetchone()[0])


def _idle_session(keys: list[str]) -> None:
    from django.db import connection

    keys.append(_session_key())
    connection.close()  # back to the pool, idle


_sessions = [_session_key()]  # left checked out, as an import-time query leaves it
_thread = threading.Thread(target=_idle_session, args=(_sessions,))
_thread.start()
_thread.join(30)
with open(os.environ["DBPOOL_FORK_PRELOAD_FILE"], "w") as _file:
    json.dump({"pid": os.getpid(), "sessions": _sessions}, _file)
