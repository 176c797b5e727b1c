"""`internvl-jobs bench engine --compare schedulers`: continuous against static batching.

Both batchers run on the same loaded engine, in one process and one run, on the same prepared
jobs (one-tile images, greedy, each job's length fixed by min_new_tokens = max_new_tokens):

- mixed burst: `--jobs` jobs whose lengths are drawn from `--lengths` (8, 32, 128, each as
  often, shuffled), all submitted at once;
- mixed stream: the same jobs arriving one at a time at a steady rate (`--stream-rate` jobs/s;
  by default 1.5 times the faster scheduler's throughput on the burst, measured just before,
  so that every scheduler is kept busy and the arrival rate caps none of them: at a rate
  one of them can keep up with, its "throughput" would only be the arrival rate);
- uniform burst: every job `--uniform-length` (32) tokens.

On the stream, a third run shows what joining in groups is worth: `continuous-eager` is the
continuous batcher with `join_waiting_ratio: 0` (every arrival joins at the next step).

For each: seconds from the first arrival to the last completion, jobs/s and tokens/s, the
median completion time (arrival to result) of each length, and the batchers' own figures
(rows per step, steps/s, share of steps that prefilled). Greedy outputs of the two batchers
are compared job by job.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bench.engine import bench_images
from core.config import ModelSpec
from core.prompts import build_conversation
from core.specs import GenerationParams
from worker.batcher import Batcher
from worker.continuous import make_batcher
from worker.engine import Generation, InternVLEngine, PreparedJob


@dataclass
class SchedulerRun:
    """One scheduler on one workload."""

    workload: str
    scheduler: str
    jobs: int
    seconds: float
    jobs_per_s: float
    tokens_per_s: float
    median_s_by_length: dict[int, float]
    median_s: float
    batcher: dict[str, Any] = field(default_factory=dict)
    peak_gpu_mib: float | None = None


def workload_jobs(engine: InternVLEngine, lengths: list[int]) -> list[PreparedJob]:
    """One prepared one-tile caption job per length, each on its own noise image."""
    spec = {"task": "caption", "images": ["image"]}
    conversation = build_conversation(spec, control_tokens=engine.control_tokens)
    images = bench_images(len(lengths), 1, engine.tile_size, seed=1)
    return [
        engine.prepare(
            f"bench-{i}",
            conversation,
            [image],
            GenerationParams(max_new_tokens=length, min_new_tokens=length),
        )
        for i, (image, length) in enumerate(zip(images, lengths, strict=True))
    ]


# Each scheduler measured: the registry settings it stands for.
SCHEDULERS: dict[str, dict[str, Any]] = {
    "static": {"scheduler": "static"},
    "continuous": {"scheduler": "continuous"},
    "continuous-eager": {"scheduler": "continuous", "join_waiting_ratio": 0.0},
}


def make(engine: InternVLEngine, scheduler: str, max_batch_size: int) -> Batcher:
    """A batcher of the named kind with the engine's registry settings."""
    update = {**SCHEDULERS[scheduler], "max_batch_size": max_batch_size}
    return make_batcher(engine, engine.spec.model_copy(update=update))


def run_once(
    engine: InternVLEngine,
    scheduler: str,
    jobs: list[PreparedJob],
    arrivals_s: list[float],
    max_batch_size: int,
) -> tuple[list[float], list[Generation], dict[str, Any], float]:
    """Submit each job at its arrival time; return completion times, results, stats, seconds."""
    batcher = make(engine, scheduler, max_batch_size)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
        torch.cuda.reset_peak_memory_stats(engine.device)
    batcher.start()
    finished = [0.0] * len(jobs)
    lock = threading.Lock()
    futures: list[Future[Generation]] = []
    started = time.perf_counter()
    for index, (job, at) in enumerate(zip(jobs, arrivals_s, strict=True)):
        time.sleep(max(started + at - time.perf_counter(), 0.0))
        future = batcher.submit(job)

        def done(_: Future[Generation], index: int = index) -> None:
            with lock:
                finished[index] = time.perf_counter() - started

        future.add_done_callback(done)
        futures.append(future)
    results = [future.result() for future in futures]
    seconds = max(finished)
    batcher.stop()
    took = [end - at for end, at in zip(finished, arrivals_s, strict=True)]
    return took, results, batcher.stats.as_dict(), seconds


def measure(
    engine: InternVLEngine,
    scheduler: str,
    workload: str,
    jobs: list[PreparedJob],
    arrivals_s: list[float],
    max_batch_size: int,
) -> tuple[SchedulerRun, list[Generation]]:
    """Figures of one scheduler on one workload."""
    took, results, stats, seconds = run_once(engine, scheduler, jobs, arrivals_s, max_batch_size)
    by_length: dict[int, list[float]] = {}
    for job, spent in zip(jobs, took, strict=True):
        by_length.setdefault(job.params.max_new_tokens, []).append(spent)
    tokens = sum(result.completion_tokens for result in results)
    peak = None
    if engine.device.type == "cuda":
        peak = round(torch.cuda.max_memory_allocated(engine.device) / 2**20, 1)
    run = SchedulerRun(
        workload=workload,
        scheduler=scheduler,
        jobs=len(jobs),
        seconds=round(seconds, 3),
        jobs_per_s=round(len(jobs) / seconds, 2),
        tokens_per_s=round(tokens / seconds, 1),
        median_s_by_length={
            k: round(statistics.median(v), 3) for k, v in sorted(by_length.items())
        },
        median_s=round(statistics.median(took), 3),
        batcher={k: stats[k] for k in _STATS},
        peak_gpu_mib=peak,
    )
    return run, results


_STATS = ("mean_batch_size", "steps", "mean_occupancy", "steps_per_s", "prefill_step_share")


def compare_schedulers(
    engine: InternVLEngine,
    *,
    jobs: int,
    lengths: list[int],
    uniform_length: int,
    max_batch_size: int,
    stream_rate: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Static and continuous batching side by side on the three workloads."""
    # Each length equally often (16 of each of 8, 32, 128 for 48 jobs), in a shuffled order.
    drawn = [lengths[i % len(lengths)] for i in range(jobs)]
    mixed = workload_jobs(engine, [int(n) for n in np.random.default_rng(seed).permutation(drawn)])
    uniform = workload_jobs(engine, [uniform_length] * jobs)
    for scheduler in ("static", "continuous"):  # warm-up: kernels, allocator, thread pools
        run_once(engine, scheduler, mixed[:4], [0.0] * 4, max_batch_size)
    report: dict[str, Any] = {"runs": [], "identical": {}, "stream_rate": None}
    burst = [0.0] * jobs
    both = ("static", "continuous")
    plan = [
        ("mixed burst", mixed, burst, both),
        ("mixed stream", mixed, None, (*both, "continuous-eager")),
        ("uniform", uniform, burst, both),
    ]
    for workload, prepared, arrivals, schedulers in plan:
        if arrivals is None:  # 1.5x the faster burst throughput, unless given
            fastest = max(run["jobs_per_s"] for run in report["runs"])
            rate = stream_rate or 1.5 * fastest
            report["stream_rate"] = round(rate, 2)
            arrivals = [i / rate for i in range(jobs)]
        outputs = []
        for scheduler in schedulers:
            run, results = measure(engine, scheduler, workload, prepared, arrivals, max_batch_size)
            report["runs"].append(asdict(run))
            outputs.append([r.text for r in results])
        report["identical"][workload] = all(out == outputs[0] for out in outputs)
    return report


def format_comparison(report: dict[str, Any]) -> str:
    """The comparison as a plain-text table, continuous against static per workload."""
    lines = [
        f"stream rate {report['stream_rate']} jobs/s",
        f"{'workload':13} {'scheduler':16} {'s':>7} {'jobs/s':>7} {'tok/s':>7} "
        f"{'p50 s':>6} {'p50 by length (s)':>26} {'rows/step':>9} {'steps/s':>7} "
        f"{'prefill':>7} {'peak MiB':>8}",
    ]
    workloads: dict[str, list[dict[str, Any]]] = {}
    for run in report["runs"]:
        workloads.setdefault(run["workload"], []).append(run)
    for runs in workloads.values():
        for run in runs:
            lengths = " ".join(f"{k}:{v:.2f}" for k, v in run["median_s_by_length"].items())
            b = run["batcher"]
            rows = b["mean_occupancy"] or b["mean_batch_size"]
            peak = "-" if run["peak_gpu_mib"] is None else f"{run['peak_gpu_mib']:.0f}"
            lines.append(
                f"{run['workload']:13} {run['scheduler']:16} {run['seconds']:>7.2f} "
                f"{run['jobs_per_s']:>7.2f} {run['tokens_per_s']:>7.1f} {run['median_s']:>6.2f} "
                f"{lengths:>26} {rows:>9.2f} {b['steps_per_s']:>7.1f} "
                f"{b['prefill_step_share']:>7.2f} {peak:>8}"
            )
        static = runs[0]
        shortest = min(static["median_s_by_length"])
        for other in runs[1:]:
            throughput = other["jobs_per_s"] / static["jobs_per_s"]
            short_ratio = (
                other["median_s_by_length"][shortest] / static["median_s_by_length"][shortest]
            )
            lines.append(
                f"  {other['scheduler']}/static: throughput {throughput:.2f}x,"
                f" median completion of the {shortest}-token jobs {short_ratio:.2f}x"
            )
        same = "identical" if report["identical"][static["workload"]] else "DIFFERENT"
        lines.append(f"  greedy outputs {same}")
    return "\n".join(lines)


def run_scheduling_bench(
    *,
    checkpoint: str,
    device: str,
    dtype: str,
    attention: str,
    jobs: int,
    lengths: list[int],
    uniform_length: int,
    max_batch_size: int,
    stream_rate: float,
) -> dict[str, Any]:
    """Load the model once and compare the two schedulers on it."""
    spec = ModelSpec(
        alias="bench",
        checkpoint=checkpoint,
        dtype=dtype,
        attn_implementation=attention,
        max_batch_size=max_batch_size,
    )
    engine = InternVLEngine(spec, device=device)
    report = compare_schedulers(
        engine,
        jobs=jobs,
        lengths=lengths,
        uniform_length=uniform_length,
        max_batch_size=max_batch_size,
        stream_rate=stream_rate,
    )
    device_name = (
        torch.cuda.get_device_name(engine.device)
        if engine.device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    return {
        "checkpoint": checkpoint,
        "device_name": device_name,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "attention": engine.attn_implementation,
        "max_batch_size": max_batch_size,
        **report,
    }
