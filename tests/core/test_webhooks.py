"""Delivery rows are written with the job event that causes them; secrets rotate with overlap."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import transaction, utcnow
from core.errors import Conflict, NotFound
from core.jobs import claim_job, complete_job
from core.models import Batch, WebhookDelivery
from core.tenants import ensure_default_tenant
from core.webhook_secrets import current_secret, rotate_secret, signing_secrets
from core.webhooks import (
    DeliveryStatus,
    batch_deliveries,
    job_deliveries,
    record_batch_event,
    replay_deliveries,
)
from tests.support.webhook_jobs import deliveries, queued_job, run_job

URL = "https://hooks.example.com/internvl"


def test_terminal_events_are_the_default(sessions: sessionmaker[Session]) -> None:
    job = queued_job(sessions, url=URL)
    run_job(sessions, job.id)
    [delivery] = deliveries(sessions, job.id)
    assert (delivery.event_type, delivery.url, delivery.status) == ("job.succeeded", URL, "pending")
    body = json.loads(delivery.payload)
    assert body["type"] == "job.succeeded"
    assert body["data"]["id"] == job.id and body["data"]["status"] == "succeeded"
    assert body["data"]["result"] == {"text": "a red square"}
    assert body["timestamp"].endswith("Z")


def test_listed_events_only(sessions: sessionmaker[Session]) -> None:
    job = queued_job(sessions, url=URL, events=["job.running", "job.failed"])
    run_job(sessions, job.id, fail=True)
    rows = deliveries(sessions, job.id)
    assert [d.event_type for d in rows] == ["job.running", "job.failed"]
    assert json.loads(rows[0].payload)["data"]["status"] == "running"
    assert json.loads(rows[1].payload)["data"]["error"]["code"] == "boom"


def test_jobs_without_a_webhook_get_no_deliveries(sessions: sessionmaker[Session]) -> None:
    job = queued_job(sessions, url=None)
    run_job(sessions, job.id)
    assert deliveries(sessions, job.id) == []


def test_delivery_is_rolled_back_with_its_event(sessions: sessionmaker[Session]) -> None:
    job = queued_job(sessions, url=URL, events=["job.running"])
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        assert claim_job(session, job.id, worker_id="w", lease_s=60) is not None
        raise RuntimeError("the worker's transaction fails after the status change")
    assert deliveries(sessions, job.id) == []


def _failed_delivery(sessions: sessionmaker[Session]) -> WebhookDelivery:
    job = queued_job(sessions, url=URL)
    run_job(sessions, job.id)
    with transaction(sessions) as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        delivery.status, delivery.attempts, delivery.finished_at = "failed", 10, utcnow()
        return delivery


def test_replay_rearms_failed_deliveries_for_a_full_schedule(
    sessions: sessionmaker[Session],
) -> None:
    failed = _failed_delivery(sessions)
    with transaction(sessions) as session:
        [replayed] = replay_deliveries(session, job_deliveries(session, failed.job_id or ""))
    assert replayed.id == failed.id  # same webhook-id
    assert (replayed.status, replayed.attempts_before_replay) == ("pending", 10)
    assert replayed.finished_at is None and replayed.next_attempt_at is not None


def test_replay_refuses_pending_unknown_or_nothing(sessions: sessionmaker[Session]) -> None:
    job = queued_job(sessions, url=URL)
    run_job(sessions, job.id)
    [pending] = deliveries(sessions, job.id)
    with transaction(sessions) as session:
        rows = job_deliveries(session, job.id)
        with pytest.raises(Conflict) as nothing:
            replay_deliveries(session, rows)
        assert nothing.value.code == "nothing_to_replay"
        with pytest.raises(Conflict) as busy:
            replay_deliveries(session, rows, delivery_id=pending.id)
        assert busy.value.code == "delivery_pending"
        with pytest.raises(NotFound):
            replay_deliveries(session, rows, delivery_id="msg_other")


def _batch(session: Session, **fields: object) -> Batch:
    tenant = ensure_default_tenant(session)
    batch = Batch(id="bat_1", tenant_id=tenant.id, total=2, **fields)
    session.add(batch)
    session.flush()
    return batch


def test_batch_event_delivery_carries_the_batch_and_its_counts(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as session:
        batch = _batch(session, webhook_url=URL, meta={"run": 7})
        delivery = record_batch_event(session, batch, "batch.completed")
    assert delivery is not None
    with sessions() as session:
        stored = session.get(WebhookDelivery, delivery.id)
        assert stored is not None and stored.batch_id == "bat_1" and stored.job_id is None
        body = json.loads(stored.payload)
    assert body["type"] == "batch.completed"
    assert body["data"]["id"] == "bat_1" and body["data"]["total"] == 2
    assert body["data"]["metadata"] == {"run": 7}
    assert body["data"]["counts"]["succeeded"] == 0
    with sessions() as session:
        assert [d.id for d in batch_deliveries(session, "bat_1")] == [delivery.id]


def test_batch_events_follow_the_batch_webhook(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        silent = _batch(session)
        assert record_batch_event(session, silent, "batch.completed") is None
        silent.webhook_url, silent.webhook_events = URL, ["batch.canceled"]
        assert record_batch_event(session, silent, "batch.completed") is None
        assert record_batch_event(session, silent, "batch.canceled") is not None
        count = session.scalar(select(func.count()).select_from(WebhookDelivery))
    assert count == 1


def test_a_disabled_url_gets_no_more_deliveries(sessions: sessionmaker[Session]) -> None:
    job = queued_job(sessions, url=URL, events=["job.running", "job.succeeded"])
    with transaction(sessions) as session:
        claim_job(session, job.id, worker_id="w", lease_s=60)
    with transaction(sessions) as session:
        # As after the receiver answered 410 Gone to job.running.
        session.scalars(select(WebhookDelivery)).one().status = DeliveryStatus.DISABLED.value
    with transaction(sessions) as session:
        complete_job(session, job.id, attempt=1, result={"text": "x"}, usage={})
    assert [d.event_type for d in deliveries(sessions, job.id)] == ["job.running"]


def test_secret_is_made_once_per_tenant(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        tenant = ensure_default_tenant(session)
        first = current_secret(session, tenant.id).secret
    with transaction(sessions) as session:
        assert current_secret(session, tenant.id).secret == first
        assert signing_secrets(session, tenant.id) == [first]


def test_rotation_keeps_the_old_secret_signing_for_the_overlap(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as session:
        tenant = ensure_default_tenant(session)
        old = current_secret(session, tenant.id).secret
        new = rotate_secret(session, tenant.id, overlap_s=3600).secret
    with transaction(sessions) as session:
        assert current_secret(session, tenant.id).secret == new != old
        assert signing_secrets(session, tenant.id) == [new, old]
        later = utcnow() + timedelta(seconds=3601)
        assert signing_secrets(session, tenant.id, now=later) == [new]


def test_rotation_without_overlap_revokes_at_once(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        tenant = ensure_default_tenant(session)
        current_secret(session, tenant.id)
        new = rotate_secret(session, tenant.id, overlap_s=0).secret
    with transaction(sessions) as session:
        assert signing_secrets(session, tenant.id) == [new]


@pytest.mark.parametrize("unsafe", [{"webhook_allow_private": True}, {"webhook_allow_http": True}])
def test_production_refuses_private_or_plain_http_webhooks(unsafe: dict) -> None:
    with pytest.raises(ValidationError, match="refused in production"):
        Settings(_env_file=None, environment="production", **unsafe)  # type: ignore[call-arg]
    assert Settings(_env_file=None, environment="development", **unsafe)  # type: ignore[call-arg]


def test_send_lease_must_outlast_the_timeout() -> None:
    with pytest.raises(ValidationError, match="webhook_send_lease_s"):
        Settings(_env_file=None, webhook_timeout_s=30, webhook_send_lease_s=20)  # type: ignore[call-arg]
