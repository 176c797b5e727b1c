"""Synthetic pictures the trained tiny InternVL learns from, and the answers it should give.

Every picture is drawn here with PIL at one tile's size (64x64, so the service cuts it into
exactly one tile): one to four shapes of one colour, a printed word, pairs and triples of
shapes for the compare task, or the frames of a shape moving across a video. Each example is a
job spec as the API stores it (task, question) with the answer the model is taught, so training
uses the service's own prompts, and, for each picture, what it shows as class labels (the
targets of the probes that guide the vision tower while it learns).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

SIZE = 64
GRID = 8  # the vision tower's patch: shapes and words are placed on its grid
OUTLINE = (20, 20, 20)
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
MOTION_QUESTION = "Which way does the shape move?"  # a video job's question

# The kinds of example; every training batch holds each kind in turn.
KINDS = ("caption", "colour", "shape", "count", "ocr", "compare", "odd_one", "motion")

DIRECTIONS = ("right", "left", "down", "up")
FRAMES = 4  # frames of a motion example: a video job's sampled frames, one tile each
CELLS = 8  # a single shape's position is labelled by the eighth of the picture its centre is in

# What a picture can be labelled with, and how many classes each label has.
LABELS: dict[str, int] = {
    "colour": len(COLOURS),
    "shape": len(SHAPES),
    "count": len(COUNT_NAMES),
    "word": len(WORDS),
    "x": CELLS,
    "y": CELLS,
}
IGNORE = -100  # a label a picture does not have


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
    labels: list[dict[str, int]]  # per picture: label name -> class (names from LABELS)


def _background(rng: random.Random) -> tuple[int, int, int]:
    shade = rng.randint(225, 255)
    return (shade, shade, shade)


def _jitter(colour: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-20, 20))) for c in colour)
    return (r, g, b)


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, ...]
) -> None:
    # A dark outline shows the shape's outline in every colour channel, whatever its fill.
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=OUTLINE, width=2)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=OUTLINE, width=2)
    else:
        corners = [((left + right) // 2, top), (right, bottom), (left, bottom)]
        draw.polygon(corners, fill=fill, outline=OUTLINE, width=2)


def _boxes(count: int, rng: random.Random) -> list[tuple[int, int, int, int]]:
    """`count` non-overlapping square boxes on the patch grid (GRID px) inside the picture."""
    side = 16  # one size for all: a picture's coloured area counts its shapes
    while True:
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(200):
            left, top = (GRID * rng.randint(0, (SIZE - side) // GRID) for _ in range(2))
            box = (left, top, left + side - 1, top + side - 1)
            if all(_apart(box, other) for other in boxes):
                boxes.append(box)
                if len(boxes) == count:
                    return boxes


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 3) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _paint(
    shape: str, boxes: list[tuple[int, int, int, int]], background: tuple[int, ...], fill: Any
) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    for box in boxes:
        _draw_shape(draw, shape, box, fill)
    return image


def draw_scene(scene: Scene, rng: random.Random) -> Image.Image:
    """A 64x64 RGB picture of `scene`, placed and shaded at random."""
    return _placed(scene, rng)[0]


def _placed(scene: Scene, rng: random.Random) -> tuple[Image.Image, dict[str, int]]:
    """A picture of `scene` and its labels (with the shape's cell when there is one)."""
    background, fill = _background(rng), _jitter(COLOURS[scene.colour], rng)
    boxes = _boxes(scene.count, rng)
    return _paint(scene.shape, boxes, background, fill), _scene_labels(scene, boxes)


def _scene_labels(scene: Scene, boxes: list[tuple[int, int, int, int]]) -> dict[str, int]:
    labels = {
        "colour": list(COLOURS).index(scene.colour),
        "shape": SHAPES.index(scene.shape),
        "count": scene.count - 1,
    }
    if len(boxes) == 1:
        left, top, right, bottom = boxes[0]
        labels["x"] = (left + right) * CELLS // (2 * SIZE)
        labels["y"] = (top + bottom) * CELLS // (2 * SIZE)
    return labels


def draw_motion(
    scene: Scene, direction: str, rng: random.Random, frames: int = FRAMES
) -> tuple[list[Image.Image], list[dict[str, int]]]:
    """The frames of one shape crossing the picture in `direction`, and each frame's labels."""
    background, fill = _background(rng), _jitter(COLOURS[scene.colour], rng)
    side = 16
    steps = (SIZE - side) // GRID  # grid steps the shape's corner can travel
    stride = steps // (frames - 1)  # from one side of the picture to the other
    along = [GRID * i * stride for i in range(frames)]
    if direction in ("left", "up"):
        along.reverse()
    across = GRID * rng.randint(0, steps)
    images, labels = [], []
    for position in along:
        left, top = (position, across) if direction in ("right", "left") else (across, position)
        box = (left, top, left + side - 1, top + side - 1)
        images.append(_paint(scene.shape, [box], background, fill))
        labels.append(_scene_labels(scene, [box]))
    return images, labels


def draw_word(word: str, rng: random.Random) -> Image.Image:
    """A 64x64 RGB picture of `word` printed in dark capitals, placed on the patch grid."""
    image = Image.new("RGB", (SIZE, SIZE), _background(rng))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    left, top, right, bottom = (int(side) for side in draw.textbbox((0, 0), word, font=font))
    x = GRID * rng.randint(0, (SIZE - (right - left)) // GRID) - left
    y = GRID * rng.randint(0, (SIZE - (bottom - top)) // GRID) - top
    ink = rng.randint(0, 60)
    draw.text((x, y), word, fill=(ink, ink, ink), font=font)
    return image


def random_scene(rng: random.Random, *, count: int | None = None) -> Scene:
    """A scene with a random colour, shape and (unless given) count."""
    return Scene(rng.choice(list(COLOURS)), rng.choice(SHAPES), count or rng.randint(1, 4))


def _single(
    task: str,
    picture: tuple[Image.Image, dict[str, int]],
    answer: str,
    kind: str,
    question: str = "",
) -> Example:
    spec: dict[str, Any] = {"task": task, "images": [{}]}
    if question:
        spec["question"] = question
    return Example(kind, spec, [picture[0]], answer, [picture[1]])


def example(kind: str, rng: random.Random) -> Example:
    """One example of `kind`, drawn with `rng`."""
    if kind == "ocr":
        word = rng.choice(WORDS)
        return _single("ocr", (draw_word(word, rng), {"word": WORDS.index(word)}), word, kind)
    if kind == "compare":
        first, second = random_scene(rng, count=1), random_scene(rng, count=1)
        pictures = [_placed(first, rng), _placed(second, rng)]
        answer = f"{first.caption}, {second.caption}"
        spec = {"task": "compare", "images": [{}, {}]}
        return Example(kind, spec, [p[0] for p in pictures], answer, [p[1] for p in pictures])
    if kind == "odd_one":
        return _odd_one(rng)
    if kind == "motion":
        return _motion(rng)
    scene = random_scene(rng)
    image = _placed(scene, rng)
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
    pictures = [_placed(scene, rng) for scene in scenes]
    spec = {"task": "compare", "images": [{}, {}, {}]}
    images, labels = [p[0] for p in pictures], [p[1] for p in pictures]
    return Example("odd_one", spec, images, f"image {odd} differs", labels)


def _motion(rng: random.Random) -> Example:
    """A video job on the frames of one shape moving right, left, down or up."""
    direction = rng.choice(DIRECTIONS)
    images, labels = draw_motion(random_scene(rng, count=1), direction, rng)
    spec = {"task": "video", "question": MOTION_QUESTION, "video": {"num_frames": len(images)}}
    return Example("motion", spec, images, direction, labels)


# What the pictures so far show together, learned at each picture's end: after the second of an
# odd-one job's pictures whether it differs from the first, after the third which one differs,
# and from a video's second frame on which way the shape moves.
SEQUENCE_CLASSES = 2 + 3 + len(DIRECTIONS)


def sequence_targets(example: Example) -> list[int]:
    """One class per picture (SEQUENCE_CLASSES), IGNORE where nothing is learned at its end."""
    if example.kind == "odd_one":
        odd = int(example.answer.split()[1])
        return [IGNORE, int(odd != 3), 2 + odd - 1]
    if example.kind == "motion":
        return [IGNORE] + [5 + DIRECTIONS.index(example.answer)] * (len(example.images) - 1)
    return [IGNORE] * len(example.images)


def label_rows(per_picture: Sequence[dict[str, int]]) -> torch.Tensor:
    """(pictures, LABELS) class indices, IGNORE where a picture lacks a label."""
    return torch.tensor([[labels.get(name, IGNORE) for name in LABELS] for labels in per_picture])
