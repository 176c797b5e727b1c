"""GET /v1/jobs/{id}?wait=N: held until the job ends, woken by its event (Redis or sockets)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Runtime
from core.config import Settings
from core.notify import SocketJobFeed, job_feed
from tests.support import LiveServer
from tests.support.api import caption_body, finish_job, make_key

# The long-poll asks for 60 s and the client gives up after 20 s: only a wake-up by the job's
# event answers in time; a timeout-only implementation fails the test instead of passing slowly.
WAIT_S = 60
CLIENT_TIMEOUT_S = 20


@pytest.fixture(params=["redis", "filesystem"])
def feed_runtime(
    request: pytest.FixtureRequest, service_settings: Settings, tmp_path: Path
) -> Iterator[Runtime]:
    """The API's runtime with the Redis broker, or the embedded mode's filesystem broker."""
    settings = service_settings
    if request.param == "filesystem":
        settings = settings.model_copy(update={"broker_url": f"filesystem://{tmp_path / 'b'}"})
    runtime = Runtime.from_settings(settings)
    yield runtime
    runtime.close()


def finish_soon(runtime: Runtime, job_id: str, delay_s: float = 0.5) -> threading.Thread:
    thread = threading.Timer(delay_s, finish_job, args=(runtime, job_id))
    thread.start()
    return thread


def test_wait_returns_the_finished_job_when_it_ends(feed_runtime: Runtime) -> None:
    with (
        LiveServer(create_app(runtime=feed_runtime)) as server,
        httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client,
    ):
        job = client.post("/v1/jobs", json=caption_body()).json()
        finisher = finish_soon(feed_runtime, job["id"])
        response = client.get(f"/v1/jobs/{job['id']}", params={"wait": WAIT_S})
        finisher.join()
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["result"] == {"text": "a red square"}


def test_wait_on_a_finished_job_answers_at_once(client: TestClient, runtime: Runtime) -> None:
    job = client.post("/v1/jobs", json=caption_body()).json()
    finish_job(runtime, job["id"])
    response = client.get(f"/v1/jobs/{job['id']}", params={"wait": WAIT_S})
    assert response.json()["status"] == "succeeded"


def test_wait_that_runs_out_returns_the_job_as_it_is(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=caption_body()).json()
    response = client.get(f"/v1/jobs/{job['id']}", params={"wait": 1})
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert response.json()["queue_position"] == 0  # a queued job's view, as without wait


def test_wait_over_the_cap_is_refused(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=caption_body()).json()
    response = client.get(f"/v1/jobs/{job['id']}", params={"wait": 61})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_params"


def test_wait_on_another_tenants_job_is_404(auth_client: TestClient, auth_runtime: Runtime) -> None:
    job = auth_client.post(
        "/v1/jobs", json=caption_body(), headers=make_key(auth_runtime, "acme")
    ).json()
    response = auth_client.get(
        f"/v1/jobs/{job['id']}", params={"wait": 5}, headers=make_key(auth_runtime, "globex")
    )
    assert response.status_code == 404


def test_many_waiters_are_woken_by_one_event(feed_runtime: Runtime) -> None:
    with LiveServer(create_app(runtime=feed_runtime)) as server:
        job = httpx.post(f"{server.url}/v1/jobs", json=caption_body()).json()
        url = f"{server.url}/v1/jobs/{job['id']}?wait={WAIT_S}"
        with ThreadPoolExecutor(5) as pool:
            calls = [pool.submit(httpx.get, url, timeout=CLIENT_TIMEOUT_S) for _ in range(5)]
            finish_soon(feed_runtime, job["id"]).join()
            statuses = [call.result().json()["status"] for call in calls]
    assert statuses == ["succeeded"] * 5


def test_socket_feed_delivers_between_processes_sockets(tmp_path: Path) -> None:
    feed = SocketJobFeed(tmp_path / "feed")
    received: list[str] = []
    ready, stop = threading.Event(), threading.Event()

    def on_event(job_id: str) -> None:
        received.append(job_id)
        stop.set()

    listener = threading.Thread(target=feed.listen, args=(on_event, ready.set, stop))
    listener.start()
    assert ready.wait(10)
    feed.publish("job_123")
    listener.join(10)
    assert received == ["job_123"]
    assert list((tmp_path / "feed").glob("*.sock")) == []  # the listener cleaned up


def test_feed_follows_the_broker(service_settings: Settings, tmp_path: Path) -> None:
    redis_feed = job_feed(service_settings)
    file_feed = job_feed(service_settings.model_copy(update={"broker_url": "filesystem:///x/b"}))
    assert type(redis_feed).__name__ == "RedisJobFeed"
    assert isinstance(file_feed, SocketJobFeed)
