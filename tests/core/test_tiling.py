"""The tile grid equals OpenGVLab's reference dynamic_preprocess for every image size."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

from core.tiling import tile_count, tile_grid


def reference_grid(width: int, height: int, min_num: int, max_num: int, image_size: int):
    """OpenGVLab's algorithm restated: candidate ratios from a set, stably sorted by area."""
    aspect_ratio = width / height
    target_ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    ordered = sorted(target_ratios, key=lambda r: r[0] * r[1])
    best_diff, best = float("inf"), (1, 1)
    area = width * height
    for ratio in ordered:
        diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


SIZES = sorted(
    set(range(1, 64)) | set(range(64, 1200, 7)) | {1280, 1920, 2048, 3000, 4096, 8000, 12000, 20000}
)
EXTREMES = [(1, 20000), (20000, 1), (3, 4000), (4000, 3), (448, 448), (896, 448), (640, 480)]


@pytest.mark.parametrize("max_tiles", [1, 2, 4, 6, 9, 12, 24, 40])
def test_grid_matches_reference_over_a_sweep_of_sizes(max_tiles: int) -> None:
    mismatches = [
        (w, h)
        for w, h in itertools.chain(itertools.product(SIZES[::3], SIZES[1::3]), EXTREMES)
        if tile_grid(w, h, tile_size=448, max_tiles=max_tiles)
        != reference_grid(w, h, 1, max_tiles, 448)
    ]
    assert mismatches == []


@pytest.mark.parametrize("tile_size", [64, 224, 448])
def test_grid_matches_the_transformers_processor(tile_size: int) -> None:
    for w, h in itertools.product(SIZES[::5], SIZES[2::5]):
        ours = tile_grid(w, h, tile_size=tile_size, max_tiles=12)
        theirs = get_optimal_tiled_canvas((h, w), (tile_size, tile_size), 1, 12)
        assert ours == theirs, (w, h)


def test_a_640x480_photo_costs_13_tiles() -> None:
    assert tile_grid(640, 480, tile_size=448, max_tiles=12) == (4, 3)
    assert tile_count(640, 480, tile_size=448, max_tiles=12) == 13


def test_a_single_tile_has_no_thumbnail() -> None:
    assert tile_count(448, 448, tile_size=448, max_tiles=12) == 1
    assert tile_count(4000, 3000, tile_size=448, max_tiles=1) == 1


def test_extreme_aspect_ratio_uses_a_strip() -> None:
    assert tile_grid(20000, 100, tile_size=448, max_tiles=12) == (12, 1)
    assert tile_grid(100, 20000, tile_size=448, max_tiles=12) == (1, 12)


@settings(max_examples=3000, deadline=None)
@given(
    width=st.integers(1, 30_000),
    height=st.integers(1, 30_000),
    max_tiles=st.integers(1, 40),
    tile_size=st.sampled_from([64, 224, 448]),
)
def test_grid_matches_reference_for_random_sizes(
    width: int, height: int, max_tiles: int, tile_size: int
) -> None:
    expected = reference_grid(width, height, 1, max_tiles, tile_size)
    assert tile_grid(width, height, tile_size=tile_size, max_tiles=max_tiles) == expected


@settings(max_examples=500, deadline=None)
@given(
    long_side=st.integers(2, 50_000),
    ratio=st.integers(2, 5_000),
    portrait=st.booleans(),
    max_tiles=st.integers(1, 40),
)
def test_grid_matches_reference_for_extreme_aspect_ratios(
    long_side: int, ratio: int, portrait: bool, max_tiles: int
) -> None:
    short_side = max(1, long_side // ratio)
    width, height = (short_side, long_side) if portrait else (long_side, short_side)
    expected = reference_grid(width, height, 1, max_tiles, 448)
    assert tile_grid(width, height, tile_size=448, max_tiles=max_tiles) == expected
