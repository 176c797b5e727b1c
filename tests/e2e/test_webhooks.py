"""Webhooks through the service's own processes, to real receivers on loopback."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.models import WebhookDelivery
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env, wait_http, wait_job
from tests.support.webhook_jobs import attempts, deliveries, queued_job, row, run_job
from tests.support.webhook_receiver import Received, Receiver, Reply, verify_standard_webhook

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


def webhook_settings(settings: Settings) -> Settings:
    """The test stack with loopback receivers allowed and a schedule in fractions of a second."""
    return settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_allow_http": True,
            "webhook_retry_delays_s": [0.2, 0.2, 0.2],
            "webhook_timeout_s": 2.0,
            "webhook_send_lease_s": 3.0,
            "webhook_poll_interval_s": 0.2,
        }
    )


def caption_with_webhook(url: str, events: list[str]) -> dict:
    data = base64.b64encode((EXAMPLES / "cat.jpg").read_bytes()).decode()
    return {
        "task": "caption",
        "images": [{"data": data}],
        "params": {"max_new_tokens": 6},
        "webhook": {"url": url, "events": events},
    }


def wait_delivery(
    sessions: sessionmaker[Session], delivery_id: str, status: str, timeout: float = 60
) -> WebhookDelivery:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        delivery = row(sessions, WebhookDelivery, delivery_id)
        if delivery.status == status:
            return delivery
        time.sleep(0.1)
    raise AssertionError(f"delivery {delivery_id} did not become {status}")


def recorded_deliveries(client: httpx.Client, job_id: str, *, count: int) -> list[dict]:
    """A job's deliveries once `count` of them are no longer pending (the receiver hears a
    webhook a moment before the sender records the answer)."""
    deadline = time.monotonic() + 30
    while True:
        log = client.get(f"/v1/jobs/{job_id}/webhooks").json()["data"]
        done = [d for d in log if d["status"] != "pending"]
        if len(done) >= count or time.monotonic() > deadline:
            return log
        time.sleep(0.1)


def test_job_events_reach_the_receiver_signed(service_settings: Settings, tmp_path: Path) -> None:
    settings = webhook_settings(service_settings)
    env = service_env(settings)
    port = free_port()
    processes = [
        ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log"),
        ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "worker.log"),
        ServiceProcess(["webhooks"], env, tmp_path / "webhooks.log"),
    ]
    with Receiver() as receiver, processes[0], processes[1], processes[2] as sender:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", process=processes[0])
        with httpx.Client(base_url=base, timeout=30) as client:
            body = caption_with_webhook(receiver.url(), ["job.running", "job.succeeded"])
            job = client.post("/v1/jobs", json=body).json()
            done = wait_job(client, job["id"], timeout=180)
            received = receiver.wait_for(2, timeout=60)
            secret = client.get("/v1/webhooks/secret").json()["secret"]
            log = recorded_deliveries(client, job["id"], count=2)
    assert done["status"] == "succeeded", sender.log()[-3000:]
    events = {
        e["type"]: e for e in (verify_standard_webhook(secret, r.headers, r.body) for r in received)
    }
    # Deliveries due together are sent concurrently: the order they arrive in is not promised
    # (docs/api.md), their timestamps are.
    assert sorted(events) == ["job.running", "job.succeeded"]
    assert events["job.running"]["timestamp"] <= events["job.succeeded"]["timestamp"]
    # The webhook carries the job's view; only a GET adds where a queued job stands in line.
    queue_fields = {"queue_position", "estimated_start_s", "queue_reason"}
    assert events["job.succeeded"]["data"] == {
        k: v for k, v in done.items() if k not in queue_fields
    }
    assert {r.headers["webhook-id"] for r in received} == {d["id"] for d in log}
    assert [d["status"] for d in log] == ["succeeded", "succeeded"]
    assert all(d["attempts"][0]["status_code"] == 200 for d in log)


def test_sender_killed_between_send_and_record_resends_the_same_webhook_id(
    service_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    env = service_env(webhook_settings(service_settings))
    first_arrived, killed = threading.Event(), threading.Event()

    def hold_the_first(received: Received) -> None:
        if not first_arrived.is_set():
            first_arrived.set()
            killed.wait(30)  # answer only once the sender that sent this is dead

    with Receiver(default=Reply(200), on_request=hold_the_first) as receiver:
        job = queued_job(sessions, url=receiver.url())
        run_job(sessions, job.id)
        [delivery] = deliveries(sessions, job.id)
        crashing = ServiceProcess(["webhooks"], env, tmp_path / "webhooks-1.log").start()
        try:
            assert first_arrived.wait(60), crashing.log()[-3000:]
        finally:
            crashing.kill()
            killed.set()
        with ServiceProcess(["webhooks"], env, tmp_path / "webhooks-2.log") as restarted:
            first, second = receiver.wait_for(2, timeout=60)
            done = wait_delivery(sessions, delivery.id, "succeeded")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.id
    assert first.body == second.body, restarted.log()[-2000:]
    assert done.attempts == 2
    # The killed sender never recorded its attempt; the restarted one recorded its own.
    assert [a.status_code for a in attempts(sessions, delivery.id)] == [200]


def test_dev_mode_sends_webhooks_to_loopback(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        INTERNVL_JOBS_DATA_DIR=str(tmp_path / "data"), INTERNVL_JOBS_WEBHOOK_POLL_INTERVAL_S="0.2"
    )
    with (
        Receiver() as receiver,
        ServiceProcess(["dev", "--port", str(port)], env, tmp_path / "dev.log") as dev,
    ):
        wait_http(f"{base}/readyz", timeout=120, process=dev)
        with httpx.Client(base_url=base, timeout=30) as client:
            body = caption_with_webhook(receiver.url(), ["job.succeeded"])
            job = client.post("/v1/jobs", json=body).json()
            [request] = receiver.wait_for(1, timeout=120)
            secret = client.get("/v1/webhooks/secret").json()["secret"]
    event = verify_standard_webhook(secret, request.headers, request.body)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"], dev.log()[-2000:]
