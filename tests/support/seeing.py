"""Pictures the trained tiny InternVL knows, drawn with seeds its training never used."""

from __future__ import annotations

import io
import random

from PIL import Image

from devtools.seeing_data import Scene, draw_motion, draw_scene, draw_word
from tests.support.videos import clip_of

# The kinds of example (devtools.seeing_data.KINDS) the shipped weights get right on at least
# 0.95 of held-out pictures; docs/tiny-model.md has every kind's figure.
RELIABLE = ("caption", "colour", "shape", "count", "ocr", "compare", "odd_one", "motion")

# Training draws from random.Random(0) and evaluation from 10000; tests from 20000 on.
TEST_SEED = 20_000


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_png(colour: str, shape: str, count: int = 1, *, seed: int = 0) -> bytes:
    """A 64x64 PNG of `count` shapes of one colour, placed by `seed`."""
    return _png(draw_scene(Scene(colour, shape, count), random.Random(TEST_SEED + seed)))


def word_png(word: str, *, seed: int = 0) -> bytes:
    """A 64x64 PNG of `word` printed in dark capitals."""
    return _png(draw_word(word, random.Random(TEST_SEED + seed)))


def motion_clip(colour: str, shape: str, direction: str, *, seed: int = 0) -> bytes:
    """An MP4 of one shape crossing the picture in `direction`: 4 pictures, each shown twice.

    A video job reading 4 frames of it (num_frames 4: frames 1, 3, 5 and 7) reads each picture
    once, in order.
    """
    frames, _ = draw_motion(Scene(colour, shape, 1), direction, random.Random(TEST_SEED + seed))
    return clip_of([frame for frame in frames for _ in range(2)])
