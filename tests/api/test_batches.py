"""Batches over HTTP: JSON or JSONL in, counts by status, JSONL results, cancel, settling."""

from __future__ import annotations

import json
import threading

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from api.deps import Runtime
from core.batches import settle_forgotten
from core.db import transaction
from core.jobs import claim_job, complete_job
from core.models import Batch, WebhookDelivery
from tests.support.api import b64, caption_body, finish_job, make_key, png_bytes, stored_state

JSONL = {"content-type": "application/jsonl"}


def jsonl(*lines: dict) -> bytes:
    return b"\n".join(json.dumps(line).encode() for line in lines) + b"\n"


def batch_ids(client: TestClient, batch_id: str) -> list[str]:
    jobs = client.get("/v1/jobs", params={"batch_id": batch_id, "limit": 100}).json()["data"]
    return [job["id"] for job in reversed(jobs)]


def results(client: TestClient, batch_id: str) -> list[dict]:
    response = client.get(f"/v1/batches/{batch_id}/results")
    assert response.headers["content-type"].startswith("application/jsonl")
    return [json.loads(line) for line in response.text.splitlines()]


def batch_count(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Batch)) or 0)


def test_json_batch_is_queued_with_counts(client: TestClient) -> None:
    response = client.post("/v1/batches", json={"jobs": [caption_body() for _ in range(3)]})
    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["location"] == f"/v1/batches/{batch['id']}"
    assert (batch["status"], batch["total"]) == ("in_progress", 3)
    assert batch["counts"] == {
        "queued": 3,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "canceled": 0,
    }
    assert [line["custom_id"] for line in results(client, batch["id"])] == ["0", "1", "2"]


def test_jsonl_batch_results_carry_custom_ids(client: TestClient, runtime: Runtime) -> None:
    body = jsonl(caption_body(custom_id="cat-1"), caption_body(custom_id="cat-2"))
    batch = client.post("/v1/batches", content=body, headers=JSONL).json()
    first, second = batch_ids(client, batch["id"])
    finish_job(runtime, first, text="a cat")
    lines = results(client, batch["id"])
    assert [(line["custom_id"], line["status"]) for line in lines] == [
        ("cat-1", "succeeded"),
        ("cat-2", "queued"),
    ]
    assert lines[0]["result"] == {"text": "a cat"} and lines[0]["job_id"] == first
    assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "in_progress"


def test_batch_completes_when_its_last_job_ends(client: TestClient, runtime: Runtime) -> None:
    batch = client.post("/v1/batches", json={"jobs": [caption_body(), caption_body()]}).json()
    for job_id in batch_ids(client, batch["id"]):
        finish_job(runtime, job_id)
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed" and done["finished_at"]
    assert done["counts"]["succeeded"] == 2


def test_jobs_ending_at_once_settle_the_batch_once(client: TestClient, runtime: Runtime) -> None:
    batch = client.post("/v1/batches", json={"jobs": [caption_body() for _ in range(4)]}).json()
    attempts = {}
    for job_id in batch_ids(client, batch["id"]):
        with transaction(runtime.sessions) as session:
            attempts[job_id] = claim_job(session, job_id, worker_id="w", lease_s=60).attempts
    start = threading.Barrier(len(attempts))

    def complete(job_id: str) -> None:
        start.wait()
        with transaction(runtime.sessions) as session:
            complete_job(session, job_id, attempt=attempts[job_id], result={"text": "x"}, usage={})

    threads = [threading.Thread(target=complete, args=(job_id,)) for job_id in attempts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "completed"


def test_the_sweeper_settles_a_batch_left_open(client: TestClient, runtime: Runtime) -> None:
    batch = client.post("/v1/batches", json={"jobs": [caption_body()]}).json()
    finish_job(runtime, batch_ids(client, batch["id"])[0])
    with transaction(runtime.sessions) as session:  # as if the settling process had died
        session.execute(update(Batch).values(finished_at=None))
    with transaction(runtime.sessions) as session:
        assert settle_forgotten(session) == 1
    assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "completed"


def test_multipart_jsonl_with_webhook_and_metadata(client: TestClient) -> None:
    spec = {"webhook": {"url": "https://example.com/hook"}, "metadata": {"run": 7}}
    response = client.post(
        "/v1/batches",
        data={"spec": json.dumps(spec)},
        files={"file": ("jobs.jsonl", jsonl(caption_body(custom_id="a")), "application/jsonl")},
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["metadata"] == {"run": 7}
    assert batch["webhook"] == {"url": "https://example.com/hook", "events": ["batch.completed"]}


def test_one_bad_job_refuses_the_whole_batch(client: TestClient, runtime: Runtime) -> None:
    bad = {"task": "caption", "images": [{"data": b64(b"not an image")}]}
    response = client.post("/v1/batches", json={"jobs": [caption_body(), bad, caption_body()]})
    assert response.status_code == 415
    problem = response.json()
    assert (problem["code"], problem["job_index"], problem["custom_id"]) == (
        "unsupported_image_format",
        1,
        "1",
    )
    assert stored_state(runtime) == (0, 0, 0) and batch_count(runtime) == 0


def test_jsonl_line_without_custom_id_is_refused(client: TestClient, runtime: Runtime) -> None:
    body = jsonl(caption_body(custom_id="a"), caption_body())
    response = client.post("/v1/batches", content=body, headers=JSONL)
    assert response.status_code == 422
    assert (response.json()["code"], response.json()["line"]) == ("missing_custom_id", 2)
    assert batch_count(runtime) == 0


def test_jsonl_line_that_is_not_a_job_names_its_line(client: TestClient) -> None:
    body = jsonl(caption_body(custom_id="a")) + b'{"task": "caption", "bogus": 1}\n'
    response = client.post("/v1/batches", content=body, headers=JSONL)
    assert response.status_code == 422
    assert response.json()["line"] == 2


def test_duplicate_custom_ids_are_refused(client: TestClient) -> None:
    jobs = [caption_body(custom_id="same"), caption_body(custom_id="same")]
    response = client.post("/v1/batches", json={"jobs": jobs})
    assert response.json()["code"] == "duplicate_custom_id"


def test_cancel_stops_queued_jobs_and_finishes_the_batch(
    client: TestClient, runtime: Runtime
) -> None:
    batch = client.post("/v1/batches", json={"jobs": [caption_body() for _ in range(3)]}).json()
    first = batch_ids(client, batch["id"])[0]
    finish_job(runtime, first)
    canceled = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert canceled.status_code == 200
    after = client.get(f"/v1/batches/{batch['id']}").json()
    assert after["counts"]["canceled"] == 2 and after["counts"]["succeeded"] == 1
    assert after["status"] == "canceled"
    again = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert (again.status_code, again.json()["code"]) == (409, "batch_finished")


def test_another_tenant_gets_404_for_a_batch(
    auth_client: TestClient, auth_runtime: Runtime
) -> None:
    owner, stranger = make_key(auth_runtime, "acme"), make_key(auth_runtime, "globex")
    batch = auth_client.post("/v1/batches", json={"jobs": [caption_body()]}, headers=owner).json()
    for method, path in [
        ("GET", f"/v1/batches/{batch['id']}"),
        ("GET", f"/v1/batches/{batch['id']}/results"),
        ("POST", f"/v1/batches/{batch['id']}/cancel"),
    ]:
        response = auth_client.request(method, path, headers=stranger)
        assert response.status_code == 404, path
    assert auth_client.get(f"/v1/batches/{batch['id']}", headers=owner).status_code == 200


def test_a_batch_over_the_queue_cap_gets_429(client: TestClient, runtime: Runtime) -> None:
    runtime.settings = runtime.settings.model_copy(update={"max_queued_jobs_per_tenant": 2})
    response = client.post("/v1/batches", json={"jobs": [caption_body() for _ in range(3)]})
    assert response.status_code == 429
    assert response.json()["code"] == "queue_full"
    assert stored_state(runtime) == (0, 0, 0)


def test_jobs_of_a_batch_share_an_image_stored_once(client: TestClient, runtime: Runtime) -> None:
    data = png_bytes()
    client.post("/v1/batches", json={"jobs": [caption_body(data) for _ in range(3)]})
    assert stored_state(runtime) == (3, 1, 1)


def test_a_finished_batch_queues_its_webhook(client: TestClient, runtime: Runtime) -> None:
    body = {"jobs": [caption_body(), caption_body()], "webhook": {"url": "https://example.com/b"}}
    batch = client.post("/v1/batches", json=body).json()
    for job_id in batch_ids(client, batch["id"]):
        finish_job(runtime, job_id)
    with runtime.sessions() as session:
        deliveries = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.batch_id == batch["id"])
        ).all()
    assert [(d.event_type, d.url) for d in deliveries] == [
        ("batch.completed", "https://example.com/b")
    ]
    payload = json.loads(deliveries[0].payload)
    assert payload["data"]["status"] == "completed"
    assert payload["data"]["counts"]["succeeded"] == 2


def test_a_private_batch_webhook_is_refused(client: TestClient, runtime: Runtime) -> None:
    body = {"jobs": [caption_body()], "webhook": {"url": "https://127.0.0.1/hook"}}
    response = client.post("/v1/batches", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_webhook_url"
    assert batch_count(runtime) == 0
