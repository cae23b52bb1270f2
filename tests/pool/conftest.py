from __future__ import annotations

from collections.abc import Iterator

import pytest

from django_dbpool.pool import Pool


@pytest.fixture
def manual_housekeeping(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No background housekeeping pass: the test calls ``pool._housekeep()`` itself, so
    advancing a fake clock never races with the housekeeping thread."""
    monkeypatch.setattr(Pool, "_housekeeper_loop", lambda self: None)
    return
