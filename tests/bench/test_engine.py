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


def test_scheduler_comparison_runs_both_batchers_on_every_workload(tmp_path: Path) -> None:
    report = tmp_path / "schedulers.json"
    args = ["--preset", "test", "--cache-dir", str(tmp_path / "models"), "--compare", "schedulers"]
    args += ["--jobs", "6", "--lengths", "2,4,8", "--uniform-length", "3", "--max-batch-size", "4"]
    args += ["--repeats", "2", "--json", str(report)]
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(report.read_text())
    runs = [(run["repeat"], run["workload"], run["scheduler"]) for run in figures["runs"]]
    first = [
        ("mixed burst", "static"),
        ("mixed burst", "continuous"),
        ("mixed burst", "continuous-arrival"),  # first come, first served
        ("mixed stream", "static"),
        ("mixed stream", "continuous"),
        ("mixed stream", "continuous-arrival"),
        ("mixed stream", "continuous-eager"),  # joins every arrival at the next step
        ("uniform", "static"),
        ("uniform", "continuous"),
    ]
    # the second repeat runs each workload's schedulers in the reverse order
    second = first[2::-1] + first[6:2:-1] + first[:6:-1]
    assert runs == [(0, *run) for run in first] + [(1, *run) for run in second]
    assert all(figures["identical"].values())
    for run in figures["runs"]:
        assert run["jobs"] == 6 and run["jobs_per_s"] > 0
        assert sorted(run["median_s_by_length"]) == (
            ["3"] if run["workload"] == "uniform" else ["2", "4", "8"]
        )
    continuous = figures["runs"][1]["batcher"]
    assert continuous["steps"] > 0 and 0 < continuous["mean_occupancy"] <= 4
    burst = figures["ratios"]["mixed burst"]["continuous"]
    static, cont = figures["runs"][0], figures["runs"][1]
    assert burst["throughput"][0] == round(cont["jobs_per_s"] / static["jobs_per_s"], 3)
    assert len(burst["throughput"]) == len(burst["short_median"]) == 2
    summary = burst["throughput_summary"]
    assert summary["min"] <= summary["median"] <= summary["max"]
    assert "continuous/static: throughput" in result.stdout and "(median of 2:" in result.stdout
    assert "continuous-eager/static: throughput" in result.stdout
    assert "continuous-arrival/static: throughput" in result.stdout


def test_staging_comparison_runs_copied_and_staged_on_both_workloads(tmp_path: Path) -> None:
    report = tmp_path / "staging.json"
    args = ["--preset", "test", "--cache-dir", str(tmp_path / "models"), "--compare", "staging"]
    args += ["--jobs", "6", "--new-tokens", "4", "--max-batch-size", "3", "--json", str(report)]
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(report.read_text())
    runs = [(run["workload"], run["scheduler"], run["mode"]) for run in figures["runs"]]
    assert runs == [
        (workload, scheduler, mode)
        for workload in ("tiles", "pictures")
        for scheduler in ("continuous", "static")
        for mode in ("copied", "staged")
    ]
    assert figures["identical"] == {
        "tiles": True,
        "tiles, static": True,
        "pictures": True,
        "pictures, static": True,
    }
    for copied, staged in zip(figures["runs"][::2], figures["runs"][1::2], strict=True):
        assert copied["staging"] is None and copied["steps"] == staged["steps"] > 0
        counts = staged["staging"]
        assert counts["used"] > 0 and counts["used"] + counts["copied_at_prefill"] == 6
        if staged["scheduler"] == "static":  # batches of 3: the second staged during the first
            assert (staged["steps"], counts["used"], counts["copied_at_prefill"]) == (2, 3, 3)
    assert "greedy outputs of copied and staged, pictures: identical" in result.stdout
    assert "greedy outputs of copied and staged, pictures, static: identical" in result.stdout


def test_copy_overlap_counts_only_the_time_inside_compute() -> None:
    from bench.staging import merged_spans, overlap_ms

    busy = merged_spans([(5.0, 8.0), (0.0, 2.0), (1.0, 3.0)])
    assert busy == [(0.0, 3.0), (5.0, 8.0)]
    assert overlap_ms((2.0, 6.0), busy) == 2.0  # 2-3 and 5-6
    assert overlap_ms((3.0, 5.0), busy) == 0.0
