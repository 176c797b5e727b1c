"""Preparing at device speed: uint8 tiles equal to the processor's, draft decoding's closeness.

Tiles decoded at full scale must be the transformers processor's exactly (after `_pixels`
normalises them); a JPEG decoded at reduced scale (DCT scaling) stays within a stated bound of
them. The bound, measured on the real InternVL3-1B settings (448-px tiles, ImageNet mean/std):
at most 0.1 absolute and 0.02 mean absolute difference after normalisation (one uint8 step is
about 0.017); docs/engine.md states the figures measured.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import GotOcr2ImageProcessor

from core.images import load_rgb
from core.prompts import build_conversation
from core.specs import GenerationParams
from core.tiling import tile_grid
from tests.support.pictures import picture
from worker.engine import InternVLEngine
from worker.prepare_cache import PrepareCache
from worker.preprocess import tile_image

DRAFT_MAX_ABS = 0.1
DRAFT_MEAN_ABS = 0.02


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def processor_pixels(engine: InternVLEngine, images: list[Image.Image], max_tiles: int) -> Any:
    return engine.processor.image_processor(images, return_tensors="pt", max_patches=max_tiles)[
        "pixel_values"
    ]


@pytest.mark.parametrize("max_tiles", [6, 12])  # grids that need every pixel: no reduction
def test_prepared_job_is_the_processors_ids_and_pixels(
    engine: InternVLEngine, max_tiles: int
) -> None:
    sizes = [(640, 480), (1000, 90), (333, 777), (65, 63)]
    images = [picture(size, i) for i, size in enumerate(sizes)]
    spec = {"task": "compare", "images": ["a"] * len(sizes)}
    conversation = build_conversation(spec, control_tokens=engine.control_tokens)
    prepared = engine.prepare("p", conversation, images, GenerationParams(max_tiles=max_tiles))
    text = engine.processor.apply_chat_template(
        conversation.messages, add_generation_prompt=True, tokenize=False
    )
    expected = engine.processor(
        text=[text], images=images, return_tensors="pt", max_patches=max_tiles
    )
    assert torch.equal(prepared.input_ids, expected["input_ids"][0])
    assert all(isinstance(image, torch.Tensor) for image in prepared.pixels)  # CPU: host tiles
    tiles = engine.device_tiles(prepared.pixels)
    assert tiles.dtype == torch.uint8
    assert torch.equal(engine._pixels(tiles), expected["pixel_values"])


@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_stored_jpeg_bytes_tile_as_the_decoded_picture(
    engine: InternVLEngine, orientation: int
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(picture((300, 120)), "JPEG", quality=90, exif=exif)
    upright = load_rgb(data)  # what the processor was given before: EXIF applied
    tiles = engine.image_tiles(data, max_tiles=12)
    width, height = upright.size
    columns, rows = tile_grid(width, height, tile_size=64, max_tiles=12)
    assert tiles.shape == (columns * rows + 1, 3, 64, 64)  # no draft: 64-px tiles need all
    assert torch.equal(engine._pixels(tiles), processor_pixels(engine, [upright], 12))


def test_other_formats_are_reduced_early_within_the_bound(engine: InternVLEngine) -> None:
    image = picture((1000, 700), 3)
    rgba = image.convert("RGBA")
    data = encoded(rgba, "PNG")  # 10x the 64 px one tile needs: box-reduced by 4 first
    tiles = engine.image_tiles(data, max_tiles=1)
    difference = (engine._pixels(tiles) - processor_pixels(engine, [load_rgb(data)], 1)).abs()
    assert tiles.shape == (1, 3, 64, 64)
    assert float(difference.max()) <= DRAFT_MAX_ABS
    assert float(difference.mean()) <= DRAFT_MEAN_ABS


@pytest.mark.parametrize("size", [(1800, 1350), (1801, 1351)])
def test_draft_decoded_jpeg_is_close_to_the_processor_at_real_settings(
    size: tuple[int, int],
) -> None:
    # InternVL3-1B's image processor: 448-px tiles, ImageNet statistics.
    processor = GotOcr2ImageProcessor(
        size={"height": 448, "width": 448},
        crop_to_patches=True,
        max_patches=12,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    data = encoded(picture(size, 5), "JPEG", quality=90)
    full = Image.open(io.BytesIO(data))
    tiles = tile_image(data, tile_size=448, max_tiles=1)  # one tile: decoded at 1/2 scale
    expected = processor(load_rgb(data), return_tensors="pt", max_patches=1)["pixel_values"]
    mean = torch.tensor(processor.image_mean).view(3, 1, 1) * 255
    std = torch.tensor(processor.image_std).view(3, 1, 1) * 255
    difference = ((tiles.float() - mean) / std - expected).abs()
    assert full.size == size and tiles.shape == expected.shape == (1, 3, 448, 448)
    if size[0] % 2:  # no exact 1/2 scale: decoded in full, so exactly the processor's tiles
        assert float(difference.max()) == 0
    else:
        assert float(difference.max()) <= DRAFT_MAX_ABS
        assert float(difference.mean()) <= DRAFT_MEAN_ABS
        assert float(difference.max()) > 0  # it was decoded at reduced scale, not in full


def test_prepare_cache_is_bounded_in_bytes_and_least_recently_used_goes() -> None:
    cache = PrepareCache(max_bytes=3000)
    block = torch.zeros(1000, dtype=torch.uint8)
    for key in "abc":
        cache.put(key, block)
    assert cache.get("a") is block  # now the most recently used
    cache.put("d", block)
    assert cache.get("b") is None and cache.get("a") is block and cache.get("d") is block
    cache.put("huge", torch.zeros(5000, dtype=torch.uint8))  # larger than the bound: not kept
    assert cache.get("huge") is None and cache.bytes == 3000 and len(cache) == 3


def test_prepare_cache_holding_shared_memory_is_bounded_in_entries_too() -> None:
    cache = PrepareCache(max_bytes=10_000, max_entries=2)  # each entry: one open file
    block = torch.zeros(10, dtype=torch.uint8)
    for key in "abc":
        cache.put(key, block)
    assert len(cache) == 2 and cache.get("a") is None and cache.bytes == 20
