"""Images and videos uploaded on their own (POST /v1/images, POST /v1/videos), for jobs to
reference by `image_id` or `video_id`. Both are stored once by SHA-256 and recorded in the
tenant's images table (a video's format is its container: MP4, WEBM, ...)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api.deps import Runtime
from core.config import ModelSpec
from core.db import transaction, utcnow
from core.errors import InvalidImage, InvalidVideo, NotFound
from core.images import ImageInfo, ImageLimits, inspect_image
from core.models import Image
from core.retention import delete_if_unreferenced, ensure_stored, hold_image_objects
from core.storage import store_once
from core.tiling import tile_count
from core.video import VideoInfo, VideoLimits, inspect_video, is_video_format

IMAGE_ID_PREFIX = "sha256:"


def record_image(session: Session, tenant_id: str, info: ImageInfo | VideoInfo) -> bool:
    """Record that the tenant may use this image; True if the row is new (races are fine)."""
    values = {
        "tenant_id": tenant_id,
        "sha256": info.sha256,
        "format": info.format,
        "width": info.width,
        "height": info.height,
        "byte_size": info.byte_size,
    }
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    inserted = session.execute(
        dialect.insert(Image)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["tenant_id", "sha256"])
        .returning(Image.sha256)
    )
    if inserted.first() is not None:
        return True
    touch_image(session, tenant_id, info.sha256)
    return False


def touch_image(session: Session, tenant_id: str, sha256: str) -> None:
    """Mark an image as just used (retention keeps recently used images)."""
    session.execute(
        update(Image)
        .where(Image.tenant_id == tenant_id, Image.sha256 == sha256)
        .values(last_used_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def register_upload(
    runtime: Runtime, *, tenant_id: str, data: bytes, limits: ImageLimits
) -> tuple[ImageInfo, bool]:
    """Check, store (once per content) and record an uploaded image; (info, new for tenant)."""
    info = inspect_image(data, limits=limits)
    return info, _store_and_record(runtime, tenant_id, info, data)


def register_video(
    runtime: Runtime, *, tenant_id: str, data: bytes, limits: VideoLimits
) -> tuple[VideoInfo, bool]:
    """Check, store (once per content) and record an uploaded video; (info, new for tenant)."""
    info = inspect_video(data, limits=limits)
    return info, _store_and_record(runtime, tenant_id, info, data)


def _store_and_record(
    runtime: Runtime, tenant_id: str, info: ImageInfo | VideoInfo, data: bytes
) -> bool:
    _, stored = store_once(runtime.storage, data, content_type=info.content_type)
    try:
        with transaction(runtime.sessions) as session:
            # As a job submission does (core.retention): under the object's lock, put back
            # bytes that retention deleted since they were stored, then record the row.
            hold_image_objects(session, [info.sha256])
            ensure_stored(runtime.storage, [info.sha256], {info.sha256: (info, data)})
            created = record_image(session, tenant_id, info)
    except BaseException:
        if stored:  # another tenant may have recorded the same bytes meanwhile: keep them then
            delete_if_unreferenced(runtime.sessions, runtime.storage, info.sha256)
        raise
    return created


def find_image(session: Session, tenant_id: str, image_id: str) -> Image:
    """One of the tenant's images by id; NotFound for anyone else's."""
    if not image_id.startswith(IMAGE_ID_PREFIX):
        raise NotFound(f"no image {image_id}")
    row = session.get(Image, (tenant_id, image_id.removeprefix(IMAGE_ID_PREFIX)))
    if row is None or is_video_format(row.format):
        raise NotFound(f"no image {image_id}")
    return row


def find_video(session: Session, tenant_id: str, video_id: str) -> Image:
    """One of the tenant's videos by id; NotFound for anyone else's (and for images)."""
    row = None
    if video_id.startswith(IMAGE_ID_PREFIX):
        row = session.get(Image, (tenant_id, video_id.removeprefix(IMAGE_ID_PREFIX)))
    if row is None or not is_video_format(row.format):
        raise NotFound(f"no video {video_id}")
    return row


def video_public(row: Image | VideoInfo) -> dict[str, Any]:
    """A video as clients see it."""
    sha = row.sha256
    return {
        "video_id": IMAGE_ID_PREFIX + sha,
        "object": "video",
        "format": row.format,
        "width": row.width,
        "height": row.height,
        "bytes": row.byte_size,
    }


def image_public(
    *, sha256: str, fmt: str, width: int, height: int, byte_size: int, model: ModelSpec
) -> dict[str, Any]:
    """An image as clients see it, with the tiles it costs on the model."""
    return {
        "image_id": IMAGE_ID_PREFIX + sha256,
        "object": "image",
        "format": fmt,
        "width": width,
        "height": height,
        "bytes": byte_size,
        "model": model.alias,
        "tiles": tile_count(width, height, tile_size=model.tile_size, max_tiles=model.max_tiles),
    }


async def read_capped(stream: Any, *, max_bytes: int, what: str = "image") -> bytes:
    """A raw body read while it streams in, refused as soon as it passes max_bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            error = InvalidVideo if what == "video" else InvalidImage
            raise error(f"the {what} has more than {max_bytes} bytes", code=f"{what}_too_large")
        chunks.append(chunk)
    return b"".join(chunks)
