"""Photo-like JPEGs for the benchmarks, and many of them made on all cores.

Only numpy and Pillow here, so the processes that make photos start quickly (spawned, not
forked: a fork of a process with threads can deadlock in the child).
"""

from __future__ import annotations

import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
from PIL import Image


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


def photos(width: int, height: int, seeds: range) -> list[bytes]:
    """photo_jpeg for each seed, in order, made on all cores (a 12-Mpx one takes 1-2 s)."""
    workers = min(len(seeds), os.cpu_count() or 1)
    if workers <= 1 or width * height < 1_000_000:  # small ones: quicker than starting processes
        return [photo_jpeg(width, height, seed) for seed in seeds]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(partial(photo_jpeg, width, height), seeds))
