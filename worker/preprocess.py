"""Stored image bytes to the uint8 tiles the vision tower reads, decoding only what the grid needs.

The tile grid is core.tiling's (OpenGVLab's reference), computed from the image's full displayed
size before anything is decoded. A JPEG is then decoded at reduced scale (libjpeg's DCT scaling,
Pillow's `draft`: 1/2, 1/4, 1/8) when the grid needs fewer pixels than it holds; another format
is decoded in full and box-reduced once, early, while it stays at least twice the size the grid
needs. Both only by powers of two that divide the image's size exactly. The resize itself is
torch's uint8 bicubic with antialiasing, the one the transformers processor runs, so an image
decoded at full scale gives the processor's tiles exactly. Pixels stay uint8 (a quarter of
float32's bytes); normalising and casting happen on the device (InternVLEngine._pixels).

Two forms leave here: `tile_image`'s uint8 tiles (the host resizes and cuts: CPU workers,
whose model process is the device anyway), or `decode_picture`'s Picture, the decoded pixels
and their grid, which the model's device resizes and cuts (worker.device_tiles): the host then
only decodes, and a 640x480 photo travels as 0.9 MB instead of 13 tiles' 7.8 MB.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from core.images import ACCEPTED_FORMATS, EXIF_ORIENTATION, ROTATED_ORIENTATIONS, to_rgb
from core.tiling import tile_grid

JPEG_FORMATS = ("JPEG", "MPO")
DRAFT_MODES = ("RGB", "L", "CMYK")  # modes libjpeg can scale while decoding
# Another format is box-reduced early only while it stays this many times the size needed,
# so the bicubic resize that follows still sees enough pixels to antialias.
EARLY_REDUCE_MARGIN = 2


@dataclass(frozen=True)
class Picture:
    """One image decoded for the device to tile: uint8 pixels at most their decoded size, and
    the reference's grid for the image's full size (the device resizes to columns x rows tiles)."""

    pixels: torch.Tensor  # (3, H, W) uint8, possibly a channels-last view
    columns: int
    rows: int

    @property
    def tiles(self) -> int:
        """Tiles the device cuts: the grid, plus a thumbnail when there are several."""
        grid = self.columns * self.rows
        return grid + (grid > 1)

    @property
    def nbytes(self) -> int:
        """Bytes of its pixels."""
        return self.pixels.numel() * self.pixels.element_size()


def tile_image(
    source: bytes | Image.Image, *, tile_size: int, max_tiles: int, min_tiles: int = 1
) -> torch.Tensor:
    """One image's tiles, (tiles, 3, tile_size, tile_size) uint8: the grid, then the thumbnail."""
    picture = decode_picture(source, tile_size=tile_size, max_tiles=max_tiles, min_tiles=min_tiles)
    return tile_pixels(
        picture.pixels, columns=picture.columns, rows=picture.rows, tile_size=tile_size
    )


def decode_picture(
    source: bytes | Image.Image, *, tile_size: int, max_tiles: int, min_tiles: int = 1
) -> Picture:
    """One image decoded at the scale its grid needs, with that grid: what the device tiles."""
    image = _open(source) if isinstance(source, bytes) else source
    width, height = _displayed_size(image)
    columns, rows = tile_grid(
        width, height, tile_size=tile_size, max_tiles=max_tiles, min_tiles=min_tiles
    )
    need = (max(columns * tile_size, tile_size), max(rows * tile_size, tile_size))
    return Picture(_as_tensor(_decode(image, need)), columns, rows)


def tile_pixels(pixels: torch.Tensor, *, columns: int, rows: int, tile_size: int) -> torch.Tensor:
    """Cut (3, H, W) uint8 pixels into the grid's tiles, plus a thumbnail when there are several.

    One copy from the resized canvas into the (tiles, 3, T, T) result, whose rows of T pixels
    stay contiguous; no concatenation afterwards.
    """
    grid = rows * columns
    out = torch.empty((grid + (grid > 1), 3, tile_size, tile_size), dtype=torch.uint8)
    canvas = _resize(pixels, (rows * tile_size, columns * tile_size))
    # (3, rows*T, cols*T) -> (rows, cols, 3, T, T): row-major tile order, as the reference crops.
    by_tile = canvas.view(3, rows, tile_size, columns, tile_size).permute(1, 3, 0, 2, 4)
    out[:grid].view(rows, columns, 3, tile_size, tile_size).copy_(by_tile)
    if grid > 1:
        out[grid].copy_(_resize(pixels, (tile_size, tile_size)))
    return out


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    image.seek(0)  # the first frame of an animation
    return image


def _orientation(image: Image.Image) -> int:
    value = image.getexif().get(EXIF_ORIENTATION)
    return int(value) if isinstance(value, int) else 1


def _displayed_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    if _orientation(image) in ROTATED_ORIENTATIONS:
        return height, width
    return width, height


def _decode(image: Image.Image, need: tuple[int, int]) -> Image.Image:
    """Upright RGB pixels, at least `need` (displayed orientation) unless the image is smaller."""
    orientation = _orientation(image)
    stored_need = need[::-1] if orientation in ROTATED_ORIENTATIONS else need
    if image.format in JPEG_FORMATS and image.mode in DRAFT_MODES:
        scale = _early_factor(image.size, stored_need, margin=1, most=8)
        if scale > 1:  # libjpeg's DCT scaling: 1/2, 1/4 or 1/8, a proper low-pass
            image.draft(image.mode, (image.width // scale, image.height // scale))
    factor = _early_factor(image.size, stored_need, margin=EARLY_REDUCE_MARGIN)
    if factor > 1:
        image = image.reduce(factor)
    if orientation != 1:
        image = ImageOps.exif_transpose(image) or image
    return image if image.mode == "RGB" else to_rgb(image)


def _early_factor(
    size: tuple[int, int], need: tuple[int, int], *, margin: int, most: int = 64
) -> int:
    """The largest power-of-two reduction that divides the size and keeps margin x `need`.

    Only exact divisors: a partial block at the edge shifts the picture's geometry by up to a
    reduced pixel, which the resize after it magnifies (measured: 0.18 after normalising).
    """
    factor = 1
    while 2 * factor <= most and all(
        side % (2 * factor) == 0 and side // (2 * factor) >= margin * wanted
        for side, wanted in zip(size, need, strict=True)
    ):
        factor *= 2
    return factor


def _as_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8, a channels-last view of the decoded (H, W, 3) pixels: no copy."""
    array = np.asarray(image)  # Pillow hands numpy a fresh read-only buffer; nothing writes it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": it is only read
        return torch.from_numpy(array).permute(2, 0, 1)


def _resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, *size) uint8, resized as transformers' torchvision backend does."""
    if tuple(pixels.shape[1:]) == size:
        return pixels
    # Channels-last input (the decoder's own layout: no copy) keeps torch on its vectorised
    # uint8 path, twice as fast here as planar input; the output comes back planar. torch
    # rounds and clamps uint8 results itself, as torchvision then does again.
    batch = pixels.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    resized = torch.nn.functional.interpolate(
        batch, size=size, mode="bicubic", antialias=True, align_corners=False
    )
    return resized[0]
