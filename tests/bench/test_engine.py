"""The engine benchmark runs on the worker engine alone, as on a bare GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# What a bare GPU machine lacks: the queue, the web stack, the database and storage clients.
ABSENT = (
    "celery kombu fastapi starlette uvicorn sqlalchemy alembic psycopg redis boto3 botocore moto"
).split()

# A None entry in sys.modules makes a package look absent, to imports and availability probes.
BLOCKER = f"""
import sys
sys.modules.update(dict.fromkeys({ABSENT!r}))
from bench.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_engine_bench_runs_without_celery_or_the_web_stack(tmp_path: Path) -> None:
    report = tmp_path / "engine.json"
    args = ["--preset", "test", "--cache-dir", str(tmp_path / "models")]
    args += ["--images", "3", "--tiles", "1,13", "--new-tokens", "4", "--json", str(report)]
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(report.read_text())
    assert [w["rows"][0]["tiles_per_image"] for w in figures["workloads"]] == [1, 13]
    for workload in figures["workloads"]:
        naive, batched = workload["rows"]
        assert (naive["mode"], batched["mode"]) == ("naive", "batched")
        assert naive["images"] == batched["images"] == 3
        assert batched["ratio_to_naive"] > 0
        assert workload["outputs_identical"] is True
    assert "greedy outputs of the two modes: identical" in result.stdout
    assert figures["dtype"] == "float32" and figures["device"] == "cpu"
