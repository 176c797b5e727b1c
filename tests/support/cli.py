"""Running `internvl-jobs submit` as a user would, against a live API."""

from __future__ import annotations

import subprocess
import sys

from tests.support import service_env


def submit(base: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`internvl-jobs submit ARGS --url base`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "submit", *args, "--url", base, "--timeout", "180"],
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
