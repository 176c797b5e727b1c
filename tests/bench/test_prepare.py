"""The prepare benchmark times every path side by side and measures both paths' closeness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_prepare_bench_reports_both_paths_against_the_processor(tmp_path: Path) -> None:
    report = tmp_path / "prepare.json"
    args = ["bench", "prepare", "--repeats", "1", "--json", str(report)]
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["size"]: row for row in json.loads(report.read_text())["rows"]}
    assert list(rows) == ["640x480", "1920x1080", "4000x3000"]
    for row in rows.values():
        assert row["processor_ms"] > 0 and row["host_resize_ms"] > 0
        assert row["device_resize_host_ms"] > 0 and row["device_part_on_cpu_ms"] > 0
        assert row["device_closeness"][0] <= 0.1 and row["device_closeness"][1] <= 0.02
    # Decoded at full scale, host tiles are the processor's exactly; the device's float
    # arithmetic is within one uint8 step (1 / (255 x 0.225) after normalisation).
    assert rows["640x480"]["host_closeness"] == [0.0, 0.0]
    assert 0 < rows["640x480"]["device_closeness"][0] <= 0.018
    # A 640x480 photo travels as its picture: far fewer bytes than its 13 tiles.
    assert rows["640x480"]["picture_mib"] * 8 < rows["640x480"]["tiles_mib"]
    assert "| 4000x3000 |" in result.stdout and "device resize" in result.stdout
