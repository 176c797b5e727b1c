"""The commits benchmark records jobs through a worker's group commit, the database made distant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.slow


def test_commits_bench_records_every_job_at_each_round_trip_and_concurrency(
    db_url: str, tmp_path: Path
) -> None:
    report = tmp_path / "commits.json"
    args = ["bench", "commits", "--database-url", db_url, "--rtt-ms", "0,4"]
    args += ["--concurrency", "1,2", "--jobs", "60", "--threads", "8", "--json", str(report)]
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(report.read_text())["commits"]
    assert [(row["rtt_ms"], row["concurrency"]) for row in rows] == [
        (0.0, 1), (0.0, 2), (4.0, 1), (4.0, 2)
    ]  # fmt: skip
    direct, distant = rows[0]["measured_rtt_ms"], rows[2]["measured_rtt_ms"]
    # The proxy holds every byte 2 ms each way (a sleep never ends early); loopback is faster.
    assert distant >= 4.0 > direct, (direct, distant)
    assert all(row["jobs"] == 60 and row["changes_per_transaction"] >= 1 for row in rows), rows
    assert all(row["jobs_per_s"] > 0 and row["cpu_ms_per_job"] > 0 for row in rows), rows
    # Every job of every cell was claimed once and completed (through the proxy or not).
    engine = create_engine(db_url)
    with engine.connect() as connection:
        statuses = dict(
            connection.execute(text("select status, count(*) from jobs group by status")).all()
        )
    engine.dispose()
    assert statuses == {"succeeded": 240}, statuses
    assert "| transactions at once |" in result.stdout
