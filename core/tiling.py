"""InternVL's dynamic-resolution tile grid, computed without torch (cost estimates in the API).

The grid is the one of OpenGVLab's reference `dynamic_preprocess`: among all (columns, rows)
with min_tiles <= columns*rows <= max_tiles, ordered by tile count, take the aspect ratio
closest to the image's; on an exact tie prefer the larger grid while the image covers more
than half of it. A thumbnail tile is added whenever the grid has more than one tile.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every (columns, rows) grid with an allowed tile count, fewest tiles first."""
    grids = [
        (columns, rows)
        for columns in range(1, max_tiles + 1)
        for rows in range(1, max_tiles + 1)
        if min_tiles <= columns * rows <= max_tiles
    ]
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


def tile_grid(
    width: int, height: int, *, tile_size: int, max_tiles: int, min_tiles: int = 1
) -> tuple[int, int]:
    """The (columns, rows) grid an image of this size is cut into."""
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for columns, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - columns / rows)
        if diff < best_diff:
            best, best_diff = (columns, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * columns * rows:
            best = (columns, rows)
    return best


def tile_count(width: int, height: int, *, tile_size: int, max_tiles: int) -> int:
    """Tiles the model sees for one image: the grid, plus a thumbnail when the grid has several."""
    columns, rows = tile_grid(width, height, tile_size=tile_size, max_tiles=max_tiles)
    grid = columns * rows
    return grid + 1 if grid > 1 else grid
