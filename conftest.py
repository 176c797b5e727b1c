"""What both test trees share (tests/ and client/tests/): the real services, the timeouts.

The services come as a plugin, not an import: neither tree imports the other's test modules.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.support.services"]

# pyproject's timeout (120 s) is for unit tests; a test that starts the service's own processes
# (a worker loads torch and a model, several may start in turn) gets this unless it marks one.
PROCESS_TEST_DIRS = {"e2e", "faults", "cli", "bench"}
PROCESS_TEST_TIMEOUT_S = 600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the tests that start processes, and slow ones, their longer timeout."""
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        if item.path.parent.name in PROCESS_TEST_DIRS or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.timeout(PROCESS_TEST_TIMEOUT_S))
