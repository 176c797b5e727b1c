"""Makes packages look uninstalled in the processes started with this folder on PYTHONPATH.

TEST_ABSENT_PACKAGES names them (comma-separated top-level modules). Every import finder
is wrapped so that it finds nothing for them, as on a machine without them; code that asks
whether one is installed (importlib.util.find_spec) is told no, as it would be there.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ABSENT = frozenset(filter(None, os.environ.get("TEST_ABSENT_PACKAGES", "").split(",")))


class _Hidden:
    def __init__(self, finder: Any) -> None:
        self._finder = finder

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.partition(".")[0] in ABSENT:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._finder, attribute)


if ABSENT:
    sys.meta_path[:] = [_Hidden(finder) for finder in sys.meta_path]
