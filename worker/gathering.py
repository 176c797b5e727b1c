"""Gathering a job's model inputs: its images (or video) read, prepared and put in prompt order.

The runtime (worker.runtime) asks a Gatherer for the token ids and pixels of a claimed job.
Images already in the prepare cache are not read again; the others are read from storage here
(or by the prepare processes, when they read storage themselves), then decoded, tiled and
tokenised around by the prepare processes or the task thread (worker.preparing). A video's
clip is sampled, decoded and prepared the same way, but never cached: a clip is rarely asked
twice. Errors that retrying cannot mend (an image no longer stored, one that cannot be
decoded) become PermanentJobError with their code.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch

from core.errors import PermanentJobError
from core.prompts import Conversation
from core.retry import retry_transient
from core.storage import ObjectNotFound, ObjectStorage, image_key
from worker.model_host import CachedImage, ModelHost, PromptImage
from worker.prepare_reads import ImageMissing, StoredImage
from worker.preparer import ImageUndecodable
from worker.preparing import Preparing
from worker.video import VideoUndecodable

# How long an image read is retried before the job is handed back.
IMAGE_READ_DEADLINE_S = 30.0


class Gatherer:
    """Reads and prepares one job's images or video for the model (see the module's doc)."""

    def __init__(
        self,
        *,
        preparing: Preparing,
        model: ModelHost,
        storage: ObjectStorage,
        read_deadline_s: float = IMAGE_READ_DEADLINE_S,
    ) -> None:
        self.preparing = preparing
        self.model = model
        self.storage = storage
        self.read_deadline_s = read_deadline_s

    def video_inputs(
        self, spec: dict[str, Any], max_tiles: int
    ) -> tuple[list[int], torch.Tensor, list[PromptImage], list[int]]:
        """(frames read, ids, each frame's pixels, tiles per frame) of a video job.

        The clip is read here, or by the prepare process when the pool reads storage; its
        frames are sampled, decoded and prepared by the prepare processes (or this thread), not
        cached: a clip is rarely asked twice.
        """
        sha = str(spec["video"]["sha256"])
        try:
            video = self.preparing.run_video(
                spec,
                self.model.control_tokens,
                self.source(sha),
                max_tiles=max_tiles,
                on_device=self.model.resize_on_device,
            )
        except VideoUndecodable as exc:
            raise PermanentJobError(
                f"video sha256:{sha} could not be decoded: {exc.reason}", code="invalid_video"
            ) from exc
        except ImageMissing as exc:
            raise image_missing(sha) from exc
        pixels: list[PromptImage] = []
        for index in video.order:
            image = video.inputs.tiles[index]
            assert image is not None  # every frame was given as a picture, none as a count
            pixels.append(PromptImage(image))
        counts = [video.inputs.counts[i] for i in video.order]
        return video.frames, video.inputs.input_ids, pixels, counts

    def image_inputs(
        self,
        shas: list[str],
        conversation: Conversation,
        max_tiles: int,
        keys: list[Hashable],
        cached: list[CachedImage | None],
    ) -> tuple[torch.Tensor, list[PromptImage], list[int]]:
        """(ids, each image, tiles per image) of a job, in its conversation's order.

        Images in the prepare cache are not read again; the others are read here, then decoded
        (and tiled, unless the device resizes) and tokenised around by the prepare processes
        (or this thread), and marked fresh: the model keeps them in its cache. The pixels stay
        one tensor per image: the device copies them into its batch one by one, so no host
        concatenation happens anywhere.
        """
        sources: list[bytes | int | StoredImage] = [
            self.source(sha) if image is None else image.tiles
            for sha, image in zip(shas, cached, strict=True)
        ]
        try:
            inputs = self.preparing.run(
                conversation, sources, max_tiles=max_tiles, on_device=self.model.resize_on_device
            )
        except ImageUndecodable as exc:
            raise PermanentJobError(
                f"image sha256:{shas[exc.index]} could not be decoded: {exc.reason}",
                code="invalid_image",
            ) from exc
        except ImageMissing as exc:
            raise image_missing(shas[exc.index]) from exc
        images: list[PromptImage] = []
        for key, old, new in zip(keys, cached, inputs.tiles, strict=True):
            if new is not None:
                images.append(PromptImage(new, key, fresh=True))
            else:
                assert old is not None
                images.append(PromptImage(old.pixels, key))
        order = conversation.image_order
        return inputs.input_ids, [images[i] for i in order], [inputs.counts[i] for i in order]

    def source(self, sha: str) -> bytes | StoredImage:
        """An image to prepare: its key when the prepare processes read it, else its bytes."""
        return StoredImage(sha) if self.preparing.reads_storage else self.read_image(sha)

    def read_image(self, sha: str) -> bytes:
        """An image's bytes from storage, retried while storage is unreachable (bounded)."""
        try:
            data: bytes = retry_transient(
                lambda: self.storage.get(image_key(sha)),
                what=f"reading image {sha}",
                deadline_s=self.read_deadline_s,
            )
        except ObjectNotFound as exc:
            raise image_missing(sha) from exc
        return data


def image_missing(sha: str) -> PermanentJobError:
    """The error of a job whose image (or clip) was deleted from storage before it ran."""
    return PermanentJobError(f"image sha256:{sha} is no longer stored", code="image_missing")
