"""The benchmarks' photos: made on several processes, they are the ones made one by one."""

from __future__ import annotations

import io

from PIL import Image

from bench.photos import photo_jpeg, photos


def test_photos_made_in_processes_are_those_made_in_order() -> None:
    made = photos(1200, 900, seeds=range(5, 8))  # over a megapixel: spawned processes
    assert made == [photo_jpeg(1200, 900, seed) for seed in range(5, 8)]
    assert len(set(made)) == 3
    assert Image.open(io.BytesIO(made[0])).size == (1200, 900)
    assert photos(64, 48, seeds=range(2)) == [photo_jpeg(64, 48, 0), photo_jpeg(64, 48, 1)]
