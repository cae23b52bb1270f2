"""Settings for the fork scenarios: the example project with the test suite's probe views.

The test database has a name of its own: the pytest run that starts these processes has
created ``test_<NAME>`` on the same server.
"""

from __future__ import annotations

from example_project.settings import *  # noqa: F403
from example_project.settings import DATABASES

ROOT_URLCONF = "tests.urls"
DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_fork"}
TEST_RUNNER = "tests.faults.fork_runner.PreforkRunner"
