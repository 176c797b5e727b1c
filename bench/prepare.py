"""`internvl-jobs bench prepare`: one job's preparation, the processor's way against ours.

Both run in one process, single-threaded (torch and every library capped to one thread), on
the same JPEG bytes and the InternVL3-1B processor settings (448-px tiles, max 12, ImageNet
statistics, the real chat template), built in memory without a download. "processor" is what
the engine did before: decode in full (core.images.load_rgb), then the transformers processor
(chat template, tiling, normalising to float32, tokenising), then a cast to bf16. "ours" is
InternVLEngine.prepare today: decode at the scale the grid needs, uint8 tiles, ids spliced.
Normalising moved to the device, so it is not on this bill. CPU time (process_time) per image,
the median of --repeats after a warm-up, interleaved so machine noise hits both alike.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.images import load_rgb
from core.prompts import build_conversation
from core.tiling import tile_count
from devtools.tiny_model import PRESETS, build_processor, train_tokenizer
from worker.preparer import Preparer

SIZES = ((640, 480), (1920, 1080), (4000, 3000))


def photo_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth colour fields with grain, quality 90): noise alone codes badly."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    grain = rng.integers(-6, 7, (height, width, 3))
    pixels = (np.asarray(smooth).astype(np.int16) + grain).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _cpu_ms(run: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        times.append((time.process_time() - started) * 1000)
    return times


def run_prepare_bench(*, repeats: int = 7, max_tiles: int = 12) -> dict[str, Any]:
    """Prepare CPU ms per image for each size, processor vs ours, one thread, one run."""
    torch.set_num_threads(1)
    processor = build_processor(PRESETS["internvl3-1b"], train_tokenizer(2048))
    preparer = Preparer(processor, model_alias="bench", cache_bytes=0)
    spec = {"task": "caption", "images": ["image"]}
    conversation = build_conversation(spec, control_tokens=[])

    def old(data: bytes) -> None:
        text = processor.apply_chat_template(
            conversation.messages, add_generation_prompt=True, tokenize=False
        )
        inputs = processor(
            text=[text], images=[load_rgb(data)], return_tensors="pt", max_patches=max_tiles
        )
        inputs["pixel_values"].to(torch.bfloat16)

    def new(data: bytes) -> None:
        preparer.inputs(conversation, [data], max_tiles=max_tiles)

    rows = []
    for width, height in SIZES:
        data = photo_jpeg(width, height)
        old(data)  # warm-up
        new(data)
        old_ms: list[float] = []
        new_ms: list[float] = []
        for _ in range(repeats):
            old_ms += _cpu_ms(lambda: old(data), 1)  # noqa: B023 - called at once
            new_ms += _cpu_ms(lambda: new(data), 1)  # noqa: B023
        tiles = tile_count(width, height, tile_size=448, max_tiles=max_tiles)
        rows.append(
            {
                "size": f"{width}x{height}",
                "jpeg_kib": round(len(data) / 1024),
                "tiles": tiles,
                "processor_ms": round(statistics.median(old_ms), 1),
                "ours_ms": round(statistics.median(new_ms), 1),
                "speedup": round(statistics.median(old_ms) / statistics.median(new_ms), 2),
            }
        )
    return {"threads": 1, "max_tiles": max_tiles, "tile_size": 448, "rows": rows}


def format_prepare_report(report: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    lines = [
        "| image | JPEG KiB | tiles | processor ms | ours ms | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['size']} | {row['jpeg_kib']} | {row['tiles']} | {row['processor_ms']} "
            f"| {row['ours_ms']} | {row['speedup']}x |"
        )
    return "\n".join(lines)
