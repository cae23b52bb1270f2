from __future__ import annotations

import pytest
from django.conf import settings

from tests.dbservers import redact


def pytest_report_header(config: pytest.Config) -> str:
    return f"database: {settings.DATABASE_VENDOR} at {redact(settings.DATABASE_URL)}"
