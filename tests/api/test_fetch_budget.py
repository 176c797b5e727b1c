"""Image URL fetches: one time budget per submission for every phase, on threads of their own,
with caps on how many run at once; slow image servers never stall the API."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Runtime
from core.config import Settings
from tests.support.api import stored_state
from tests.support.drip_server import dripping_body, dripping_headers

BUDGET_S = 1.0


def _client(settings: Settings, **changes: object) -> tuple[TestClient, Runtime]:
    runtime = Runtime.from_settings(
        settings.model_copy(
            update={"image_fetch_allow_private": True, "image_fetch_timeout_s": BUDGET_S, **changes}
        )
    )
    return TestClient(create_app(runtime=runtime)), runtime


def _submit_within(client: TestClient, body: dict, wait_s: float) -> httpx.Response | None:
    """The answer to a submission, or None if none came within wait_s."""
    answers: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: answers.append(client.post("/v1/jobs", json=body)), daemon=True
    )
    thread.start()
    thread.join(wait_s)
    return answers[0] if answers else None


def test_dripping_headers_end_within_the_budget(service_settings: Settings) -> None:
    client, runtime = _client(service_settings)
    with dripping_headers() as url, client:
        response = _submit_within(
            client, {"task": "caption", "images": [{"url": f"{url}/a.png"}]}, 10 * BUDGET_S
        )
    assert response is not None, "a server dripping its headers held the submission"
    assert response.status_code == 422
    assert response.json()["code"] == "image_fetch_failed"
    assert stored_state(runtime) == (0, 0, 0)
    runtime.close()


def test_the_budget_is_shared_by_all_urls_of_a_job(service_settings: Settings) -> None:
    client, runtime = _client(service_settings)
    with dripping_body() as url, client:
        urls = [{"url": f"{url}/{n}.png"} for n in range(8)]  # 8 budgets if per URL
        started = time.monotonic()
        response = _submit_within(client, {"task": "caption", "images": urls}, 4 * BUDGET_S)
        took_s = time.monotonic() - started
    assert response is not None and response.status_code == 422, "budget applied per URL"
    assert "in all" in response.json()["detail"]
    assert took_s < 4 * BUDGET_S
    runtime.close()


def test_fetches_in_flight_are_capped_and_reads_stay_served(service_settings: Settings) -> None:
    client, runtime = _client(
        service_settings,
        image_fetch_timeout_s=3.0,
        image_fetch_max_in_flight=2,
        image_fetch_max_in_flight_per_tenant=2,
    )
    with dripping_headers() as url, client, ThreadPoolExecutor(6) as pool:
        body = {"task": "caption", "images": [{"url": f"{url}/a.png"}]}
        slow = [pool.submit(client.post, "/v1/jobs", json=body) for _ in range(2)]
        deadline = time.monotonic() + 2
        while runtime.image_fetcher().in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        refused = client.post("/v1/jobs", json=body)
        health = client.get("/healthz")
        listing = client.get("/v1/jobs")
        answers = [future.result(timeout=10) for future in slow]
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "too_many_fetches"
    assert int(refused.headers["retry-after"]) >= 1
    assert health.status_code == 200 and listing.status_code == 200
    assert [a.status_code for a in answers] == [422, 422]
    assert runtime.image_fetcher().in_flight == 0
    runtime.close()


def test_the_global_cap_answers_503(service_settings: Settings) -> None:
    client, runtime = _client(
        service_settings,
        image_fetch_timeout_s=3.0,
        image_fetch_max_in_flight=1,
        image_fetch_max_in_flight_per_tenant=4,
    )
    with dripping_headers() as url, client, ThreadPoolExecutor(2) as pool:
        body = {"task": "caption", "images": [{"url": f"{url}/a.png"}]}
        slow = pool.submit(client.post, "/v1/jobs", json=body)
        deadline = time.monotonic() + 2
        while runtime.image_fetcher().in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        batch = {"jobs": [{**body, "custom_id": "a"}]}
        refused = client.post("/v1/batches", json=batch)
        slow.result(timeout=10)
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "fetch_capacity"
    assert "retry-after" in refused.headers
    runtime.close()
