"""A batch's tiles made on the model's device: pictures resized, cut and thumbnailed there.

A prepared image is either its uint8 tiles (resized on the host, worker.preprocess.tile_image)
or a Picture: its decoded uint8 pixels and the reference's grid. `device_tiles` writes every
image of a batch into one uint8 tensor on the device, (tiles, 3, T, T) in order: tiles are
copied in, pictures are copied to the device one by one (there is no concatenation of a batch's
host pixels) and resized there, pictures of one size and grid in a single call (a video's
frames, the same photo asked twice). The engine then normalises it chunk by chunk.

The resize is the one torchvision (transformers' image backend) runs wherever torch has no
uint8 bicubic kernel, a GPU included: bicubic with antialiasing in float32, then clamped,
rounded and cast back to uint8. On a CPU the processor takes torch's uint8 kernel instead
(fixed-point arithmetic), so the two differ by at most a uint8 step here and there: the
closeness is measured in tests/worker/test_device_tiles.py and stated in docs/engine.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.config import ModelSpec
from worker.preprocess import Picture

ImagePixels = torch.Tensor | Picture  # one image: its uint8 tiles, or a picture to tile


def resizes_on_device(spec: ModelSpec, device: torch.device) -> bool:
    """Whether the device resizes and cuts pictures (`image_resize`; auto: on a GPU)."""
    if spec.image_resize == "auto":
        return device.type == "cuda"
    return spec.image_resize == "device"


def image_tile_count(image: ImagePixels) -> int:
    """Tiles one prepared image feeds to the vision tower."""
    return int(image.shape[0]) if isinstance(image, torch.Tensor) else image.tiles


def image_nbytes(image: ImagePixels) -> int:
    """Bytes one prepared image holds."""
    if isinstance(image, torch.Tensor):
        return image.numel() * image.element_size()
    return image.nbytes


def device_tiles(
    images: Sequence[ImagePixels], *, device: torch.device, tile_size: int
) -> torch.Tensor:
    """Every image's uint8 tiles on `device`, (tiles, 3, T, T), in the order given."""
    counts = [image_tile_count(image) for image in images]
    out = torch.empty((sum(counts), 3, tile_size, tile_size), dtype=torch.uint8, device=device)
    groups: dict[tuple[int, ...], list[tuple[int, Picture]]] = {}
    offset = 0
    for image, count in zip(images, counts, strict=True):
        if isinstance(image, torch.Tensor):
            out[offset : offset + count].copy_(image, non_blocking=True)
        else:
            key = (*image.pixels.shape, image.columns, image.rows)
            groups.setdefault(key, []).append((offset, image))
        offset += count
    for members in groups.values():
        _tile_group(members, out, tile_size)
    return out


def _tile_group(members: list[tuple[int, Picture]], out: torch.Tensor, tile_size: int) -> None:
    """Resize and cut pictures of one size and grid together, into their places in `out`."""
    first = members[0][1]
    columns, rows = first.columns, first.rows
    batch = torch.empty((len(members), *first.pixels.shape), dtype=torch.uint8, device=out.device)
    for index, (_, picture) in enumerate(members):
        batch[index].copy_(_moved(picture.pixels, out.device))
    grid = columns * rows
    canvas = resize(batch, (rows * tile_size, columns * tile_size))
    # (n, 3, rows*T, cols*T) -> (n, rows, cols, 3, T, T): row-major tiles, as the reference.
    by_tile = canvas.view(len(members), 3, rows, tile_size, columns, tile_size)
    by_tile = by_tile.permute(0, 2, 4, 1, 3, 5)
    thumbnails = resize(batch, (tile_size, tile_size)) if grid > 1 else None
    for index, (offset, _) in enumerate(members):
        out[offset : offset + grid].view(rows, columns, 3, tile_size, tile_size).copy_(
            by_tile[index]
        )
        if thumbnails is not None:
            out[offset + grid].copy_(thumbnails[index])


def _moved(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(3, H, W) pixels on `device`, moved in the layout they have: a decoder's channels-last
    view travels as its contiguous (H, W, 3) block and is made planar there, not on the host."""
    interleaved = pixels.permute(1, 2, 0)
    if interleaved.is_contiguous():
        return interleaved.to(device, non_blocking=True).permute(2, 0, 1)
    return pixels.to(device, non_blocking=True)


def resize(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, 3, H, W) uint8 -> (n, 3, *size) uint8: bicubic, antialiased, as torchvision off the
    CPU's uint8 kernel (float32, then clamped, rounded and cast)."""
    if tuple(batch.shape[-2:]) == size:
        return batch
    resized = torch.nn.functional.interpolate(
        batch.to(torch.float32), size=size, mode="bicubic", antialias=True, align_corners=False
    )
    return resized.clamp_(0, 255).round_().to(torch.uint8)
