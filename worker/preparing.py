"""Where a worker prepares its jobs: the interface, and preparing in the task threads.

`Preparing` is what the worker's runtime calls; worker.prepare_pool.PreparePool implements it
with prepare processes, `InProcessPreparing` in the calling thread (prepare_processes = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from core.prompts import Conversation
from worker.device_tiles import ImagePixels
from worker.prepare_reads import StoredImage
from worker.preparer import ImageSource, JobInputs, Preparer
from worker.video import VideoInputs, prepare_video


class Preparing(Protocol):
    """Where a worker prepares its jobs: in a pool of processes or in its own threads."""

    reads_storage: bool  # whether jobs send StoredImage references instead of bytes

    def run(
        self,
        conversation: Conversation,
        images: Sequence[ImageSource | int | StoredImage],
        *,
        max_tiles: int,
        on_device: bool = False,
    ) -> JobInputs:
        """One job's ids and the pixels of the images given as sources (pictures: on_device)."""

    def run_video(
        self,
        spec: dict[str, Any],
        control_tokens: list[str],
        data: bytes | StoredImage,
        *,
        max_tiles: int,
        on_device: bool = False,
    ) -> VideoInputs:
        """A video job's frames sampled and decoded, its prompt and inputs prepared."""

    def cacheable(self, image: ImagePixels) -> ImagePixels:
        """What the prepare cache may keep of an image this returned (not a lent slot)."""

    def close(self) -> None:
        """Stop preparing; jobs still preparing fail."""


class InProcessPreparing:
    """Prepares in the calling thread (prepare_processes = 0), with the engine's preparer."""

    reads_storage = False  # the task thread reads images and sends their bytes

    def __init__(self, preparer: Preparer) -> None:  # noqa: D107
        self.preparer = preparer

    def run(
        self,
        conversation: Conversation,
        images: Sequence[ImageSource | int | StoredImage],
        *,
        max_tiles: int,
        on_device: bool = False,
    ) -> JobInputs:
        """One job's ids and the pixels of the images given as sources."""
        return self.preparer.job_inputs(
            conversation, without_keys(images), max_tiles=max_tiles, on_device=on_device
        )

    def run_video(
        self,
        spec: dict[str, Any],
        control_tokens: list[str],
        data: bytes | StoredImage,
        *,
        max_tiles: int,
        on_device: bool = False,
    ) -> VideoInputs:
        """A video job's frames sampled and decoded, its prompt and inputs prepared."""
        if isinstance(data, StoredImage):
            raise TypeError("a clip to read from storage reached a preparer that does not read")
        return prepare_video(
            self.preparer, spec, control_tokens, data, max_tiles=max_tiles, on_device=on_device
        )

    def cacheable(self, image: ImagePixels) -> ImagePixels:
        """The image itself: it is this process's own memory."""
        return image

    def close(self) -> None:
        """Nothing to stop."""


def without_keys(images: Sequence[ImageSource | int | StoredImage]) -> list[ImageSource | int]:
    """The images, which must all be given (none a storage key left to read)."""
    given = [image for image in images if not isinstance(image, StoredImage)]
    if len(given) != len(images):
        raise TypeError("images to read from storage reached a preparer that does not read")
    return given
