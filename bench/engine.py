"""`internvl-jobs bench engine`: the guide's naive loop versus the service's batched engine.

Both run on the same loaded model, the same images and prompt, greedy, with a fixed output
length (min_new_tokens = max_new_tokens), in one process and one run, so their ratio is fair.
The naive loop is the guide's: processor + generate, one image at a time. The batched engine is
the worker's: `prepare` in parallel threads (as Celery task threads do), then the batcher runs
the jobs through `generate` in batches of up to max_batch_size.

Only torch, transformers and this package's engine are needed (no Celery, no web stack), so
the same command runs on a bare GPU machine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.config import ModelSpec
from core.prompts import build_conversation
from core.specs import GenerationParams
from core.tasks import DEFAULT_INSTRUCTIONS, Task
from worker.batcher import Batcher
from worker.engine import Generation, InternVLEngine, complete_text

log = logging.getLogger("bench.engine")
PROMPT = DEFAULT_INSTRUCTIONS[Task.CAPTION]
# 13 tiles: the guide's 640x480 photo, whose 4:3 grid (plus the thumbnail) is the only exact
# match among grids of up to 12 tiles at any tile size. 1 tile: a square image of one tile.
PHOTO_SIZE = (640, 480)


@dataclass
class BenchRow:
    """One measured mode of one workload."""

    mode: str
    images: int
    tiles_per_image: int
    new_tokens: int
    seconds: float
    images_per_s: float
    tokens_per_s: float
    peak_gpu_mib: float | None
    ratio_to_naive: float | None = None


def bench_images(count: int, tiles: int, tile_size: int, seed: int = 0) -> list[Image.Image]:
    """Distinct noise images of the size that gives `tiles` (1 or 13) tiles each."""
    if tiles not in (1, 13):
        raise ValueError("tiles per image must be 1 or 13")
    width, height = (tile_size, tile_size) if tiles == 1 else PHOTO_SIZE
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for _ in range(count)
    ]


def naive_loop(engine: InternVLEngine, images: list[Image.Image], new_tokens: int) -> list[str]:
    """The guide's batch inference: processor + generate, one image after the other."""
    processor, model = engine.processor, engine.model
    answers = []
    content = [{"type": "image"}, {"type": "text", "text": PROMPT}]
    for image in images:
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=text, images=image, return_tensors="pt").to(
            model.device, dtype=engine.dtype
        )
        output = model.generate(
            **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
        prompt_length = inputs["input_ids"].shape[1]
        answers.extend(processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True))
    # Compared as the service shows text: bytes that form no character dropped.
    return [complete_text(answer).strip() for answer in answers]


def batched_engine(
    engine: InternVLEngine, images: list[Image.Image], new_tokens: int, max_batch_size: int
) -> list[str]:
    """The worker's path: prepare in parallel threads, generate in batches on one thread."""
    params = GenerationParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    spec = {"task": "caption", "images": ["image"]}
    conversation = build_conversation(spec, control_tokens=engine.control_tokens)
    batcher = Batcher(
        engine.generate,
        max_batch_size=max_batch_size,
        max_wait_ms=engine.spec.max_batch_wait_ms,
        max_batch_tiles=engine.spec.max_batch_tiles,
        gap_ms=engine.spec.batch_gap_ms,
    )
    batcher.start()

    def run(index: int) -> Generation:
        announcement = batcher.announce()
        prepared = engine.prepare(f"bench-{index}", conversation, [images[index]], params)
        return batcher.submit(prepared, announcement=announcement).result()

    try:
        with ThreadPoolExecutor(max_workers=min(len(images), 2 * max_batch_size)) as pool:
            return [g.text for g in pool.map(run, range(len(images)))]
    finally:
        batcher.stop()


def _timed(run: Callable[[], list[str]], device: torch.device) -> tuple[float, list[str]]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    answers = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, answers


def measure(
    engine: InternVLEngine,
    *,
    images: int,
    tiles: int,
    new_tokens: int,
    max_batch_size: int,
    repeats: int = 1,
) -> tuple[list[BenchRow], bool]:
    """Time both modes on one workload (after a warm-up); also say if their outputs agree."""
    pictures = bench_images(images, tiles, engine.tile_size)
    modes: dict[str, Callable[[], list[str]]] = {
        "naive": lambda: naive_loop(engine, pictures, new_tokens),
        "batched": lambda: batched_engine(engine, pictures, new_tokens, max_batch_size),
    }
    naive_loop(engine, pictures[:2], 2)  # warm-up: kernels, allocator, thread pools
    batched_engine(engine, pictures[:2], 2, max_batch_size)
    rows: list[BenchRow] = []
    answers: dict[str, list[str]] = {}
    for mode, run in modes.items():
        best = float("inf")
        peak = None
        for _ in range(repeats):
            seconds, answers[mode] = _timed(run, engine.device)
            best = min(best, seconds)
            if engine.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(engine.device) / 2**20
        rows.append(
            BenchRow(
                mode=mode,
                images=images,
                tiles_per_image=tiles,
                new_tokens=new_tokens,
                seconds=round(best, 3),
                images_per_s=round(images / best, 2),
                tokens_per_s=round(images * new_tokens / best, 1),
                peak_gpu_mib=round(peak, 1) if peak is not None else None,
            )
        )
    rows[1].ratio_to_naive = round(rows[0].seconds / rows[1].seconds, 2)
    return rows, answers["naive"] == answers["batched"]


def bench_checkpoint(preset: str, cache_dir: Path) -> Path:
    """The tiny checkpoint of a preset, built once into cache_dir (no download)."""
    from devtools.tiny_model import build_tiny_model

    target = cache_dir / f"tiny-{preset}"
    if not (target / "config.json").is_file():
        log.info("building the %s checkpoint in %s", preset, target)
        build_tiny_model(target, preset=preset)
    return target


def run_engine_bench(
    *,
    checkpoint: str,
    device: str,
    dtype: str,
    attention: str,
    images: int,
    tiles: list[int],
    new_tokens: int,
    max_batch_size: int,
    repeats: int,
) -> dict[str, Any]:
    """Load the model once, measure every tile workload, and return the figures."""
    engine = load_bench_engine(
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        attention=attention,
        max_batch_size=max_batch_size,
        max_batch_tiles=max(256, max_batch_size * max(tiles)),
    )
    report: dict[str, Any] = {
        "checkpoint": checkpoint,
        "device": str(engine.device),
        "device_name": device_name(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "attention": engine.attn_implementation,
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in engine.model.parameters()),
        "workloads": [],
    }
    for count in tiles:
        rows, identical = measure(
            engine,
            images=images,
            tiles=count,
            new_tokens=new_tokens,
            max_batch_size=max_batch_size,
            repeats=repeats,
        )
        report["workloads"].append(
            {"rows": [asdict(row) for row in rows], "outputs_identical": identical}
        )
    return report


def load_bench_engine(
    *,
    checkpoint: str,
    device: str,
    dtype: str,
    attention: str,
    max_batch_size: int,
    **spec_fields: Any,
) -> InternVLEngine:
    """The engine a benchmark measures: the checkpoint loaded on the device as model `bench`
    (further registry fields, such as max_batch_tiles, as given)."""
    spec = ModelSpec(
        alias="bench",
        checkpoint=checkpoint,
        dtype=dtype,
        attn_implementation=attention,
        max_batch_size=max_batch_size,
        **spec_fields,
    )
    return InternVLEngine(spec, device=device)


def device_name(device: torch.device) -> str:
    """The device as a report names it: the GPU's model, or the CPU and its threads."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def format_report(report: dict[str, Any]) -> str:
    """The figures as a plain-text table."""
    lines = [
        f"model {report['checkpoint']} ({report['parameters'] / 1e6:.1f}M parameters), "
        f"{report['device_name']}, {report['dtype']}, attention {report['attention']}",
        f"{'mode':8} {'images':>6} {'tiles':>5} {'tokens':>6} {'seconds':>8} "
        f"{'img/s':>7} {'tok/s':>8} {'peak MiB':>9} {'vs naive':>8}",
    ]
    for workload in report["workloads"]:
        for row in workload["rows"]:
            peak = "-" if row["peak_gpu_mib"] is None else f"{row['peak_gpu_mib']:.0f}"
            ratio = "" if row["ratio_to_naive"] is None else f"{row['ratio_to_naive']:.2f}x"
            lines.append(
                f"{row['mode']:8} {row['images']:>6} {row['tiles_per_image']:>5} "
                f"{row['new_tokens']:>6} {row['seconds']:>8.3f} {row['images_per_s']:>7.2f} "
                f"{row['tokens_per_s']:>8.1f} {peak:>9} {ratio:>8}"
            )
        same = "identical" if workload["outputs_identical"] else "DIFFERENT"
        lines.append(f"  greedy outputs of the two modes: {same}")
    return "\n".join(lines)
