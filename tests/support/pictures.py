"""Photo-like test pictures for the preparation tests and benchmarks' tests."""

from __future__ import annotations

import numpy as np
from PIL import Image


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A photo-like picture: smooth colour fields with fine grain (noise alone has no scale)."""
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC))
    grain = rng.integers(-6, 7, (height, width, 3))
    return Image.fromarray((smooth.astype(np.int16) + grain).clip(0, 255).astype(np.uint8))
