"""A submission's one statement on PostgreSQL adds exactly the rows the separate statements add,
under the same locks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from api.intake import ImageSet, sent_image_rows, upsert_image_rows
from core import jobs
from core.config import Settings
from core.db import transaction
from core.images import ImageInfo
from core.jobs import insert_job, new_job
from core.models import Image, Job, JobEvent, JobImage
from core.retention import OBJECT_LOCK_NAMESPACE, hold_image_objects, object_lock_key
from core.submission_pg import insert_submission
from core.tenants import ensure_tenant

SHA_A, SHA_B = "a1" * 32, "b2" * 32


def image_set(*shas: str) -> ImageSet:
    images = ImageSet()
    for i, sha in enumerate(shas):
        images.new[sha] = (ImageInfo(sha, "JPEG", 640 + i, 480, 61_000 + i), b"bytes")
        images.shas.append(sha)
    images.shas.append(shas[0])  # the same image twice in one prompt
    return images


def a_job(tenant_id: str, settings: Settings, *, webhook: bool = True) -> Job:
    return new_job(
        tenant_id=tenant_id,
        model=settings.default_model,
        spec={"task": "caption", "images": [SHA_A, SHA_B, SHA_A], "params": {"max_tiles": 6}},
        max_attempts=5,
        priority=3,
        metadata={"order": 7},
        webhook={"url": "https://hooks.example/x", "events": ["job.succeeded"]}
        if webhook
        else None,
        custom_id="c-1",
    )


def rows(sessions: Any, job_id: str) -> dict[str, Any]:
    with sessions() as session:
        job = session.execute(select(Job.__table__).where(Job.id == job_id)).one()._asdict()
        refs = session.execute(
            select(JobImage.position, JobImage.sha256)
            .where(JobImage.job_id == job_id)
            .order_by(JobImage.position)
        ).all()
        events = session.execute(
            select(JobEvent.type, JobEvent.attempt, JobEvent.data).where(JobEvent.job_id == job_id)
        ).all()
        # No webhook: JSON null, as the ORM has always stored it, not SQL NULL.
        webhook_events_stored = session.execute(
            text("SELECT webhook_events IS NOT NULL FROM jobs WHERE id = :id"), {"id": job_id}
        ).scalar()
    del job["id"]
    return {
        "job": job,
        "refs": refs,
        "events": events,
        "webhook_events_stored": webhook_events_stored,
    }


def images_of(sessions: Any, tenant_id: str) -> list[tuple[Any, ...]]:
    with sessions() as session:
        return [
            tuple(row)
            for row in session.execute(
                select(Image.sha256, Image.format, Image.width, Image.height, Image.byte_size)
                .where(Image.tenant_id == tenant_id)
                .order_by(Image.sha256)
            )
        ]


@pytest.fixture
def tenants(sessions: Any) -> tuple[str, str]:
    with transaction(sessions) as session:
        return ensure_tenant(session, "one").id, ensure_tenant(session, "other").id


@pytest.mark.parametrize("webhook", [True, False], ids=["webhook", "no-webhook"])
def test_one_statement_adds_what_the_separate_statements_add(
    sessions: Any, tenants: tuple[str, str], webhook: bool
) -> None:
    settings = Settings()
    one, other = tenants
    images = image_set(SHA_A, SHA_B)
    single, separate = (
        a_job(one, settings, webhook=webhook),
        a_job(other, settings, webhook=webhook),
    )
    separate.created_at = separate.published_at = separate.updated_at = single.created_at
    heard: list[tuple[str, str]] = []
    jobs.add_event_listener(listener := lambda _s, job, event: heard.append((job.id, event)))
    try:
        with transaction(sessions) as session:
            sent = sent_image_rows(one, images, single.created_at)
            insert_submission(session, single, sent=sent, objects=images.objects)
        with transaction(sessions) as session:
            hold_image_objects(session, images.objects)
            upsert_image_rows(session, other, images)
            insert_job(session, separate, image_shas=images.objects)
    finally:
        jobs._listeners.remove(listener)
    by_statement, by_statements = rows(sessions, single.id), rows(sessions, separate.id)
    assert by_statement["job"].pop("tenant_id") == one
    assert by_statements["job"].pop("tenant_id") == other
    assert by_statement == by_statements
    assert by_statement["refs"] == [(0, SHA_A), (1, SHA_B), (2, SHA_A)]
    assert by_statement["events"] == [("job.queued", 0, {})]
    assert by_statement["webhook_events_stored"] is True
    assert images_of(sessions, one) == images_of(sessions, other) != []
    assert heard == [(single.id, "job.queued"), (separate.id, "job.queued")]


def test_a_known_image_only_gets_a_fresh_last_use(sessions: Any, tenants: tuple[str, str]) -> None:
    settings = Settings()
    one, _ = tenants
    images = image_set(SHA_A)
    first, second = a_job(one, settings), a_job(one, settings)
    second.created_at += timedelta(minutes=5)
    for job in (first, second):
        with transaction(sessions) as session:
            sent = sent_image_rows(one, images, job.created_at)
            insert_submission(session, job, sent=sent, objects=images.objects)
    with sessions() as session:
        image = session.get(Image, (one, SHA_A))
        assert image is not None
        assert (image.created_at, image.last_used_at) == (first.created_at, second.created_at)


def test_the_statement_holds_every_objects_lock_until_commit(
    sessions: Any, tenants: tuple[str, str], db_url: str
) -> None:
    one, _ = tenants
    images = image_set(SHA_A, SHA_B)
    other = create_engine(db_url)

    def free(sha: str) -> bool:
        with other.begin() as connection:
            return bool(
                connection.execute(
                    text("SELECT pg_try_advisory_xact_lock(:namespace, :key)"),
                    {"namespace": OBJECT_LOCK_NAMESPACE, "key": object_lock_key(sha)},
                ).scalar()
            )

    try:
        with transaction(sessions) as session:
            job = a_job(one, Settings())
            sent = sent_image_rows(one, images, job.created_at)
            insert_submission(session, job, sent=sent, objects=images.objects)
            assert [free(SHA_A), free(SHA_B)] == [False, False]
        assert [free(SHA_A), free(SHA_B)] == [True, True]
    finally:
        other.dispose()
