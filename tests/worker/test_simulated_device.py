"""The simulated accelerator: its cost model's figures, and a generate that takes that long."""

from __future__ import annotations

import time
from pathlib import Path

from core.config import ModelSpec
from core.prompts import build_conversation
from core.specs import GenerationParams
from tests.support.pictures import picture
from worker.preprocess import Picture
from worker.simulated_device import DEVICES, INTERNVL3_1B, SimulatedEngine, decode_step_s, prefill_s


def test_h100_cost_model_matches_the_published_estimates() -> None:
    h100 = DEVICES["h100"]
    # A 13-tile photo (13 x 256 image tokens and a short prompt): about 13 TFLOP, 15-25 ms.
    one_photo = prefill_s(h100, INTERNVL3_1B, tiles=13, prompt_tokens=13 * 256 + 30)
    assert 0.015 <= one_photo <= 0.025
    assert prefill_s(h100, INTERNVL3_1B, tiles=1, prompt_tokens=286) < one_photo / 10
    # A decode step reads about 1 GB of weights: launch-bound until the KV cache is large.
    assert decode_step_s(h100, INTERNVL3_1B, context_tokens=1000) == h100.min_step_s
    assert decode_step_s(h100, INTERNVL3_1B, context_tokens=500_000) > h100.min_step_s


def test_simulated_engine_prepares_for_real_and_sleeps_for_the_device(
    tiny_model_path: Path,
) -> None:
    spec = ModelSpec(alias="sim", checkpoint=str(tiny_model_path), tile_size=64)
    engine = SimulatedEngine(spec, device="h100")
    conversation = build_conversation(
        {"task": "caption", "images": ["a"]}, control_tokens=engine.control_tokens
    )
    job = engine.prepare(
        "j", conversation, [picture((640, 480))], GenerationParams(max_new_tokens=20)
    )
    # Auto resizing: the simulated device is a GPU, so the picture travels, not its tiles.
    [image] = job.pixels
    assert job.image_tiles == [13] and isinstance(image, Picture) and image.tiles == 13
    expected = prefill_s(engine.simulated, engine.shape, 13, job.prompt_tokens) + 20 * 0.0012
    started = time.monotonic()
    [result] = engine.generate([job])
    elapsed = time.monotonic() - started
    assert (result.completion_tokens, result.finish_reason) == (20, "length")
    assert elapsed >= expected * 0.99
    job.cancel.set()
    assert engine.generate([job])[0].finish_reason == "canceled"
