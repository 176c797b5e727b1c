"""The pieces benchmark measures every piece of a job's path on the real components."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_pieces_bench_reports_the_cpu_of_every_piece(
    db_url: str, redis_url: str, s3_endpoint: str, tmp_path: Path
) -> None:
    report = tmp_path / "pieces.json"
    args = ["bench", "pieces", "--calls", "10", "--json", str(report)]
    args += ["--database-url", db_url, "--broker-url", redis_url, "--s3-endpoint-url", s3_endpoint]
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pieces = {row["piece"]: row["cpu_ms"] for row in json.loads(report.read_text())["pieces"]}
    # Another process's CPU is read from /proc in clock ticks (10 ms), so a cheap piece timed
    # there (the API's requests, the Celery worker's tasks) may read 0 over a few calls; the
    # pieces called in the bench's own thread are timed by its clock.
    assert len(pieces) == 15 and all(ms >= 0 for ms in pieces.values()), pieces
    in_thread = ("API: the submission", "API: of which", "worker: the", "worker: a ", "a pooled")
    assert all(ms > 0 for piece, ms in pieces.items() if piece.startswith(in_thread)), pieces

    def cpu(start: str) -> float:
        [ms] = [ms for piece, ms in pieces.items() if piece.startswith(start)]
        return ms

    # A submission is more than any request's floor, and more than the calls it makes.
    assert cpu("API: POST /v1/jobs") > cpu("API: GET /healthz")
    submission = cpu("API: the submission called in-process")
    assert submission > cpu("API: of which the S3") and submission > cpu("API: of which the Celery")
    assert "| worker: the claim transaction |" in result.stdout
