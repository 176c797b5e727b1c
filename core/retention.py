"""Retention: finished jobs, unused images and old idempotency keys are deleted after a while.

An image's bytes are deleted only when no image row (of any tenant) and no job refers to its
content address any more. Submissions and this pass take the same per-object lock while they
check and change references (a PostgreSQL advisory lock; SQLite serialises writers anyway),
so a job committed at the same moment either sees its object deleted and stores it again, or
keeps it alive: nothing referenced by a live job is ever deleted.

Bytes stored by a request that crashed before its commit have no row at all; the pass finds
them by listing the bucket, a few of its 256 fan-out folders each time, and deletes those
older than `orphan_object_grace_s` the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, exists, select, text, tuple_
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import transaction, utcnow
from core.errors import InvalidRequest
from core.images import ImageInfo
from core.models import (
    TERMINAL_STATUSES,
    DeliveryStatus,
    IdempotencyKey,
    Image,
    Job,
    JobImage,
    JobStatus,
    WebhookDelivery,
)
from core.storage import ObjectStorage, image_key

if TYPE_CHECKING:
    from core.video import VideoInfo

log = logging.getLogger("core.retention")
BATCH_LIMIT = 500
BATCHES_PER_PASS = 20  # bounds one pass; the next pass goes on where this one stopped
# First key of the two-key advisory locks on image objects (second: from the SHA-256).
OBJECT_LOCK_NAMESPACE = 0x1A6E
# image_key's fan-out folders images/00/ .. images/ff/, listed this many per pass: every
# folder once in 16 passes (80 minutes at the default retention_interval_s).
FOLDERS = 256
FOLDERS_PER_PASS = 16
IMAGE_KEY = re.compile(r"images/([0-9a-f]{2})/(\1[0-9a-f]{62})")
LIVE_STATUSES = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]


@dataclass
class RetentionReport:
    """What one retention pass deleted."""

    jobs: int = 0
    images: int = 0
    objects: int = 0
    orphan_objects: int = 0
    idempotency_keys: int = 0

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


def object_lock_key(sha: str) -> int:
    """An object's advisory lock key in OBJECT_LOCK_NAMESPACE (PostgreSQL's int4 key)."""
    return int(sha[:8], 16) - 2**31


def hold_image_objects(session: Session, shas: list[str]) -> None:
    """Lock these objects until the transaction ends, against retention deleting them."""
    connection = session.connection()  # on SQLite this BEGINs IMMEDIATE: the write lock
    if connection.dialect.name != "postgresql":
        return
    for sha in sorted(set(shas)):  # one order everywhere: no deadlocks
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
            {"namespace": OBJECT_LOCK_NAMESPACE, "key": object_lock_key(sha)},
        )


def ensure_stored(
    storage: ObjectStorage, shas: list[str], new: Mapping[str, tuple[ImageInfo | VideoInfo, bytes]]
) -> None:
    """Under hold_image_objects: put back bytes deleted since they were checked (from `new`);
    bytes of an image referenced by id that are gone are a 422 image_not_found."""
    for sha in dict.fromkeys(shas):
        if storage.exists(image_key(sha)):
            continue
        if sha not in new:
            raise InvalidRequest(f"image sha256:{sha} is no longer stored", code="image_not_found")
        info, data = new[sha]
        storage.put(image_key(sha), data, content_type=info.content_type)


def store_held(
    storage: ObjectStorage, shas: list[str], new: Mapping[str, tuple[ImageInfo | VideoInfo, bytes]]
) -> list[str]:
    """Under hold_image_objects: store the new bytes (one conditional PUT each, nothing when
    already there) and check those referenced by id (422 image_not_found when gone); returns
    the content addresses this call stored, for the caller to forget if its commit fails.

    What a submission does instead of storing first and calling ensure_stored: under the lock
    a conditional PUT says both "stored" and "still there", one S3 request where the other
    order needs two (PUT, then HEAD), at the price of holding the transaction during the PUT.
    """
    created: list[str] = []
    for sha in dict.fromkeys(shas):
        if sha in new:
            info, data = new[sha]
            if storage.put_if_absent(image_key(sha), data, content_type=info.content_type):
                created.append(sha)
        elif not storage.exists(image_key(sha)):
            raise InvalidRequest(f"image sha256:{sha} is no longer stored", code="image_not_found")
    return created


def purge_expired(
    *,
    sessions: sessionmaker[Session],
    storage: ObjectStorage,
    settings: Settings,
    now: datetime | None = None,
) -> RetentionReport:
    """Delete what outlived its retention period; a pass does at most a few batches."""
    now = now or utcnow()
    report = RetentionReport()
    orphans: set[str] = set()
    if settings.job_retention_s > 0:
        cutoff = now - timedelta(seconds=settings.job_retention_s)
        report.jobs = _in_batches(lambda: _purge_jobs(sessions, cutoff, orphans))
    if settings.image_retention_s > 0:
        cutoff = now - timedelta(seconds=settings.image_retention_s)
        report.images = _in_batches(lambda: _purge_images(sessions, cutoff, orphans))
    report.objects = sum(delete_if_unreferenced(sessions, storage, sha) for sha in orphans)
    if settings.orphan_object_grace_s > 0:
        report.orphan_objects = collect_orphan_objects(
            sessions,
            storage,
            cutoff=now - timedelta(seconds=settings.orphan_object_grace_s),
            folders=folders_for_pass(now, settings.retention_interval_s),
        )
    with transaction(sessions) as session:
        cutoff = now - timedelta(seconds=settings.idempotency_ttl_s)
        report.idempotency_keys = session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff)
        ).rowcount  # type: ignore[attr-defined]
    return report


def _in_batches(purge: Callable[[], int]) -> int:
    total = 0
    for _ in range(BATCHES_PER_PASS):
        deleted = purge()
        total += deleted
        if deleted < BATCH_LIMIT:
            break
    return total


def _purge_jobs(sessions: sessionmaker[Session], cutoff: datetime, orphans: set[str]) -> int:
    pending_delivery = exists().where(
        WebhookDelivery.job_id == Job.id, WebhookDelivery.status == DeliveryStatus.PENDING.value
    )
    with transaction(sessions) as session:
        ids = list(
            session.scalars(
                select(Job.id)
                .where(
                    Job.status.in_([s.value for s in TERMINAL_STATUSES]),
                    Job.finished_at < cutoff,
                    ~pending_delivery,  # a webhook still to send needs its job
                )
                .limit(BATCH_LIMIT)
                .with_for_update(skip_locked=True)
            )
        )
        if not ids:
            return 0
        orphans.update(
            session.scalars(select(JobImage.sha256).where(JobImage.job_id.in_(ids)).distinct())
        )
        # Events, image references and deliveries go with their job (ON DELETE CASCADE).
        session.execute(delete(Job).where(Job.id.in_(ids)))
    return len(ids)


def _purge_images(sessions: sessionmaker[Session], cutoff: datetime, orphans: set[str]) -> int:
    used_by_live_job = (
        exists()
        .where(JobImage.sha256 == Image.sha256, JobImage.job_id == Job.id)
        .where(Job.tenant_id == Image.tenant_id, Job.status.in_(LIVE_STATUSES))
    )
    with transaction(sessions) as session:
        rows = session.execute(
            select(Image.tenant_id, Image.sha256)
            .where(Image.last_used_at < cutoff, ~used_by_live_job)
            .limit(BATCH_LIMIT)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return 0
        keys = [(tenant_id, sha) for tenant_id, sha in rows]
        session.execute(delete(Image).where(tuple_(Image.tenant_id, Image.sha256).in_(keys)))
    orphans.update(sha for _, sha in keys)
    return len(keys)


def delete_if_unreferenced(
    sessions: sessionmaker[Session], storage: ObjectStorage, sha: str
) -> bool:
    """Delete an image's bytes if no image row and no job refers to them; True if deleted."""
    with transaction(sessions) as session:
        hold_image_objects(session, [sha])
        if session.scalar(select(exists().where(Image.sha256 == sha))):
            return False
        if session.scalar(select(exists().where(JobImage.sha256 == sha))):
            return False
        storage.delete(image_key(sha))
    log.info("deleted image object sha256:%s", sha)
    return True


def folders_for_pass(now: datetime, interval_s: float) -> list[str]:
    """The fan-out folders this pass lists: the next FOLDERS_PER_PASS after the last pass's,
    counted from the clock, so a restarted sweeper goes on where the last one stopped."""
    start = int(now.timestamp() // interval_s) * FOLDERS_PER_PASS
    return [f"{(start + i) % FOLDERS:02x}" for i in range(FOLDERS_PER_PASS)]


def collect_orphan_objects(
    sessions: sessionmaker[Session], storage: ObjectStorage, *, cutoff: datetime, folders: list[str]
) -> int:
    """Delete image bytes stored before cutoff that no row refers to; how many were deleted.

    Such bytes are what a request left when it crashed between storing and committing. A
    request still on its way is safe whatever the cutoff: it takes the object's lock and puts
    its bytes back (ensure_stored) if they are gone.
    """
    deleted = 0
    for folder in folders:
        shas = []
        for stored in storage.list_objects(f"images/{folder}/"):
            match = IMAGE_KEY.fullmatch(stored.key)
            if match and stored.modified < cutoff:  # other keys are not the service's to delete
                shas.append(match.group(2))
        for start in range(0, len(shas), BATCH_LIMIT):
            chunk = shas[start : start + BATCH_LIMIT]
            with sessions() as session:  # a first look; deletion checks again under the lock
                referenced = set(
                    session.scalars(select(Image.sha256).where(Image.sha256.in_(chunk)))
                )
                referenced.update(
                    session.scalars(select(JobImage.sha256).where(JobImage.sha256.in_(chunk)))
                )
            for sha in chunk:
                if sha not in referenced and delete_if_unreferenced(sessions, storage, sha):
                    deleted += 1
    return deleted
