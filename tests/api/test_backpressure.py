"""Queue caps: a tenant over its queued-jobs cap, or a full service, gets 429 with Retry-After."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.backpressure import QueueDepth
from api.deps import Runtime
from core.config import Settings
from tests.support.api import caption_body, finish_job, make_key, stored_state


@pytest.fixture
def capped(service_settings: Settings) -> Iterator[tuple[TestClient, Runtime]]:
    settings = service_settings.model_copy(
        update={
            "auth_enabled": True,
            "max_queued_jobs_per_tenant": 2,
            "max_queued_jobs": 3,
            "queue_full_retry_after_s": 7,
        }
    )
    runtime = Runtime.from_settings(settings)
    runtime.queue_depth = QueueDepth(ttl_s=0)  # count every time: the test needs exact depths
    with TestClient(create_app(runtime=runtime)) as client:
        yield client, runtime
    runtime.close()


def test_tenant_over_its_cap_gets_429(capped: tuple[TestClient, Runtime]) -> None:
    client, runtime = capped
    acme = make_key(runtime, "acme")
    accepted = [client.post("/v1/jobs", json=caption_body(), headers=acme) for _ in range(2)]
    before = stored_state(runtime)
    refused = client.post("/v1/jobs", json=caption_body(b"\x89PNG other"), headers=acme)
    assert [r.status_code for r in accepted] == [202, 202]
    assert refused.status_code == 429
    assert refused.json()["code"] == "queue_full"
    assert refused.headers["retry-after"] == "7"
    assert stored_state(runtime) == before


def test_room_comes_back_when_jobs_run(capped: tuple[TestClient, Runtime]) -> None:
    client, runtime = capped
    acme = make_key(runtime, "acme")
    first = client.post("/v1/jobs", json=caption_body(), headers=acme).json()
    client.post("/v1/jobs", json=caption_body(), headers=acme)
    finish_job(runtime, first["id"])
    assert client.post("/v1/jobs", json=caption_body(), headers=acme).status_code == 202


def test_the_global_cap_stops_every_tenant(capped: tuple[TestClient, Runtime]) -> None:
    client, runtime = capped
    acme, globex = make_key(runtime, "acme"), make_key(runtime, "globex")
    for headers in (acme, acme, globex):
        assert client.post("/v1/jobs", json=caption_body(), headers=headers).status_code == 202
    refused = client.post("/v1/jobs", json=caption_body(), headers=globex)
    assert refused.status_code == 429
    assert refused.json()["code"] == "queue_full"
    assert "retry-after" in refused.headers


def test_a_cached_tenant_count_still_counts_the_jobs_admitted_since(
    capped: tuple[TestClient, Runtime],
) -> None:
    client, runtime = capped
    runtime.queue_depth = QueueDepth(ttl_s=3600)  # counted once, at the first submission
    acme = make_key(runtime, "acme")
    refused_invalid = client.post(
        "/v1/jobs", json={"task": "caption", "images": [{"data": "bm90IGFuIGltYWdl"}]}, headers=acme
    )
    accepted = [client.post("/v1/jobs", json=caption_body(), headers=acme) for _ in range(2)]
    refused = client.post("/v1/jobs", json=caption_body(b"\x89PNG other"), headers=acme)
    assert refused_invalid.status_code == 415  # refused jobs take no room
    assert [r.status_code for r in accepted] == [202, 202]
    assert refused.status_code == 429
    assert refused.json()["code"] == "queue_full"
    # Room that frees between counts is seen at the next count, not before.
    finish_job(runtime, accepted[0].json()["id"])
    assert client.post("/v1/jobs", json=caption_body(), headers=acme).status_code == 429
    runtime.queue_depth.ttl_s = 0
    assert client.post("/v1/jobs", json=caption_body(), headers=acme).status_code == 202


def test_tenant_counts_kept_are_bounded() -> None:
    from api import backpressure

    depth = QueueDepth(ttl_s=3600)

    class Counting:
        def scalar(self, _query: object) -> int:
            return 5

    session = Counting()
    for i in range(backpressure._TENANTS_KEPT + 10):
        depth.tenant(session, f"t{i}")  # type: ignore[arg-type]
    depth.admitted("t9999", 1)
    assert len(depth._tenants) == backpressure._TENANTS_KEPT
    assert "t0" not in depth._tenants  # the oldest went first
    assert depth.tenant(session, "t9999") == 6  # type: ignore[arg-type]
