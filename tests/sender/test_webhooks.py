"""The webhook sender against real HTTP receivers on loopback, with a scaled-down schedule."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import transaction, utcnow
from core.models import WebhookDelivery
from core.signatures import new_secret
from core.ssrf import guarded_client
from core.tenants import DEFAULT_TENANT_ID, ensure_default_tenant
from core.webhook_secrets import current_secret, rotate_secret
from core.webhooks import job_deliveries, replay_deliveries
from devtools.harness import free_port
from sender.webhooks import Outcome, WebhookSender
from tests.support.webhook_jobs import (
    MODEL,
    attempts,
    deliveries,
    job_status,
    queued_job,
    row,
    run_job,
)
from tests.support.webhook_receiver import Receiver, Reply, verify_standard_webhook

MakeSender = Callable[..., WebhookSender]


@pytest.fixture
def make_sender(db_url: str, sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Any]:
    """Senders whose publish step delivers at once, in this thread (no broker needed)."""
    clients = []

    def make(**overrides: Any) -> WebhookSender:
        client = overrides.pop("client", None)
        fields: dict[str, Any] = {
            "webhook_allow_private": True,
            "webhook_allow_http": True,
            "webhook_retry_delays_s": [0.05, 0.05, 0.05],
            "webhook_timeout_s": 1.0,
            "webhook_send_lease_s": 5.0,
            **overrides,
        }
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            environment="test",
            data_dir=tmp_path,
            database_url=db_url,
            models=[MODEL],
            log_json=False,
            **fields,
        )
        client = client or guarded_client(
            allow_private=settings.webhook_allow_private, timeout_s=settings.webhook_timeout_s
        )
        clients.append(client)
        sender = WebhookSender(
            settings=settings, sessions=sessions, client=client, publish=lambda i, a: None
        )
        sender.publish = sender.deliver  # type: ignore[assignment]
        return sender

    yield make
    for client in clients:
        client.close()


def settle(sender: WebhookSender, delivery_id: str, timeout: float = 30) -> WebhookDelivery:
    """Run the dispatcher until the delivery is no longer pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sender.dispatch_due()
        delivery = row(sender.sessions, WebhookDelivery, delivery_id)
        if delivery.status != "pending":
            return delivery
        time.sleep(0.02)
    raise AssertionError(f"delivery {delivery_id} still pending after {timeout}s")


def finished_job_delivery(
    sessions: sessionmaker[Session], url: str, **job: Any
) -> tuple[str, WebhookDelivery]:
    created = queued_job(sessions, url=url, **job)
    run_job(sessions, created.id)
    return created.id, deliveries(sessions, created.id)[-1]


def secret_of_default_tenant(sessions: sessionmaker[Session]) -> str:
    with transaction(sessions) as session:
        return current_secret(session, ensure_default_tenant(session).id).secret


def test_finished_job_is_delivered_signed(
    make_sender: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = make_sender()
    with Receiver() as receiver:
        job_id, delivery = finished_job_delivery(sessions, receiver.url())
        done = settle(sender, delivery.id)
    [request] = receiver.received
    secret = secret_of_default_tenant(sessions)
    body = verify_standard_webhook(secret, request.headers, request.body)
    assert request.headers["webhook-id"] == delivery.id
    assert request.headers["content-type"] == "application/json"
    assert body["type"] == "job.succeeded" and body["data"]["id"] == job_id
    assert body["data"]["status"] == "succeeded" and body["data"]["result"]["text"]
    assert (done.status, done.attempts) == ("succeeded", 1)
    [attempt] = attempts(sessions, delivery.id)
    assert (attempt.status_code, attempt.error, attempt.response_excerpt) == (200, None, "ok")


def test_receiver_errors_are_retried_with_the_same_webhook_id(
    make_sender: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = make_sender()
    with Receiver([Reply(500), Reply(503, body=b"busy")]) as receiver:
        _, delivery = finished_job_delivery(sessions, receiver.url())
        done = settle(sender, delivery.id)
    secret = secret_of_default_tenant(sessions)
    assert [r.headers["webhook-id"] for r in receiver.received] == [delivery.id] * 3
    bodies = [verify_standard_webhook(secret, r.headers, r.body) for r in receiver.received]
    assert bodies[0] == bodies[1] == bodies[2]
    assert (done.status, done.attempts) == ("succeeded", 3)
    log = attempts(sessions, delivery.id)
    assert [a.status_code for a in log] == [500, 503, 200]
    assert [a.error for a in log] == ["HTTP 500", "HTTP 503", None]
    assert log[1].response_excerpt == "busy"


def test_410_gone_stops_the_delivery_and_later_events(
    make_sender: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = make_sender()
    with Receiver(default=Reply(410)) as receiver:
        job = queued_job(sessions, url=receiver.url(), events=["job.running", "job.succeeded"])
        run_job(sessions, job.id)
        first, second = deliveries(sessions, job.id)
        assert settle(sender, first.id).status == "disabled"
        sender.dispatch_due()
    assert len(receiver.received) == 1
    assert row(sessions, WebhookDelivery, second.id).status == "disabled"
    assert job_status(sessions, job.id) == "succeeded"


@pytest.mark.parametrize("code", [429, 502, 504])
def test_retry_after_is_honoured(
    make_sender: MakeSender, sessions: sessionmaker[Session], code: int
) -> None:
    sender = make_sender()
    with Receiver([Reply(code, headers={"retry-after": "1"})]) as receiver:
        _, delivery = finished_job_delivery(sessions, receiver.url())
        sender.dispatch_due()
        waiting = row(sessions, WebhookDelivery, delivery.id)
        done = settle(sender, delivery.id)
    assert waiting.status == "pending"
    assert (waiting.next_attempt_at - waiting.last_attempt_at).total_seconds() >= 1
    first, second = receiver.received
    assert second.at - first.at >= 1
    assert done.status == "succeeded"


def test_retry_after_on_other_codes_follows_the_schedule(make_sender: MakeSender) -> None:
    sender = make_sender()
    delivery = WebhookDelivery(attempts_before_replay=0)
    now = utcnow()
    unavailable = Outcome(503, error="HTTP 503", retry_after_s=60)
    status, at = sender.next_state(delivery, 1, unavailable, now)
    assert status == "pending" and at is not None
    assert (at - now).total_seconds() == pytest.approx(0.05)


def test_unreachable_receiver_exhausts_the_schedule_then_replay_delivers(
    make_sender: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = make_sender()
    port = free_port()  # nothing listens here yet
    job_id, delivery = finished_job_delivery(sessions, f"http://127.0.0.1:{port}/hook")
    failed = settle(sender, delivery.id)
    assert (failed.status, failed.attempts) == ("failed", 4)  # at once + 3 retries
    assert all("ConnectError" in (a.error or "") for a in attempts(sessions, delivery.id))
    assert job_status(sessions, job_id) == "succeeded"
    with Receiver(port=port) as receiver:
        with transaction(sessions) as session:
            replay_deliveries(session, job_deliveries(session, job_id))
        replayed = settle(sender, delivery.id)
    assert (replayed.status, replayed.attempts) == ("succeeded", 5)
    assert receiver.received[0].headers["webhook-id"] == delivery.id


def test_slow_receiver_counts_as_a_failed_attempt(
    make_sender: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = make_sender(webhook_timeout_s=0.5, webhook_send_lease_s=5.0)
    with Receiver([Reply(200, delay_s=2.0)]) as receiver:
        _, delivery = finished_job_delivery(sessions, receiver.url())
        done = settle(sender, delivery.id)
    assert len(receiver.received) == 2
    first, second = attempts(sessions, delivery.id)
    assert first.status_code is None and "no answer within 0.5 s" in (first.error or "")
    assert (second.status_code, done.status) == (200, "succeeded")


def test_redirects_are_failures_and_not_followed(
    make_sender: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = make_sender(webhook_retry_delays_s=[])
    with Receiver() as elsewhere:
        redirect = Reply(307, headers={"location": elsewhere.url("/other")})
        with Receiver([redirect]) as receiver:
            _, delivery = finished_job_delivery(sessions, receiver.url())
            done = settle(sender, delivery.id)
    assert elsewhere.received == [] and len(receiver.received) == 1
    assert done.status == "failed"
    assert "redirect" in (attempts(sessions, delivery.id)[0].error or "")


def test_an_endless_answer_is_read_only_up_to_the_cap(
    make_sender: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = make_sender(webhook_response_max_bytes=1000)
    with Receiver([Reply(200, endless=True)]) as receiver:
        _, delivery = finished_job_delivery(sessions, receiver.url())
        done = settle(sender, delivery.id)
    assert done.status == "succeeded"
    assert len(attempts(sessions, delivery.id)[0].response_excerpt or "") == 1000


def test_a_name_resolving_to_loopback_is_refused_at_connect_time(
    make_sender: MakeSender, sessions: sessionmaker[Session]
) -> None:
    client = guarded_client(allow_private=False, timeout_s=1, resolver=lambda h, p: ["127.0.0.1"])
    sender = make_sender(webhook_allow_private=False, webhook_retry_delays_s=[], client=client)
    with Receiver() as receiver:
        _, delivery = finished_job_delivery(
            sessions, f"http://hooks.example.com:{receiver.port}/hook"
        )
        done = settle(sender, delivery.id)
    assert receiver.received == []
    assert done.status == "failed"
    assert "127.0.0.1 is a loopback address" in (attempts(sessions, delivery.id)[0].error or "")


def test_a_duplicate_message_sends_once(
    make_sender: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = make_sender()
    with Receiver() as receiver:
        _, delivery = finished_job_delivery(sessions, receiver.url())
        assert sender.deliver(delivery.id, 0) == "succeeded"
        assert sender.deliver(delivery.id, 0) == "duplicate"
    assert len(receiver.received) == 1


def test_during_rotation_both_secrets_sign(
    make_sender: MakeSender, sessions: sessionmaker[Session]
) -> None:
    sender = make_sender()
    old = secret_of_default_tenant(sessions)
    with transaction(sessions) as session:
        new = rotate_secret(session, DEFAULT_TENANT_ID, overlap_s=3600).secret
    with Receiver() as receiver:
        _, delivery = finished_job_delivery(sessions, receiver.url())
        settle(sender, delivery.id)
    [request] = receiver.received
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    verify_standard_webhook(old, request.headers, request.body)
    verify_standard_webhook(new, request.headers, request.body)


def _example_receiver() -> Any:
    path = Path(__file__).resolve().parents[2] / "examples" / "webhook_receiver.py"
    spec = importlib.util.spec_from_file_location("webhook_receiver_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documented_receiver_accepts_real_deliveries_and_refuses_forgeries(
    make_sender: MakeSender, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    example = _example_receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), example.Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    sender = make_sender(webhook_retry_delays_s=[])
    try:
        monkeypatch.setenv("WEBHOOK_SECRET", secret_of_default_tenant(sessions))
        _, genuine = finished_job_delivery(sessions, url)
        assert settle(sender, genuine.id).status == "succeeded"
        # A receiver holding another secret must refuse what this tenant's secret signed.
        monkeypatch.setenv("WEBHOOK_SECRET", new_secret())
        _, forged = finished_job_delivery(sessions, url)
        assert settle(sender, forged.id).status == "failed"
    finally:
        server.shutdown()
        server.server_close()
    assert [a.status_code for a in attempts(sessions, genuine.id)] == [204]
    assert [a.status_code for a in attempts(sessions, forged.id)] == [401]
