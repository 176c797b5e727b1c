"""Retention on PostgreSQL and S3: old finished jobs and unused images go, live ones never."""

from __future__ import annotations

import io
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select, text, update

from core.config import Settings
from core.db import transaction, utcnow
from core.errors import InvalidRequest
from core.images import ImageLimits, inspect_image
from core.jobs import claim_job, complete_job, insert_job, new_job
from core.models import IdempotencyKey, Image, Job, JobEvent
from core.retention import (
    collect_orphan_objects,
    delete_if_unreferenced,
    ensure_stored,
    folders_for_pass,
    hold_image_objects,
    purge_expired,
)
from core.storage import ObjectStorage, image_key, settings_storage, store_once
from core.tenants import ensure_tenant

DAY = timedelta(days=1)


@pytest.fixture
def storage(service_settings: Settings) -> ObjectStorage:
    return settings_storage(service_settings)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), (seed, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def add_image(sessions: Any, storage: ObjectStorage, data: bytes, tenant: str = "t1") -> str:
    """Store bytes and record them for a tenant, as an upload would."""
    sha, _ = store_once(storage, data, content_type="image/png")
    with transaction(sessions) as session:
        tenant_id = ensure_tenant(session, tenant).id
        if session.get(Image, (tenant_id, sha)) is None:
            session.add(
                Image(tenant_id=tenant_id, sha256=sha, format="png", width=8, height=8, byte_size=1)
            )
    return sha


def add_job(sessions: Any, settings: Settings, sha: str, tenant: str = "t1") -> str:
    with transaction(sessions) as session:
        job = insert_job(
            session,
            new_job(
                tenant_id=ensure_tenant(session, tenant).id,
                model=settings.default_model,
                spec={"task": "caption", "images": [sha], "params": {}},
                max_attempts=3,
            ),
            image_shas=[sha],
        )
        return job.id


def finish(sessions: Any, job_id: str, *, days_ago: float) -> None:
    with transaction(sessions) as session:
        assert claim_job(session, job_id, worker_id="w1", lease_s=30)
        assert complete_job(session, job_id, attempt=1, result={"text": "x"}, usage={})
        when = utcnow() - days_ago * DAY
        session.execute(update(Job).where(Job.id == job_id).values(finished_at=when))


def age_images(sessions: Any, *, days: float) -> None:
    with transaction(sessions) as session:
        session.execute(update(Image).values(last_used_at=utcnow() - days * DAY))


def purge(sessions: Any, storage: ObjectStorage, settings: Settings) -> Any:
    return purge_expired(sessions=sessions, storage=storage, settings=settings)


def count(sessions: Any, model: type) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_finished_jobs_past_retention_go_with_their_events(
    sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    sha = add_image(sessions, storage, png(1))
    old, recent, live = (add_job(sessions, service_settings, sha) for _ in range(3))
    finish(sessions, old, days_ago=8)
    finish(sessions, recent, days_ago=1)
    with transaction(sessions) as session:  # a job queued long ago is still live
        session.execute(update(Job).where(Job.id == live).values(created_at=utcnow() - 30 * DAY))
    assert purge(sessions, storage, service_settings).jobs == 1
    with sessions() as session:
        assert session.get(Job, old) is None
        assert session.get(Job, recent) is not None and session.get(Job, live) is not None
        assert session.scalar(select(func.count()).where(JobEvent.job_id == old)) == 0


def test_unused_image_goes_with_its_bytes(
    sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    sha = add_image(sessions, storage, png(2))
    age_images(sessions, days=8)
    report = purge(sessions, storage, service_settings)
    assert (report.images, report.objects) == (1, 1)
    assert count(sessions, Image) == 0
    assert not storage.exists(image_key(sha))


def test_image_of_a_live_job_stays_however_old(
    sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    sha = add_image(sessions, storage, png(3))
    add_job(sessions, service_settings, sha)
    age_images(sessions, days=30)
    assert not purge(sessions, storage, service_settings)
    assert count(sessions, Image) == 1
    assert storage.exists(image_key(sha))


def test_bytes_another_tenant_still_uses_stay(
    sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    sha = add_image(sessions, storage, png(4), tenant="t1")
    age_images(sessions, days=8)
    add_image(sessions, storage, png(4), tenant="t2")
    report = purge(sessions, storage, service_settings)
    assert (report.images, report.objects) == (1, 0)
    assert storage.exists(image_key(sha))


def test_bytes_of_a_retained_finished_job_stay_until_the_job_goes(
    sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    sha = add_image(sessions, storage, png(5))
    job_id = add_job(sessions, service_settings, sha)
    finish(sessions, job_id, days_ago=1)
    age_images(sessions, days=8)
    assert purge(sessions, storage, service_settings).objects == 0
    assert storage.exists(image_key(sha))
    with transaction(sessions) as session:
        session.execute(update(Job).values(finished_at=utcnow() - 8 * DAY))
    report = purge(sessions, storage, service_settings)
    assert (report.jobs, report.objects) == (1, 1)
    assert not storage.exists(image_key(sha))


def test_zero_retention_keeps_everything(
    sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    sha = add_image(sessions, storage, png(6))
    finish(sessions, add_job(sessions, service_settings, sha), days_ago=400)
    age_images(sessions, days=400)
    forever = service_settings.model_copy(update={"job_retention_s": 0, "image_retention_s": 0})
    assert not purge(sessions, storage, forever)
    assert (count(sessions, Job), count(sessions, Image)) == (1, 1)


def test_expired_idempotency_keys_go(
    sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    with transaction(sessions) as session:
        tenant_id = ensure_tenant(session, "t1").id
        for key, age in (("old", 2 * DAY), ("new", timedelta(0))):
            session.add(
                IdempotencyKey(
                    tenant_id=tenant_id,
                    key=key,
                    request_hash="0" * 64,
                    resource_id="job_x",
                    created_at=utcnow() - age,
                )
            )
    assert purge(sessions, storage, service_settings).idempotency_keys == 1
    with sessions() as session:
        assert list(session.scalars(select(IdempotencyKey.key))) == ["new"]


def waiting_for_advisory_lock(sessions: Any) -> bool:
    with sessions() as session:
        query = text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return bool(session.scalar(query))


def test_a_submission_holding_an_object_keeps_retention_from_deleting_it(
    sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    sha, _ = store_once(storage, png(7), content_type="image/png")  # bytes, no rows yet
    deleted: list[bool] = []
    with transaction(sessions) as session:
        hold_image_objects(session, [sha])  # a submission between its upload and its commit
        retention = threading.Thread(
            target=lambda: deleted.append(delete_if_unreferenced(sessions, storage, sha))
        )
        retention.start()
        deadline = time.monotonic() + 30
        while not waiting_for_advisory_lock(sessions):
            assert time.monotonic() < deadline, "retention did not wait for the object's lock"
            assert retention.is_alive(), "retention did not wait for the object's lock"
            time.sleep(0.05)
        tenant_id = ensure_tenant(session, "t1").id
        session.add(
            Image(tenant_id=tenant_id, sha256=sha, format="png", width=8, height=8, byte_size=1)
        )
    retention.join(30)
    assert deleted == [False]
    assert storage.exists(image_key(sha))


def test_a_submission_puts_back_bytes_deleted_since_its_upload(storage: ObjectStorage) -> None:
    data = png(8)
    sha, _ = store_once(storage, data, content_type="image/png")
    storage.delete(image_key(sha))  # retention got there between upload and commit
    info = inspect_image(data, limits=ImageLimits(max_bytes=10**6, max_pixels=10**6), index=0)
    ensure_stored(storage, [sha], {sha: (info, data)})
    assert storage.get(image_key(sha)) == data


def test_a_submission_referring_to_deleted_bytes_by_id_is_refused(storage: ObjectStorage) -> None:
    sha, _ = store_once(storage, png(9), content_type="image/png")
    storage.delete(image_key(sha))
    with pytest.raises(InvalidRequest) as refused:
        ensure_stored(storage, [sha], {})
    assert refused.value.code == "image_not_found"


def all_folders_of(*shas: str) -> list[str]:
    return sorted({sha[:2] for sha in shas})


def test_bytes_no_row_refers_to_go_once_older_than_the_grace(
    sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    orphan, _ = store_once(storage, png(10), content_type="image/png")  # a crash before commit
    recorded = add_image(sessions, storage, png(11))
    of_a_job, _ = store_once(storage, png(12), content_type="image/png")
    add_job(sessions, service_settings, of_a_job)  # job_images only, no image row
    storage.put(f"images/{orphan[:2]}/notes.txt", b"not an image object")
    folders = all_folders_of(orphan, recorded, of_a_job)

    young = utcnow() - timedelta(hours=1)  # all of them were stored after this
    assert collect_orphan_objects(sessions, storage, cutoff=young, folders=folders) == 0
    assert storage.exists(image_key(orphan))

    later = utcnow() + timedelta(minutes=1)  # as if the grace had passed for all of them
    assert collect_orphan_objects(sessions, storage, cutoff=later, folders=folders) == 1
    assert not storage.exists(image_key(orphan))
    assert storage.exists(image_key(recorded)) and storage.exists(image_key(of_a_job))
    assert storage.exists(f"images/{orphan[:2]}/notes.txt")


def test_orphaned_bytes_are_found_only_in_the_folders_listed(
    sessions: Any, storage: ObjectStorage
) -> None:
    orphan, _ = store_once(storage, png(13), content_type="image/png")
    other = [f"{(int(orphan[:2], 16) + 1) % 256:02x}"]
    later = utcnow() + timedelta(minutes=1)
    assert collect_orphan_objects(sessions, storage, cutoff=later, folders=other) == 0
    assert storage.exists(image_key(orphan))


def test_every_folder_is_listed_once_in_sixteen_passes() -> None:
    start = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
    passes = [folders_for_pass(start + timedelta(minutes=5 * n), 300) for n in range(16)]
    listed = [folder for folders in passes for folder in folders]
    assert sorted(listed) == [f"{i:02x}" for i in range(256)]
    assert folders_for_pass(start + timedelta(minutes=80), 300) == passes[0]


def test_the_retention_pass_collects_orphaned_bytes(
    sessions: Any, storage: ObjectStorage, service_settings: Settings
) -> None:
    orphan, _ = store_once(storage, png(14), content_type="image/png")
    # A pass whose folders include the orphan's, an hour and more after it was stored.
    index, interval = int(orphan[:2], 16), service_settings.retention_interval_s
    passes_ahead = (utcnow().timestamp() + 7200) // interval // 16 + 1
    when = datetime.fromtimestamp((passes_ahead * 16 + index // 16) * interval, UTC)
    assert orphan[:2] in folders_for_pass(when, interval)

    keep = service_settings.model_copy(update={"orphan_object_grace_s": 0})
    assert (
        purge_expired(sessions=sessions, storage=storage, settings=keep, now=when).orphan_objects
        == 0
    )
    assert storage.exists(image_key(orphan))
    report = purge_expired(sessions=sessions, storage=storage, settings=service_settings, now=when)
    assert report.orphan_objects == 1
    assert not storage.exists(image_key(orphan))
