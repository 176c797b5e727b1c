"""`internvl-jobs bench engine --compare staging`: pixels staged on the GPU ahead of the prefill.

The continuous batcher runs the same prepared jobs twice on one loaded engine: `copied` (no
stager: a group's pixels go to the device when its prefill starts, from pageable memory, on
the compute stream) and `staged` (worker/staging.py: pinned buffers, a side stream, the next
group's copies issued while the current step computes). Two workloads of 13-tile photos: as
uint8 tiles (7.5 MiB a job at 448 px) and as 640x480 pictures the device resizes (0.9 MiB).
Arrivals are counted in steps, not seconds (`--max-batch-size` jobs at once, then one more
after every step), so both runs see the same groups and their steps compare one to one.

The static batcher (worker/batcher.py: `scheduler: static`, and the path beam search takes)
runs them too, all submitted at once: batches of `--max-batch-size`, each later batch staged
as the one in front of it starts generating.

Figures: seconds, steps, host milliseconds per step with a prefill and per decode-only step;
on a GPU also the compute stream's milliseconds per prefill chunk and per decode step (CUDA
events around each model call; for the static batcher around each `generate`), and for the
staged run the copies on the side stream (count, MiB, milliseconds, GB/s) and their overlap:
the share of the copies' time during which the compute stream was inside a model call. Greedy
outputs of the two runs of each batcher are compared job by job. On a CPU there is no pinned
memory: the staged run copies through plain memory (worker.copies.HostCopies), so only the
outputs and the bookkeeping mean anything.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from bench.engine import bench_images, device_name, load_bench_engine
from core.prompts import build_conversation
from core.specs import GenerationParams
from worker.batcher import Batcher
from worker.continuous import ContinuousBatcher
from worker.copies import Copies, CudaCopies, HostCopies, Ready
from worker.decode import Prefill, RunningBatch
from worker.engine import Generation, InternVLEngine, PreparedJob
from worker.staging import Stager

Span = tuple[Any, Any]  # CUDA events at the start and the end of some work


class TimedCopies:
    """CUDA copies, each bracketed by timing events on the side stream."""

    def __init__(self, inner: CudaCopies) -> None:
        self.inner = inner
        self.spans: list[Span] = []
        self.bytes = 0

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        return self.inner.host_buffer(nbytes)

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        start, end = _event(), _event()
        start.record(self.inner.stream)
        moved = self.inner.to_device(host)
        end.record(self.inner.stream)
        self.spans.append((start, end))
        self.bytes += host.numel() * host.element_size()
        return moved

    def record(self) -> Ready:
        return self.inner.record()

    def wait(self, ready: Ready, tensors: Sequence[torch.Tensor]) -> None:
        self.inner.wait(ready, tensors)


class TimedBatcher(ContinuousBatcher):
    """The continuous batcher, its model calls bracketed by events on the compute stream."""

    spans: dict[str, list[Span]]

    def _prefill_chunk(self, prefill: Prefill, columns: int) -> torch.Tensor | None:
        call = super()._prefill_chunk
        return self._timed("prefill", lambda: call(prefill, columns))

    def _decode_step(self, batch: RunningBatch) -> torch.Tensor:
        call = super()._decode_step
        return self._timed("decode", lambda: call(batch))

    def _timed(self, kind: str, call: Callable[[], Any]) -> Any:
        return timed(self.engine.device, self.spans, kind, call)


def timed(
    device: torch.device, spans: dict[str, list[Span]], kind: str, call: Callable[[], Any]
) -> Any:
    """call(), bracketed by events on the compute stream (on a GPU) noted under `kind`."""
    if device.type != "cuda":
        return call()
    stream = torch.cuda.current_stream(device)
    start, end = _event(), _event()
    start.record(stream)
    result = call()
    end.record(stream)
    spans.setdefault(kind, []).append((start, end))
    return result


def _event() -> Any:
    return torch.cuda.Event(enable_timing=True)


def photo_jobs(engine: InternVLEngine, count: int, new_tokens: int) -> list[PreparedJob]:
    """One 13-tile caption job per noise photo, greedy, exactly new_tokens long."""
    spec = {"task": "caption", "images": ["image"]}
    conversation = build_conversation(spec, control_tokens=engine.control_tokens)
    params = GenerationParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    images = bench_images(count, 13, engine.tile_size, seed=2)
    return [
        engine.prepare(f"staging-{i}", conversation, [image], params)
        for i, image in enumerate(images)
    ]


def run_once(
    engine: InternVLEngine,
    jobs: list[PreparedJob],
    *,
    staged: bool,
    stage_mb: int,
    scheduler: str = "continuous",
) -> tuple[list[Generation], dict[str, Any]]:
    """The jobs through a continuous batcher, `max_batch_size` at once then one per step, or
    all at once through the static one."""
    copies: Copies | None = None
    if staged:
        cuda = engine.device.type == "cuda"
        copies = TimedCopies(CudaCopies(engine.device)) if cuda else HostCopies()
    stager = Stager(copies, limit_bytes=stage_mb * 2**20) if copies is not None else None
    if scheduler == "static":
        return _run_static(engine, jobs, stager, copies)
    spec = engine.spec
    batcher = TimedBatcher(
        engine,
        max_batch_size=spec.max_batch_size,
        max_wait_ms=spec.max_batch_wait_ms,
        max_batch_tiles=spec.max_batch_tiles,
        gap_ms=0,
        stager=stager,
    )
    batcher.spans = {}
    first = min(spec.max_batch_size, len(jobs))
    futures = [batcher.submit(job) for job in jobs[:first]]
    steps: list[tuple[float, bool]] = []
    submitted = threading.Event()

    def on_step(rows: int, elapsed_s: float, prefilled: bool) -> None:
        steps.append((elapsed_s, prefilled))
        if len(futures) < len(jobs):  # one arrival per step: counted in steps, not seconds
            futures.append(batcher.submit(jobs[len(futures)]))
        if len(futures) == len(jobs):
            submitted.set()

    batcher.on_step = on_step
    origin = _origin(engine)
    if first == len(jobs):
        submitted.set()
    batcher.start()
    submitted.wait()
    results = [future.result() for future in futures]
    batcher.stop()
    figures = _step_figures(steps)
    figures["staging"] = asdict(stager.stats) if stager is not None else None
    if origin is not None:
        torch.cuda.synchronize(engine.device)
        figures.update(_device_figures(engine, batcher.spans, copies, origin))
    return results, figures


def _run_static(
    engine: InternVLEngine, jobs: list[PreparedJob], stager: Stager | None, copies: Copies | None
) -> tuple[list[Generation], dict[str, Any]]:
    """The jobs through the static batcher, all submitted before it starts."""
    spec = engine.spec
    spans: dict[str, list[Span]] = {}
    batches: list[float] = []
    batcher = Batcher(
        lambda group: timed(engine.device, spans, "generate", lambda: engine.generate(group)),
        max_batch_size=spec.max_batch_size,
        max_wait_ms=spec.max_batch_wait_ms,
        max_batch_tiles=spec.max_batch_tiles,
        gap_ms=0,
        on_batch=lambda size, seconds: batches.append(seconds),
        stager=stager,
    )
    futures = [batcher.submit(job) for job in jobs]
    origin = _origin(engine)
    batcher.start()
    results = [future.result() for future in futures]
    batcher.stop()
    figures: dict[str, Any] = {
        "seconds": round(sum(batches), 3),
        "steps": len(batches),
        "generate_ms": _mean([seconds * 1000 for seconds in batches]),
        "staging": asdict(stager.stats) if stager is not None else None,
    }
    if origin is not None:
        torch.cuda.synchronize(engine.device)
        figures.update(_device_figures(engine, spans, copies, origin))
    return results, figures


def _origin(engine: InternVLEngine) -> Any:
    """On a GPU, an event recorded now on the compute stream (peak memory reset): time zero."""
    if engine.device.type != "cuda":
        return None
    torch.cuda.synchronize(engine.device)
    torch.cuda.reset_peak_memory_stats(engine.device)
    origin = _event()
    origin.record(torch.cuda.current_stream(engine.device))
    return origin


def _step_figures(steps: list[tuple[float, bool]]) -> dict[str, Any]:
    prefill = [seconds * 1000 for seconds, prefilled in steps if prefilled]
    decode = [seconds * 1000 for seconds, prefilled in steps if not prefilled]
    return {
        "seconds": round(sum(seconds for seconds, _ in steps), 3),
        "steps": len(steps),
        "prefill_steps": len(prefill),
        "prefill_step_ms": _mean(prefill),
        "decode_step_ms": _mean(decode),
    }


def _device_figures(
    engine: InternVLEngine, spans: dict[str, list[Span]], copies: Copies | None, origin: Any
) -> dict[str, Any]:
    """Compute-stream milliseconds per model call; the side stream's copies and overlap."""
    figures: dict[str, Any] = {
        "gpu_prefill_chunk_ms": _mean([s.elapsed_time(e) for s, e in spans.get("prefill", [])]),
        "gpu_decode_step_ms": _mean([s.elapsed_time(e) for s, e in spans.get("decode", [])]),
        "gpu_generate_ms": _mean([s.elapsed_time(e) for s, e in spans.get("generate", [])]),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(engine.device) / 2**20, 1),
    }
    if not isinstance(copies, TimedCopies) or not copies.spans:
        return figures
    compute = merged_spans(
        [(origin.elapsed_time(s), origin.elapsed_time(e)) for k in spans for s, e in spans[k]]
    )
    moved = [(origin.elapsed_time(s), origin.elapsed_time(e)) for s, e in copies.spans]
    copy_ms = sum(end - start for start, end in moved)
    inside = sum(overlap_ms(span, compute) for span in moved)
    figures.update(
        copies=len(moved),
        copy_mib=round(copies.bytes / 2**20, 1),
        copy_ms=round(copy_ms, 2),
        copy_gb_per_s=round(copies.bytes / 1e9 / (copy_ms / 1000), 2) if copy_ms else None,
        overlap_share=round(inside / copy_ms, 3) if copy_ms else None,
    )
    return figures


def merged_spans(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(start, end) spans with those that touch or overlap joined: when some work ran."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def overlap_ms(span: tuple[float, float], busy: list[tuple[float, float]]) -> float:
    """How much of `span` falls inside the disjoint spans `busy`."""
    start, end = span
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in busy)


def _mean(values: list[float]) -> float | None:
    return round(statistics.mean(values), 2) if values else None


def compare_staging(
    engine: InternVLEngine, *, jobs: int, new_tokens: int, stage_mb: int, repeats: int = 1
) -> dict[str, Any]:
    """Copied against staged on both workloads and both batchers, `repeats` times (order
    swapped every other)."""
    report: dict[str, Any] = {"runs": [], "identical": {}, "stage_mb": stage_mb}
    for workload, on_device in (("tiles", False), ("pictures", True)):
        engine.resize_on_device = on_device
        prepared = photo_jobs(engine, jobs, new_tokens)
        for scheduler in ("continuous", "static"):
            for staged in (False, True):  # warm-up: kernels, allocator, pinned buffers
                run_once(
                    engine, prepared[:4], staged=staged, stage_mb=stage_mb, scheduler=scheduler
                )
            texts: list[list[str]] = []
            for repeat in range(repeats):
                for staged in (False, True) if repeat % 2 == 0 else (True, False):
                    results, figures = run_once(
                        engine, prepared, staged=staged, stage_mb=stage_mb, scheduler=scheduler
                    )
                    mode = "staged" if staged else "copied"
                    run = {"workload": workload, "scheduler": scheduler, "mode": mode}
                    report["runs"].append({**run, **figures})
                    texts.append([result.text for result in results])
            key = workload if scheduler == "continuous" else f"{workload}, static"
            report["identical"][key] = all(out == texts[0] for out in texts)
    return report


def run_staging_bench(
    *,
    checkpoint: str,
    device: str,
    dtype: str,
    attention: str,
    jobs: int,
    new_tokens: int,
    max_batch_size: int,
    stage_mb: int,
    repeats: int = 1,
) -> dict[str, Any]:
    """Load the model once and compare copied and staged pixels on it."""
    engine = load_bench_engine(
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        attention=attention,
        max_batch_size=max_batch_size,
    )
    report = compare_staging(
        engine, jobs=jobs, new_tokens=new_tokens, stage_mb=stage_mb, repeats=repeats
    )
    return {
        "checkpoint": checkpoint,
        "device_name": device_name(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "max_batch_size": max_batch_size,
        "jobs": jobs,
        "new_tokens": new_tokens,
        **report,
    }


def format_staging(report: dict[str, Any]) -> str:
    """The figures as a plain-text table."""
    columns = (
        ("workload", 9, "workload"),
        ("scheduler", 10, "batcher"),
        ("mode", 7, "mode"),
        ("seconds", 8, "seconds"),
        ("steps", 6, "steps"),
        ("prefill_step_ms", 8, "pf ms"),
        ("decode_step_ms", 8, "dec ms"),
        ("gpu_prefill_chunk_ms", 9, "gpu pf"),
        ("gpu_decode_step_ms", 8, "gpu dec"),
        ("generate_ms", 8, "gen ms"),
        ("gpu_generate_ms", 8, "gpu gen"),
        ("copy_mib", 8, "copy MiB"),
        ("copy_ms", 8, "copy ms"),
        ("copy_gb_per_s", 6, "GB/s"),
        ("overlap_share", 7, "overlap"),
        ("peak_gpu_mib", 8, "peak MiB"),
    )
    lines = [
        f"model {report['checkpoint']}, {report['device_name']}, {report['dtype']}, "
        f"{report['jobs']} jobs of {report['new_tokens']} tokens, max_batch_size "
        f"{report['max_batch_size']}, stage_pixels_mb {report['stage_mb']}",
        " ".join(f"{title:>{width}}" for _, width, title in columns),
    ]
    for run in report["runs"]:
        cells = [_cell(run.get(key), width) for key, width, _ in columns]
        lines.append(" ".join(cells))
        if run["staging"] is not None:
            lines.append(f"  staging: {run['staging']}")
    for workload, same in report["identical"].items():
        verdict = "identical" if same else "DIFFERENT"
        lines.append(f"greedy outputs of copied and staged, {workload}: {verdict}")
    return "\n".join(lines)


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None else str(value)
    return f"{text:>{width}}"
