"""A tenant's jobs newest first, a page at a time, with opaque keyset cursors."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from core.errors import InvalidRequest
from core.models import Job


@dataclass(frozen=True)
class JobFilter:
    """What a listing keeps; None keeps everything."""

    statuses: Sequence[str] | None = None
    task: str | None = None
    model: str | None = None
    batch_id: str | None = None


def encode_cursor(job: Job) -> str:
    """The cursor that continues a listing after this job."""
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of the last job of the previous page; 422 invalid_cursor if unreadable."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is not None:
            # Offsets up to +-23:59 can push a date past year 1 or 9999: OverflowError here,
            # not a 500 when the database driver converts it.
            created_at = created_at.astimezone(UTC)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(
            "the cursor is not one this service gave", code="invalid_cursor"
        ) from exc
    if created_at.tzinfo is None or not job_id or "\x00" in job_id:
        raise InvalidRequest("the cursor is not one this service gave", code="invalid_cursor")
    return created_at, job_id


def _filtered(query: Select[Job], tenant_id: str, where: JobFilter) -> Select[Job]:
    query = query.where(Job.tenant_id == tenant_id)
    if where.statuses:
        query = query.where(Job.status.in_(list(where.statuses)))
    if where.task is not None:
        query = query.where(Job.task == where.task)
    if where.model is not None:
        query = query.where(Job.model == where.model)
    if where.batch_id is not None:
        query = query.where(Job.batch_id == where.batch_id)
    return query


def list_jobs(
    session: Session, tenant_id: str, *, where: JobFilter, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """One page of the tenant's jobs, newest first, and the cursor of the next page (or None)."""
    query = _filtered(select(Job), tenant_id, where)
    if cursor:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    rows = list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    )
    page = rows[:limit]
    return page, encode_cursor(page[-1]) if len(rows) > limit else None
