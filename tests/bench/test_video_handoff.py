"""The video handoff benchmark times a video job's frames received through slots and as tensors."""

from __future__ import annotations

import gc
from pathlib import Path

from bench.video_handoff import clip, model_side_ms
from core.config import ModelSpec
from worker.prepare_pool import PreparePool


def test_both_ways_of_receiving_frames_are_timed_and_the_slots_come_back(
    tiny_model_path: Path,
) -> None:
    spec = ModelSpec(alias="tiny", checkpoint=str(tiny_model_path), tile_size=64)
    data = clip(3)
    with_slots = PreparePool(spec, processes=1, slots=4, slot_bytes=2 << 20)
    without = PreparePool(spec, processes=1)
    try:
        assert model_side_ms(with_slots, data, 3, 2) > 0
        assert model_side_ms(without, data, 3, 2) > 0
        gc.collect()
        assert with_slots.arena is not None and with_slots.arena.free == 4
    finally:
        with_slots.close()
        without.close()
