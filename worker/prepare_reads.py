"""Images read from storage by the prepare process that prepares them, not by the model's process.

With a storage to read from (`PreparePool(storage=...)`), the worker's task thread sends a
job's uncached images as StoredImage references (their SHA-256); the prepare process reads
each with its own storage client, retrying transient errors until the read deadline, as the
task thread did. An image no longer stored comes back as ImageMissing (the job fails with
`image_missing`); any other read failure comes back as ImageUnreadable, which gives the job
back with a backoff, within its attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from core.retry import retry_transient
from core.storage import ObjectNotFound, ObjectStorage, image_key

T = TypeVar("T")


@dataclass(frozen=True)
class StoredImage:
    """An image for the prepare process to read from storage."""

    sha256: str


@dataclass(frozen=True)
class StorageAccess:
    """How a prepare process opens its own storage client."""

    url: str
    endpoint_url: str | None
    read_deadline_s: float
    region: str | None = None
    s3_direct: bool = True


class ImageMissing(LookupError):
    """A job's image is no longer stored; `index` is its position among the job's images."""

    def __init__(self, index: int) -> None:
        super().__init__(index)  # in args: the error crosses processes pickled
        self.index = index


class ImageUnreadable(RuntimeError):
    """A job's image could not be read before the deadline (storage unreachable)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(index, reason)
        self.index = index
        self.reason = reason

    def __str__(self) -> str:
        return f"reading image {self.index} failed: {self.reason}"


def read_images(
    storage: ObjectStorage, images: Sequence[T | StoredImage], *, deadline_s: float
) -> list[T | bytes]:
    """Every StoredImage replaced by its bytes, read here; other items as they are."""
    read: list[T | bytes] = []
    for index, image in enumerate(images):
        if not isinstance(image, StoredImage):
            read.append(image)
            continue
        key = image_key(image.sha256)
        try:
            read.append(
                retry_transient(
                    lambda key=key: storage.get(key),  # type: ignore[misc]
                    what=f"reading image {image.sha256}",
                    deadline_s=deadline_s,
                )
            )
        except ObjectNotFound:
            raise ImageMissing(index) from None
        except Exception as exc:  # noqa: BLE001 - a client's error may not cross processes
            raise ImageUnreadable(index, f"{type(exc).__name__}: {exc}") from None
    return read
