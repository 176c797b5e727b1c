"""`internvl-jobs bench prepare`: one job's preparation, the processor's way against ours.

All run in one process, single-threaded (torch and every library capped to one thread), on
the same JPEG bytes and the InternVL3-1B processor settings (448-px tiles, max 12, ImageNet
statistics, the real chat template), built in memory without a download. "processor" is what
the engine did first: decode in full (core.images.load_rgb), then the transformers processor
(chat template, tiling, normalising to float32, tokenising), then a cast to bf16. "host
resize" is InternVLEngine.prepare with `image_resize: host` (a CPU worker): decode at the scale
the grid needs, uint8 tiles, ids spliced. "device resize: host" is the host's part with
`image_resize: device` (a GPU worker): decode at that scale and the ids only; "device part"
is what the device then does (resize, cut, thumbnail: worker.device_tiles), run here on the
CPU for reference (on a GPU it is device time, not host CPU). Normalising runs on the device
in every path, so it is on no host bill. CPU time (process_time) per image, the median of
--repeats after a warm-up, interleaved so machine noise hits each alike. Closeness: max and
mean absolute difference from the processor's pixels after normalisation, for both paths.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.photos import photo_jpeg
from core.images import load_rgb
from core.prompts import build_conversation
from core.tiling import tile_count
from devtools.tiny_model import PRESETS, build_processor, train_tokenizer
from worker.device_tiles import ImagePixels, device_tiles, image_nbytes
from worker.preparer import Preparer

SIZES = ((640, 480), (1920, 1080), (4000, 3000))


def _cpu_ms(run: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        times.append((time.process_time() - started) * 1000)
    return times


def run_prepare_bench(*, repeats: int = 7, max_tiles: int = 12) -> dict[str, Any]:
    """Prepare CPU ms per image for each size: the processor, host resizing, device resizing
    (host part, and the device's part run on this CPU); closeness of both paths; one run."""
    torch.set_num_threads(1)
    processor = build_processor(PRESETS["internvl3-1b"], train_tokenizer(2048))
    preparer = Preparer(processor, model_alias="bench", cache_bytes=0)
    spec = {"task": "caption", "images": ["image"]}
    conversation = build_conversation(spec, control_tokens=[])
    cpu = torch.device("cpu")

    def old(data: bytes) -> torch.Tensor:
        text = processor.apply_chat_template(
            conversation.messages, add_generation_prompt=True, tokenize=False
        )
        inputs = processor(
            text=[text], images=[load_rgb(data)], return_tensors="pt", max_patches=max_tiles
        )
        inputs["pixel_values"].to(torch.bfloat16)
        return inputs["pixel_values"]

    def host(data: bytes) -> list[ImagePixels]:
        return preparer.image_inputs(conversation, [data], max_tiles=max_tiles)[1]

    def device(data: bytes) -> list[ImagePixels]:
        return preparer.image_inputs(conversation, [data], max_tiles=max_tiles, on_device=True)[1]

    def on_device(images: list[ImagePixels]) -> torch.Tensor:
        return device_tiles(images, device=cpu, tile_size=preparer.tile_size)

    rows = []
    for width, height in SIZES:
        data = photo_jpeg(width, height)
        expected = old(data)  # also the warm-up
        host_images, device_images = host(data), device(data)
        on_device(device_images)
        runs: dict[str, list[float]] = {name: [] for name in ("old", "host", "device", "gpu")}
        for _ in range(repeats):  # interleaved, so machine noise hits each alike
            runs["old"] += _cpu_ms(lambda: old(data), 1)  # noqa: B023 - called at once
            runs["host"] += _cpu_ms(lambda: host(data), 1)  # noqa: B023
            runs["device"] += _cpu_ms(lambda: device(data), 1)  # noqa: B023
            runs["gpu"] += _cpu_ms(lambda: on_device(device_images), 1)  # noqa: B023
        medians = {name: statistics.median(times) for name, times in runs.items()}
        rows.append(
            {
                "size": f"{width}x{height}",
                "jpeg_kib": round(len(data) / 1024),
                "tiles": tile_count(width, height, tile_size=448, max_tiles=max_tiles),
                "processor_ms": round(medians["old"], 1),
                "host_resize_ms": round(medians["host"], 1),
                "device_resize_host_ms": round(medians["device"], 1),
                "device_part_on_cpu_ms": round(medians["gpu"], 1),
                "speedup": round(medians["old"] / medians["device"], 1),
                "tiles_mib": round(image_nbytes(host_images[0]) / 2**20, 2),
                "picture_mib": round(image_nbytes(device_images[0]) / 2**20, 2),
                "host_closeness": _closeness(preparer, on_device(host_images), expected),
                "device_closeness": _closeness(preparer, on_device(device_images), expected),
            }
        )
    return {"threads": 1, "max_tiles": max_tiles, "tile_size": 448, "rows": rows}


def _closeness(preparer: Preparer, tiles: torch.Tensor, expected: torch.Tensor) -> list[float]:
    """[max, mean] absolute difference from the processor's pixels after normalisation."""
    ours = (tiles.to(torch.float32) - preparer.pixel_mean) / preparer.pixel_std
    difference = (ours - expected).abs()
    return [round(float(difference.max()), 4), round(float(difference.mean()), 4)]


def format_prepare_report(report: dict[str, Any]) -> str:
    """The figures as two Markdown tables: CPU time, then bytes and closeness."""
    lines = [
        "| image | JPEG KiB | tiles | processor ms | host resize ms | device resize: host ms "
        "| speed-up | device part, run on this CPU ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['size']} | {row['jpeg_kib']} | {row['tiles']} | {row['processor_ms']} "
            f"| {row['host_resize_ms']} | {row['device_resize_host_ms']} | {row['speedup']}x "
            f"| {row['device_part_on_cpu_ms']} |"
        )
    lines += [
        "",
        "| image | tiles MiB | picture MiB | host resize max / mean | device resize max / mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        host, device = row["host_closeness"], row["device_closeness"]
        lines.append(
            f"| {row['size']} | {row['tiles_mib']} | {row['picture_mib']} "
            f"| {host[0]} / {host[1]} | {device[0]} / {device[1]} |"
        )
    return "\n".join(lines)
