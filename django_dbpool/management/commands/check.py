"""``manage.py check``: Django's own, except that a pooled alias named with ``--database``
that cannot connect is reported as ``django_dbpool.E004`` and left out of the databases the
other checks are given. Django's MySQL backend reads the server's version and ``sql_mode``
in its model and backend checks: the first of them to run would end the command in a
traceback instead of the error that says what to fix.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands import check

from ...checks import skipping_unreachable


class Command(check.Command):
    def handle(self, *app_labels: Any, **options: Any) -> None:
        with skipping_unreachable(options.get("databases") or []) as reachable:
            super().handle(*app_labels, **{**options, "databases": reachable})
