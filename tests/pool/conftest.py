from __future__ import annotations

from collections.abc import Iterator

import pytest

from django_dbpool.pool._housekeeper import Housekeeper


@pytest.fixture
def manual_housekeeping(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No background housekeeping pass: the test calls ``pool._housekeeper.run_once()`` itself, so
    advancing a fake clock never races with the housekeeping thread."""
    monkeypatch.setattr(Housekeeper, "run", lambda self: None)
    return
