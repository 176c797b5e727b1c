"""Images uploaded on their own (POST /v1/images), for jobs to reference by `image_id`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api.deps import Runtime
from core.config import ModelSpec
from core.db import transaction, utcnow
from core.errors import InvalidImage, NotFound
from core.images import ImageInfo, ImageLimits, inspect_image
from core.models import Image
from core.retention import delete_if_unreferenced, ensure_stored, hold_image_objects
from core.storage import store_once
from core.tiling import tile_count

IMAGE_ID_PREFIX = "sha256:"


def record_image(session: Session, tenant_id: str, info: ImageInfo) -> bool:
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
    return info, created


def find_image(session: Session, tenant_id: str, image_id: str) -> Image:
    """One of the tenant's images by id; NotFound for anyone else's."""
    if not image_id.startswith(IMAGE_ID_PREFIX):
        raise NotFound(f"no image {image_id}")
    row = session.get(Image, (tenant_id, image_id.removeprefix(IMAGE_ID_PREFIX)))
    if row is None:
        raise NotFound(f"no image {image_id}")
    return row


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


async def read_capped(stream: Any, *, max_bytes: int) -> bytes:
    """A raw body read while it streams in, refused as soon as it passes max_bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            raise InvalidImage(f"the image has more than {max_bytes} bytes", code="image_too_large")
        chunks.append(chunk)
    return b"".join(chunks)
