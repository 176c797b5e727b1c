"""Images the end-to-end tests send: the shipped examples and seeded random pictures."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
CAT = (EXAMPLES / "cat.jpg").read_bytes()
COFFEE = (EXAMPLES / "coffee.jpg").read_bytes()


def png(seed: int, size: tuple[int, int]) -> bytes:
    """A PNG of seeded random pixels: every seed gives the model a different picture."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


WIDE = png(1, (300, 90))


def b64(data: bytes) -> str:
    """Base64 text of data, as a job's inline image."""
    return base64.b64encode(data).decode()
