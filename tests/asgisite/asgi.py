"""``uvicorn tests.asgisite.asgi:application`` (DJANGO_SETTINGS_MODULE defaults to this site's)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.asgisite.settings")
application = get_asgi_application()
