"""Caps checked before a job is accepted: image uses, messages, tiles, batch size while
streaming; URLs in one normal form from validation to the call."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Runtime
from api.jsonl import read_jsonl
from core.config import Settings
from core.errors import InvalidRequest
from core.models import Job
from tests.support.api import b64, png_bytes, stored_state
from tests.support.image_server import ImageHandler

JSONL = {"content-type": "application/jsonl"}


def _chat(references: int, messages: int = 1) -> dict:
    parts = [{"type": "image", "image": 0}] * references + [{"type": "text", "text": "hi"}]
    turns = [{"role": "user", "content": "earlier"}] * (messages - 1)
    return {
        "task": "chat",
        "images": [{"data": b64(png_bytes())}],
        "messages": [*turns, {"role": "user", "content": parts}],
    }


def test_repeated_image_references_count_as_images(client: TestClient, runtime: Runtime) -> None:
    limit = runtime.settings.max_images_per_job
    assert client.post("/v1/jobs", json=_chat(limit)).status_code == 202
    refused = client.post("/v1/jobs", json=_chat(limit + 1))
    assert refused.status_code == 422 and refused.json()["code"] == "too_many_images"
    # 20,000 references in one message: refused by the cap on parts per message first.
    huge = client.post("/v1/jobs", json=_chat(20_000))
    assert huge.status_code == 422 and huge.json()["code"] == "invalid_params"
    assert "content" in huge.json()["detail"]


def test_messages_per_job_are_capped(client: TestClient, runtime: Runtime) -> None:
    refused = client.post("/v1/jobs", json=_chat(1, runtime.settings.max_messages_per_job + 1))
    assert refused.status_code == 422 and refused.json()["code"] == "too_many_messages"


def test_the_tiles_a_job_may_cost_are_checked_at_submit(service_settings: Settings) -> None:
    runtime = Runtime.from_settings(service_settings.model_copy(update={"max_tiles_per_job": 26}))
    with TestClient(create_app(runtime=runtime)) as client:
        assert client.post("/v1/jobs", json=_chat(2)).status_code == 202  # 2 x (12 + 1)
        refused = client.post("/v1/jobs", json=_chat(3))
        fewer = _chat(3)
        fewer["params"] = {"max_tiles": 6}  # 3 x (6 + 1) = 21
        accepted = client.post("/v1/jobs", json=fewer)
    assert refused.status_code == 422 and refused.json()["code"] == "too_many_tiles"
    assert accepted.status_code == 202
    runtime.close()


def _lines(count: int) -> bytes:
    return b"".join(b'{"custom_id": "c%d", "task": "caption"}\n' % n for n in range(count))


def test_jsonl_is_counted_while_it_streams() -> None:
    consumed: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for n in range(1000):
            consumed.append(n)
            yield _lines(1)[:20]  # lines split across chunks
            yield _lines(1)[20:]

    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(read_jsonl(chunks(), max_jobs=5))
    assert refused.value.code == "too_many_jobs"
    assert len(consumed) == 6, "the upload was read past the first line over the limit"


def test_a_jsonl_batch_over_the_limit_is_refused(service_settings: Settings) -> None:
    runtime = Runtime.from_settings(service_settings.model_copy(update={"max_jobs_per_batch": 5}))
    with TestClient(create_app(runtime=runtime)) as client:
        refused = client.post("/v1/batches", content=_lines(200_000), headers=JSONL)
        blank = client.post("/v1/batches", content=b"\n\n" + _lines(6) + b"\n", headers=JSONL)
        crs = client.post("/v1/batches", content=_lines(6).replace(b"\n", b"\r"), headers=JSONL)
    for answer in (refused, blank, crs):
        assert answer.status_code == 422 and answer.json()["code"] == "too_many_jobs"
    assert stored_state(runtime) == (0, 0, 0)
    runtime.close()


def test_a_json_batch_over_the_limit_is_refused_before_validation(
    service_settings: Settings,
) -> None:
    runtime = Runtime.from_settings(service_settings.model_copy(update={"max_jobs_per_batch": 5}))
    jobs = [{"task": "caption", "custom_id": str(n), "images": "not a list"} for n in range(6)]
    with TestClient(create_app(runtime=runtime)) as client:
        refused = client.post("/v1/batches", json={"jobs": jobs})
    assert refused.status_code == 422 and refused.json()["code"] == "too_many_jobs"
    runtime.close()


def test_fullwidth_hosts_take_their_ascii_form(service_settings: Settings) -> None:
    runtime = Runtime.from_settings(
        service_settings.model_copy(update={"webhook_allow_http": False})
    )
    with TestClient(create_app(runtime=runtime)) as client:
        webhook = {"url": "https://ｈｏｏｋｓ.ｅｘａｍｐｌｅ.com/in"}
        accepted = client.post("/v1/jobs", json={**_chat(1), "webhook": webhook})
        loopback = client.post(
            "/v1/jobs", json={**_chat(1), "webhook": {"url": "https://１２７.０.０.１/x"}}
        )
        image = client.post(
            "/v1/jobs",
            json={"task": "caption", "images": [{"url": "http://１２７.０.０.１:9/a.png"}]},
        )
    assert accepted.status_code == 202, accepted.text
    with runtime.sessions() as session:
        job = session.get(Job, accepted.json()["id"])
        assert job is not None and job.webhook_url == "https://hooks.example.com/in"
    assert loopback.status_code == 422 and loopback.json()["code"] == "invalid_webhook_url"
    assert image.status_code == 422 and image.json()["code"] == "invalid_image_url"
    runtime.close()


def test_fullwidth_image_urls_are_fetched_by_their_ascii_form(service_settings: Settings) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    runtime = Runtime.from_settings(
        service_settings.model_copy(update={"image_fetch_allow_private": True})
    )
    try:
        with TestClient(create_app(runtime=runtime)) as client:
            url = f"http://１２７.０.０.１:{server.server_address[1]}/cat.png"
            response = client.post("/v1/jobs", json={"task": "caption", "images": [{"url": url}]})
        assert response.status_code == 202, response.text
    finally:
        server.shutdown()
        server.server_close()
        runtime.close()


def test_long_polls_per_tenant_are_capped(service_settings: Settings) -> None:
    runtime = Runtime.from_settings(service_settings.model_copy(update={"max_waits_per_tenant": 2}))
    with TestClient(create_app(runtime=runtime)) as client, ThreadPoolExecutor(3) as pool:
        job_id = client.post("/v1/jobs", json=_chat(1)).json()["id"]
        held = [pool.submit(client.get, f"/v1/jobs/{job_id}", params={"wait": 2}) for _ in "ab"]
        waiters = client.app.state.waiters  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while waiters.waiting() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        refused = client.get(f"/v1/jobs/{job_id}", params={"wait": 2})
        polled = client.get(f"/v1/jobs/{job_id}")
        answers = [future.result(timeout=10) for future in held]
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_waits"
    assert "retry-after" in refused.headers
    assert polled.status_code == 200 and [a.status_code for a in answers] == [200, 200]
    runtime.close()
