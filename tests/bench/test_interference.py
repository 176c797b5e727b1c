"""The interference benchmark measures the decode loop idle, beside threads and beside a pool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_interference_bench_measures_every_mode_side_by_side(tmp_path: Path) -> None:
    report = tmp_path / "interference.json"
    args = ["bench", "prepare", "--interference", "--preset", "test"]
    args += ["--cache-dir", str(tmp_path / "models"), "--seconds", "0.5", "--rounds", "1"]
    args += ["--rate", "4", "--rows", "2", "--json", str(report)]
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(report.read_text())
    rows = {row["mode"]: row for row in figures["rows_measured"]}
    assert list(rows) == [
        "idle",
        "threads",
        "pool",
        "threads, device resize",
        "pool, device resize",
        "pool, device resize, no slots",
    ]
    assert all(row["steps"] > 0 and row["median_step_ms"] > 0 for row in rows.values())
    assert rows["idle"]["jobs_per_s"] == 0 and rows["idle"]["ratio_to_idle"] == 1.0
    assert all(row["jobs_per_s"] > 0 for mode, row in rows.items() if mode != "idle")
    assert len(figures["load_average_before"]) == 3
    assert "| pool |" in result.stdout
