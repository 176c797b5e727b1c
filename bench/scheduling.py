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

On both mixed workloads `continuous-arrival` shows what joining shortest first is worth: the
continuous batcher with `join_order: arrival` (first come, first served). On the stream,
`continuous-eager` shows what joining in groups is worth: `join_waiting_ratio: 0` (every
arrival joins at the next step).

For each: seconds from the first arrival to the last completion, jobs/s and tokens/s, the
median completion time (arrival to result) of each length, and the batchers' own figures
(rows per step, steps/s, share of steps that prefilled). Greedy outputs of the two batchers
are compared job by job.

`--repeats N` runs the whole comparison N times, interleaved: every workload's schedulers run
back to back in each repeat (in reverse order on odd repeats), each ratio to static compares
the runs of one repeat, and the report gives every repeat's ratio, their median and range.
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

from bench.engine import bench_images, device_name, load_bench_engine
from core.prompts import build_conversation
from core.specs import GenerationParams
from worker.batcher import Batcher
from worker.engine import Generation, InternVLEngine, PreparedJob
from worker.schedulers import make_batcher


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
    "continuous-arrival": {"scheduler": "continuous", "join_order": "arrival"},
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
    repeats: int = 1,
) -> dict[str, Any]:
    """Static and continuous batching side by side on the three workloads, `repeats` times.

    Each repeat runs every workload's schedulers back to back, in the listed order on even
    repeats and reversed on odd ones, so a drift in the machine's load (it is shared) does not
    favour whichever runs first; each ratio compares the runs of one repeat.
    """
    # Each length equally often (16 of each of 8, 32, 128 for 48 jobs), in a shuffled order.
    drawn = [lengths[i % len(lengths)] for i in range(jobs)]
    mixed = workload_jobs(engine, [int(n) for n in np.random.default_rng(seed).permutation(drawn)])
    uniform = workload_jobs(engine, [uniform_length] * jobs)
    for scheduler in ("static", "continuous"):  # warm-up: kernels, allocator, thread pools
        run_once(engine, scheduler, mixed[:4], [0.0] * 4, max_batch_size)
    report: dict[str, Any] = {"runs": [], "identical": {}, "stream_rate": None, "repeats": repeats}
    both = ("static", "continuous")
    plan = [
        ("mixed burst", mixed, (*both, "continuous-arrival")),
        ("mixed stream", mixed, (*both, "continuous-arrival", "continuous-eager")),
        ("uniform", uniform, both),
    ]
    outputs: dict[str, list[list[str]]] = {}
    for repeat in range(repeats):
        for workload, prepared, schedulers in plan:
            arrivals = _arrivals(report, workload, jobs, stream_rate)
            for scheduler in schedulers if repeat % 2 == 0 else schedulers[::-1]:
                run, results = measure(
                    engine, scheduler, workload, prepared, arrivals, max_batch_size
                )
                report["runs"].append({**asdict(run), "repeat": repeat})
                outputs.setdefault(workload, []).append([r.text for r in results])
    for workload, texts in outputs.items():
        report["identical"][workload] = all(out == texts[0] for out in texts)
    report["ratios"] = ratios(report["runs"])
    return report


def _arrivals(report: dict[str, Any], workload: str, jobs: int, stream_rate: float) -> list[float]:
    """All at once; or, for the stream, at 1.5x the faster first burst's rate unless given."""
    if workload != "mixed stream":
        return [0.0] * jobs
    if report["stream_rate"] is None:  # fixed by the first repeat, the same for every repeat
        fastest = max(run["jobs_per_s"] for run in report["runs"] if run["repeat"] == 0)
        report["stream_rate"] = round(stream_rate or 1.5 * fastest, 2)
    return [i / report["stream_rate"] for i in range(jobs)]


def ratios(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per workload and scheduler: its throughput and shortest-job median over static's, per
    repeat (both measured in that repeat), with their median, lowest and highest."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    static = {(r["workload"], r["repeat"]): r for r in runs if r["scheduler"] == "static"}
    for run in runs:
        base = static[(run["workload"], run["repeat"])]
        if run is base:
            continue
        shortest = min(base["median_s_by_length"])
        entry = found.setdefault(run["workload"], {}).setdefault(
            run["scheduler"], {"shortest": shortest, "throughput": [], "short_median": []}
        )
        entry["throughput"].append(round(run["jobs_per_s"] / base["jobs_per_s"], 3))
        short = run["median_s_by_length"][shortest] / base["median_s_by_length"][shortest]
        entry["short_median"].append(round(short, 3))
    for schedulers in found.values():
        for entry in schedulers.values():
            for key in ("throughput", "short_median"):
                values = entry[key]
                entry[f"{key}_summary"] = {
                    "median": round(statistics.median(values), 3),
                    "min": min(values),
                    "max": max(values),
                }
    return found


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
    repeats: int = 1,
) -> dict[str, Any]:
    """Load the model once and compare the two schedulers on it."""
    engine = load_bench_engine(
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        attention=attention,
        max_batch_size=max_batch_size,
    )
    report = compare_schedulers(
        engine,
        jobs=jobs,
        lengths=lengths,
        uniform_length=uniform_length,
        max_batch_size=max_batch_size,
        stream_rate=stream_rate,
        repeats=repeats,
    )
    return {
        "checkpoint": checkpoint,
        "device_name": device_name(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "attention": engine.attn_implementation,
        "max_batch_size": max_batch_size,
        **report,
    }
