"""The webhook sender against hostile receivers: one budget per attempt (connect, headers,
body), one send per delivery at a time, and a per-tenant cap so other tenants stay on time."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.db import transaction
from core.jobs import insert_job, new_job
from core.models import WebhookDelivery
from core.specs import WebhookSpec
from core.tenants import ensure_tenant
from tests.support.drip_server import dripping_body, dripping_headers
from tests.support.sender import MakeSender, finished_job_delivery, settle
from tests.support.webhook_jobs import MODEL, attempts, deliveries, row, run_job
from tests.support.webhook_receiver import Receiver


@pytest.fixture
def senders(make_sender: MakeSender) -> MakeSender:
    return make_sender


def test_a_dripping_body_is_a_failed_attempt(
    senders: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = senders(webhook_timeout_s=0.5, webhook_retry_delays_s=[])
    with dripping_body(200) as url:
        _, delivery = finished_job_delivery(sessions, f"{url}/hook")
        started = time.monotonic()
        done = settle(sender, delivery.id, timeout=10)
        took_s = time.monotonic() - started
    assert done.status == "failed", "a receiver dripping its body was recorded as delivered"
    [attempt] = attempts(sessions, delivery.id)
    assert "no answer within 0.5 s" in (attempt.error or "")
    assert took_s < 5


def test_dripping_headers_end_within_the_budget(
    senders: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = senders(webhook_timeout_s=0.5, webhook_retry_delays_s=[])
    with dripping_headers() as url:
        _, delivery = finished_job_delivery(sessions, f"{url}/hook")
        outcome: list[str] = []
        thread = threading.Thread(target=lambda: outcome.append(sender.deliver(delivery.id, 0)))
        thread.start()
        thread.join(5)
    assert outcome == ["failed"], "a receiver dripping its headers held the sender"


def _other_tenant_delivery(sessions: sessionmaker[Session], url: str) -> WebhookDelivery:
    with transaction(sessions) as session:
        tenant = ensure_tenant(session, "other-tenant")
        job = insert_job(
            session,
            new_job(
                tenant_id=tenant.id,
                model=MODEL,
                spec={"task": "caption", "images": [], "params": {}},
                max_attempts=3,
                webhook=WebhookSpec(url=url).model_dump(),
            ),
            image_shas=[],
        )
    run_job(sessions, job.id)
    return deliveries(sessions, job.id)[-1]


def test_a_slow_tenant_holds_only_its_share_and_one_send_per_delivery(
    senders: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = senders(webhook_timeout_s=2.0, webhook_max_in_flight_per_tenant=1)
    with dripping_body(200) as slow_url, Receiver() as receiver:
        _, slow = finished_job_delivery(sessions, f"{slow_url}/hook")
        _, queued = finished_job_delivery(sessions, f"{slow_url}/hook2")
        fast = _other_tenant_delivery(sessions, receiver.url())
        thread = threading.Thread(target=sender.deliver, args=(slow.id, 0))
        thread.start()
        deadline = time.monotonic() + 2
        while sender.slots.in_flight() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        again = sender.deliver(slow.id, 1)  # a republished message while the send runs
        deferred = sender.deliver(queued.id, 0)
        other = sender.deliver(fast.id, 0)
        thread.join(10)
    assert again == "in_flight"
    assert deferred == "deferred" and row(sessions, WebhookDelivery, queued.id).attempts == 0
    assert other == "succeeded" and len(receiver.received) == 1
    assert len(attempts(sessions, slow.id)) == 1


class _BrokenClient:
    """A client whose every call raises something no HTTP error handler expects."""

    def stream(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("the client could not use this URL")

    def close(self) -> None:
        pass


def test_a_send_that_raises_is_a_recorded_failed_attempt(
    senders: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = senders(client=_BrokenClient(), webhook_retry_delays_s=[])
    _, delivery = finished_job_delivery(sessions, "http://127.0.0.1:9/hook")
    assert sender.deliver(delivery.id, 0) == "failed"
    [attempt] = attempts(sessions, delivery.id)
    assert "RuntimeError" in (attempt.error or "")
