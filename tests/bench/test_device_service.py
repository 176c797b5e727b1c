"""The service bench's real-engine rounds on the embedded stack (what a lent GPU runs), and the
GPU utilization meter."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench.gpu_meter import UtilizationMeter

ABSENT_PACKAGES = Path(__file__).parents[1] / "support" / "absent_packages"
# What the GPU machine's carried wheels leave out (scripts/gpu-wheels): the embedded stack
# must run without them.
NOT_CARRIED = "boto3,botocore,s3transfer,psycopg,cryptography,av,moto"


@pytest.mark.slow
def test_real_engine_rounds_run_on_the_embedded_stack_without_the_server_packages(
    tmp_path: Path,
) -> None:
    report = tmp_path / "device.json"
    args = ["bench", "service", "--device", "cpu", "--preset", "test", "--embedded"]
    args += ["--sizes", "64x48,96x64", "--images", "3", "--new-tokens", "3", "--warm-up", "4"]
    args += ["--max-batch-size", "3", "--cache-dir", str(tmp_path / "models")]
    args += ["--log-dir", str(tmp_path / "logs"), "--json", str(report)]
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{ABSENT_PACKAGES}:{Path.cwd()}",
        "TEST_ABSENT_PACKAGES": NOT_CARRIED,
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    logs = "".join(p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log"))
    assert result.returncode == 0, result.stderr[-3000:] + logs
    figures = json.loads(report.read_text())
    assert figures["device"] == "cpu (real engine)" and figures["stack"] == "embedded"
    assert [row["size"] for row in figures["rows"]] == ["64x48", "96x64"]
    for row in figures["rows"]:
        assert row["succeeded"] == 3
        assert row["warm_up_photos"] == 4  # the most asked for: tiny photos fill no cache
        assert 0 < row["device_busy_fraction"] <= 1
        assert row["gpu_utilization"] is None  # no GPU here
        assert set(row["host_cpu_ms_per_job"]) >= {"api", "worker", "sweeper"}
        assert row["host_cpu_ms_per_job"]["worker"] > 0
        assert row["server_cpu_ms_per_job"] == {}  # SQLite and the filesystem broker: no servers
    assert "| 64x48 |" in result.stdout
    # The data lived in the embedded stack's files.
    assert (tmp_path / "logs" / "data" / "jobs.db").is_file()


def test_the_hidden_packages_cannot_be_imported() -> None:
    code = "import importlib.util, sys; print(importlib.util.find_spec('boto3'))\nimport boto3"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ABSENT_PACKAGES), "TEST_ABSENT_PACKAGES": NOT_CARRIED},
    )
    assert result.stdout.strip() == "None"
    assert "ModuleNotFoundError: No module named 'boto3'" in result.stderr


def test_the_meter_averages_its_readings_between_start_and_stop() -> None:
    readings = [0.2, 0.4, 0.6]
    three_read = threading.Event()

    def read() -> float:
        if len(readings) == 1:
            three_read.set()
            return readings[0]
        return readings.pop(0)

    meter = UtilizationMeter(read, period_s=0.001)
    meter.start()
    assert three_read.wait(10)
    mean = meter.stop()
    # 0.2, 0.4, then 0.6 however many more times: the mean of those readings.
    assert mean is not None and 0.4 <= mean < 0.6
    assert UtilizationMeter(lambda: 0.25, period_s=0.001).stop() is None  # never started


def test_the_meter_reports_nothing_without_a_reader_or_a_start() -> None:
    assert UtilizationMeter(None).stop() is None
    meter = UtilizationMeter(None)
    meter.start()
    assert meter.stop() is None
