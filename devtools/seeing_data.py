"""Synthetic pictures the trained tiny InternVL learns from, and the answers it should give.

Every picture is drawn here with PIL at one tile's size (64x64, so the service cuts it into
exactly one tile): one to four shapes of one colour, a printed word, or pairs and triples of
shapes for the compare task. Each example is a job spec as the API stores it (task, question)
with the answer the model is taught, so training uses the service's own prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 70, 230),
    "yellow": (235, 200, 0),
}
SHAPES = ("circle", "square", "triangle")
WORDS = ("STOP", "OPEN", "EXIT", "SALE")
COUNT_NAMES = {1: "1", 2: "2", 3: "3", 4: "4"}

# The questions the model answers (a vqa job's question, or a chat job's text).
COLOUR_QUESTION = "What colour is the shape?"
SHAPE_QUESTION = "What shape is it?"
COUNT_QUESTION = "How many shapes are there?"

# The kinds of example, each with its share of a training batch's draws.
KINDS = ("caption", "colour", "shape", "count", "ocr", "compare", "odd_one")


@dataclass(frozen=True)
class Scene:
    """What a shapes picture shows."""

    colour: str
    shape: str
    count: int

    @property
    def caption(self) -> str:
        if self.count == 1:
            return f"a {self.colour} {self.shape}"
        return f"{self.count} {self.colour} {self.shape}s"


@dataclass(frozen=True)
class Example:
    """A job spec (without image data), its pictures in order, and the answer it teaches."""

    kind: str
    spec: dict[str, Any]
    images: list[Image.Image]
    answer: str


def _background(rng: random.Random) -> tuple[int, int, int]:
    shade = rng.randint(225, 255)
    return (shade, shade, shade)


def _jitter(colour: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-20, 20))) for c in colour)
    return (r, g, b)


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, ...]
) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=fill)


def _boxes(count: int, rng: random.Random) -> list[tuple[int, int, int, int]]:
    """`count` non-overlapping square boxes inside the picture."""
    while True:
        side = rng.randint(24, 40) if count == 1 else rng.randint(12, 18)
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(200):
            left, top = rng.randint(3, SIZE - side - 3), rng.randint(3, SIZE - side - 3)
            box = (left, top, left + side, top + side)
            if all(_apart(box, other) for other in boxes):
                boxes.append(box)
                if len(boxes) == count:
                    return boxes


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 3) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def draw_scene(scene: Scene, rng: random.Random) -> Image.Image:
    """A 64x64 RGB picture of `scene`, placed and shaded at random."""
    image = Image.new("RGB", (SIZE, SIZE), _background(rng))
    draw = ImageDraw.Draw(image)
    fill = _jitter(COLOURS[scene.colour], rng)
    for box in _boxes(scene.count, rng):
        _draw_shape(draw, scene.shape, box, fill)
    return image


def draw_word(word: str, rng: random.Random) -> Image.Image:
    """A 64x64 RGB picture of `word` printed in dark capitals."""
    image = Image.new("RGB", (SIZE, SIZE), _background(rng))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=rng.randint(15, 18))
    left, top, right, bottom = (int(side) for side in draw.textbbox((0, 0), word, font=font))
    x = rng.randint(1, max(1, SIZE - (right - left) - 1)) - left
    y = rng.randint(2, SIZE - (bottom - top) - 2) - top
    ink = rng.randint(0, 60)
    draw.text((x, y), word, fill=(ink, ink, ink), font=font)
    return image


def random_scene(rng: random.Random, *, count: int | None = None) -> Scene:
    """A scene with a random colour, shape and (unless given) count."""
    return Scene(rng.choice(list(COLOURS)), rng.choice(SHAPES), count or rng.randint(1, 4))


def _single(task: str, image: Image.Image, answer: str, kind: str, question: str = "") -> Example:
    spec: dict[str, Any] = {"task": task, "images": [{}]}
    if question:
        spec["question"] = question
    return Example(kind, spec, [image], answer)


def example(kind: str, rng: random.Random) -> Example:
    """One example of `kind`, drawn with `rng`."""
    if kind == "ocr":
        word = rng.choice(WORDS)
        return _single("ocr", draw_word(word, rng), word, kind)
    if kind == "compare":
        first, second = random_scene(rng, count=1), random_scene(rng, count=1)
        images = [draw_scene(first, rng), draw_scene(second, rng)]
        answer = f"{first.caption}, {second.caption}"
        return Example(kind, {"task": "compare", "images": [{}, {}]}, images, answer)
    if kind == "odd_one":
        return _odd_one(rng)
    scene = random_scene(rng)
    image = draw_scene(scene, rng)
    if kind == "caption":
        return _single("caption", image, scene.caption, kind)
    if kind == "colour":
        return _single("vqa", image, scene.colour, kind, COLOUR_QUESTION)
    if kind == "shape":
        return _single("vqa", image, scene.shape, kind, SHAPE_QUESTION)
    return _single("vqa", image, COUNT_NAMES[scene.count], kind, COUNT_QUESTION)


def _odd_one(rng: random.Random) -> Example:
    """A compare job on three pictures: the same scene twice and one that differs."""
    base = random_scene(rng, count=1)
    other = base
    while other == base:
        other = random_scene(rng, count=1)
    odd = rng.randint(1, 3)
    scenes = [other if position == odd else base for position in (1, 2, 3)]
    images = [draw_scene(scene, rng) for scene in scenes]
    spec = {"task": "compare", "images": [{}, {}, {}]}
    return Example("odd_one", spec, images, f"image {odd} differs")
