"""A job's model inputs from its conversation and images, with only the checkpoint's processor.

No model is needed, so preparing runs wherever the CPU is (the worker's prepare processes,
worker.prepare_pool, or its task threads) and benchmarks can measure it alone. The ids are the
processor's own (tests compare them); each image's pixels are its uint8 tiles or, when the
model's device resizes (`on_device`), its decoded picture and grid (worker.preprocess); both
are normalised later on the device (worker.device_tiles, InternVLEngine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from core.prompts import Conversation
from worker.device_tiles import ImagePixels, image_tile_count
from worker.prepare_cache import PrepareCache
from worker.preprocess import Picture, decode_picture, tile_image, tile_pixels

# Stored bytes, a decoded image, or one prepared before (its tiles, or a Picture).
ImageSource = bytes | Image.Image | torch.Tensor | Picture


class ImageUndecodable(ValueError):
    """A job's image could not be decoded; `index` is its position among the job's images."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(index, reason)  # both in args: the error crosses processes pickled
        self.index = index
        self.reason = reason

    def __str__(self) -> str:
        return f"image {self.index}: {self.reason}"


@dataclass
class JobInputs:
    """A job's prompt ids and the pixels of the images it was given undecoded."""

    input_ids: torch.Tensor  # (prompt_tokens,) int64
    tiles: list[ImagePixels | None]  # per job image: tiles or picture; None if given as a count
    counts: list[int]  # per job image: its tiles


class Preparer:
    """Tiles and tokenises as the checkpoint's InternVL processor does, at device speed."""

    def __init__(self, processor: Any, *, model_alias: str, cache_bytes: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_alias = model_alias
        self.image_seq_length = int(processor.image_seq_length)
        self.image_token_ids = (
            int(self.tokenizer.start_image_token_id),
            int(self.tokenizer.context_image_token_id),
            int(self.tokenizer.end_image_token_id),
        )
        self.image_placeholder = str(processor.image_token)
        images = processor.image_processor
        self.tile_size = int(images.size["height"])
        self.min_tiles = int(images.min_patches)
        # The processor's fused rescale-and-normalise: (x - mean/scale) / (std/scale), float32.
        mean, std = (
            (torch.tensor(values) * (1.0 / images.rescale_factor)).view(3, 1, 1)
            for values in (images.image_mean, images.image_std)
        )
        self.pixel_mean, self.pixel_std = mean, std
        self.cache = PrepareCache(cache_bytes)

    def inputs(
        self, conversation: Conversation, images: Sequence[ImageSource], *, max_tiles: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """(input_ids, all images' uint8 tiles resized here or None, tiles per image)."""
        ids, ordered, tiles = self.image_inputs(conversation, images, max_tiles=max_tiles)
        host = [image for image in ordered if isinstance(image, torch.Tensor)]  # all of them
        pixels = None
        if host:
            pixels = host[0] if len(host) == 1 else torch.cat(host)
        return ids, pixels, tiles

    def image_inputs(
        self,
        conversation: Conversation,
        images: Sequence[ImageSource],
        *,
        max_tiles: int,
        on_device: bool = False,
    ) -> tuple[torch.Tensor, list[ImagePixels], list[int]]:
        """(input_ids, each image's pixels in prompt order, tiles per image) of a conversation."""
        ordered = [
            self.image_pixels(images[i], max_tiles=max_tiles, on_device=on_device)
            for i in conversation.image_order
        ]
        text = self.prompt_text(conversation)
        tiles = [image_tile_count(image) for image in ordered]
        return self.token_ids(text, tiles), ordered, tiles

    def job_inputs(
        self,
        conversation: Conversation,
        images: Sequence[ImageSource | int],
        *,
        max_tiles: int,
        on_device: bool = False,
    ) -> JobInputs:
        """Tile every image given as a source and tokenise the prompt around all of them.

        An int stands for an image tiled before (a cache hit): its tile count is all the
        prompt needs. A decoder's failure is raised as ImageUndecodable, naming the image.
        """
        tiles: list[ImagePixels | None] = []
        counts: list[int] = []
        for index, image in enumerate(images):
            if isinstance(image, int):
                tiles.append(None)
                counts.append(image)
                continue
            try:
                prepared = self.image_pixels(image, max_tiles=max_tiles, on_device=on_device)
            except Exception as exc:  # noqa: BLE001 - any decoder failure: the image is unusable
                raise ImageUndecodable(index, f"{type(exc).__name__}: {exc}") from None
            tiles.append(prepared)
            counts.append(image_tile_count(prepared))
        text = self.prompt_text(conversation)
        ids = self.token_ids(text, [counts[i] for i in conversation.image_order])
        return JobInputs(ids, tiles, counts)

    def prompt_text(self, conversation: Conversation) -> str:
        """The conversation through the checkpoint's chat template, placeholders unexpanded."""
        text: str = self.processor.apply_chat_template(
            conversation.messages, add_generation_prompt=True, tokenize=False
        )
        return text

    def image_pixels(
        self, image: ImageSource, *, max_tiles: int, on_device: bool = False
    ) -> ImagePixels:
        """One image prepared: its uint8 tiles (tiles, 3, T, T), or with `on_device` its decoded
        Picture for the device to tile; tiles, or a Picture for the device, are returned as
        they are, and a Picture is tiled here when the host resizes."""
        if isinstance(image, torch.Tensor) or (isinstance(image, Picture) and on_device):
            return image
        if isinstance(image, Picture):
            return tile_pixels(
                image.pixels, columns=image.columns, rows=image.rows, tile_size=self.tile_size
            )
        if on_device:
            return decode_picture(
                image, tile_size=self.tile_size, max_tiles=max_tiles, min_tiles=self.min_tiles
            )
        return self.image_tiles(image, max_tiles=max_tiles)

    def image_tiles(self, image: bytes | Image.Image, *, max_tiles: int) -> torch.Tensor:
        """One image's uint8 tiles (tiles, 3, T, T), resized on this host."""
        return tile_image(
            image, tile_size=self.tile_size, max_tiles=max_tiles, min_tiles=self.min_tiles
        )

    def cache_key(self, sha256: str, max_tiles: int) -> tuple[str, int, str]:
        """What identifies an image's tiles in the prepare cache."""
        return (sha256, max_tiles, self.model_alias)

    def token_ids(self, text: str, tiles: list[int]) -> torch.Tensor:
        """The prompt's ids with each image placeholder expanded to its image block.

        The same ids the processor makes, without tokenising thousands of repeated placeholder
        strings: text between placeholders is tokenised on its own (image tokens are special,
        so no token spans a boundary) and the blocks are spliced in.
        """
        parts = text.split(self.image_placeholder)
        if len(parts) != len(tiles) + 1:
            raise RuntimeError(
                f"the prompt has {len(parts) - 1} image slots for {len(tiles)} images"
            )
        start, context, end = self.image_token_ids
        ids: list[int] = []
        for part, count in zip(parts, [*tiles, 0], strict=True):
            ids += self.tokenizer.encode(part, add_special_tokens=False) if part else []
            if count:
                ids += [start, *[context] * (count * self.image_seq_length), end]
        return torch.tensor(ids, dtype=torch.long)
