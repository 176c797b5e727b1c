"""Resizing on the device: the host decodes, the device resizes, cuts and normalises.

The device path runs here on the CPU (forced: `image_resize: device`, or a Picture given to
`device_tiles`), with the arithmetic a GPU runs (float32 bicubic, rounded to uint8). Its grid is
the reference's for every size; its pixels are within one uint8 step of the transformers
processor's (which uses torch's fixed-point uint8 kernel on a CPU): after normalisation at
most 1/(255 x std) and 0.005 on average at full-scale decode, and within the draft bounds of
tests/worker/test_preprocess.py at reduced scale. docs/engine.md states the figures.
"""

from __future__ import annotations

import io
import random
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
from worker.device_tiles import device_tiles
from worker.engine import InternVLEngine
from worker.preprocess import Picture, decode_picture, tile_image

CPU = torch.device("cpu")
FULL_SCALE_MEAN_ABS = 0.005
DRAFT_MAX_ABS = 0.1
DRAFT_MEAN_ABS = 0.02


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def internvl3_processor() -> Any:
    return GotOcr2ImageProcessor(
        size={"height": 448, "width": 448},
        crop_to_patches=True,
        max_patches=12,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def normalised(tiles: torch.Tensor, processor: Any) -> torch.Tensor:
    mean = torch.tensor(processor.image_mean).view(3, 1, 1) * 255
    std = torch.tensor(processor.image_std).view(3, 1, 1) * 255
    return (tiles.float() - mean) / std


def test_the_grid_is_the_references_for_every_size() -> None:
    rng = random.Random(17)
    sizes = [(1, 1), (1, 500), (500, 1), (447, 449), (4000, 3000), (1920, 1080)]
    sizes += [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(40)]
    for width, height in sizes:
        for max_tiles in (1, 6, 12):
            data = jpeg(Image.new("RGB", (width, height), (90, 20, 200)))
            picture_ = decode_picture(data, tile_size=64, max_tiles=max_tiles)
            columns, rows = tile_grid(width, height, tile_size=64, max_tiles=max_tiles)
            assert (picture_.columns, picture_.rows) == (columns, rows), (width, height)
            tiles = device_tiles([picture_], device=CPU, tile_size=64)
            assert (
                tiles.shape[0]
                == picture_.tiles
                == tile_image(data, tile_size=64, max_tiles=max_tiles).shape[0]
            )


@pytest.mark.parametrize("size", [(640, 480), (333, 777), (1801, 1351)])
def test_full_scale_pictures_are_within_one_step_of_the_processor(size: tuple[int, int]) -> None:
    processor = internvl3_processor()
    data = jpeg(picture(size, 3))
    expected = processor(load_rgb(data), return_tensors="pt", max_patches=12)["pixel_values"]
    picture_ = decode_picture(data, tile_size=448, max_tiles=12)
    assert tuple(picture_.pixels.shape) == (3, size[1], size[0])  # decoded in full
    tiles = device_tiles([picture_], device=CPU, tile_size=448)
    difference = (normalised(tiles, processor) - expected).abs()
    one_step = 1 / (255 * min(processor.image_std))
    assert tiles.shape == expected.shape
    assert float(difference.max()) <= one_step + 1e-5
    assert float(difference.mean()) <= FULL_SCALE_MEAN_ABS


def test_draft_decoded_pictures_are_within_the_draft_bound() -> None:
    processor = internvl3_processor()
    data = jpeg(picture((4000, 3000), 4))
    expected = processor(load_rgb(data), return_tensors="pt", max_patches=12)["pixel_values"]
    picture_ = decode_picture(data, tile_size=448, max_tiles=12)
    assert tuple(picture_.pixels.shape) == (3, 1500, 2000)  # libjpeg's 1/2 scale
    tiles = device_tiles([picture_], device=CPU, tile_size=448)
    difference = (normalised(tiles, processor) - expected).abs()
    assert float(difference.max()) <= DRAFT_MAX_ABS
    assert float(difference.mean()) <= DRAFT_MEAN_ABS


def test_a_batch_mixes_tiles_and_pictures_and_keeps_their_order() -> None:
    same = [
        decode_picture(jpeg(picture((300, 200), seed)), tile_size=64, max_tiles=6)
        for seed in (1, 2)
    ]
    other = decode_picture(jpeg(picture((90, 300), 3)), tile_size=64, max_tiles=6)
    host = tile_image(jpeg(picture((120, 120), 4)), tile_size=64, max_tiles=6)
    images: list[torch.Tensor | Picture] = [same[0], host, other, same[1]]
    batch = device_tiles(images, device=CPU, tile_size=64)  # same[0] and same[1]: one resize
    alone = [device_tiles([image], device=CPU, tile_size=64) for image in images]
    assert torch.equal(batch, torch.cat(alone))
    assert torch.equal(alone[1], host)
    assert [len(a) for a in alone] == [same[0].tiles, len(host), other.tiles, same[1].tiles]


def test_an_engine_resizing_on_the_device_prepares_pictures_and_answers(
    engine: InternVLEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"task": "compare", "images": ["a", "b"]}
    conversation = build_conversation(spec, control_tokens=engine.control_tokens)
    images = [jpeg(picture((640, 480), 1)), jpeg(picture((64, 64), 2))]
    params = GenerationParams(max_new_tokens=4)
    host = engine.prepare("host", conversation, images, params)
    monkeypatch.setattr(engine, "resize_on_device", True)
    device = engine.prepare("device", conversation, images, params)
    assert all(isinstance(image, Picture) for image in device.pixels)
    assert device.image_tiles == host.image_tiles == [13, 1]
    assert torch.equal(device.input_ids, host.input_ids)
    difference = (
        engine._pixels(engine.device_tiles(device.pixels))
        - engine._pixels(engine.device_tiles(host.pixels))
    ).abs()
    one_step = float((1 / engine.preparer.pixel_std).max())
    assert float(difference.max()) <= one_step + 1e-5
    [generation] = engine.generate([device])
    assert generation.completion_tokens > 0
