"""Helpers for the server processes that tests, the demo and the benchmarks start."""

from __future__ import annotations

import subprocess
from typing import Any

__all__ = ["stop_gracefully"]


def stop_gracefully(server: subprocess.Popen[Any]) -> None:
    """SIGTERM, and SIGKILL only after 60 s: SIGKILL to a gunicorn master would orphan its
    workers, which keep their database sessions until they notice."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
