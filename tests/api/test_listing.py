"""GET /v1/jobs: the caller's jobs newest first, filtered, a page at a time."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.deps import Runtime
from tests.support.api import caption_body, finish_job


def submit(client: TestClient, count: int, **extra: object) -> list[str]:
    return [client.post("/v1/jobs", json=caption_body(**extra)).json()["id"] for _ in range(count)]


def test_list_is_newest_first(client: TestClient) -> None:
    ids = submit(client, 3)
    assert [job["id"] for job in client.get("/v1/jobs").json()["data"]] == ids[::-1]


def test_cursor_walks_every_job_once(client: TestClient) -> None:
    ids = submit(client, 7)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_status_filter_keeps_only_that_status(client: TestClient, runtime: Runtime) -> None:
    ids = submit(client, 3)
    finish_job(runtime, ids[1])
    done = client.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["data"]
    assert [job["id"] for job in done] == [ids[1]]
    assert [job["id"] for job in queued] == [ids[2], ids[0]]
    both = client.get("/v1/jobs", params=[("status", "queued"), ("status", "succeeded")])
    assert len(both.json()["data"]) == 3


def test_task_filter(client: TestClient) -> None:
    submit(client, 2)
    vqa = client.post("/v1/jobs", json=caption_body(task="vqa", question="Which colour?")).json()
    listed = client.get("/v1/jobs", params={"task": "vqa"}).json()["data"]
    assert [job["id"] for job in listed] == [vqa["id"]]


def test_a_forged_cursor_is_a_422_problem(client: TestClient) -> None:
    response = client.get("/v1/jobs", params={"cursor": "bm90IGEgY3Vyc29y"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_cursor"


def test_an_unknown_status_is_refused(client: TestClient) -> None:
    response = client.get("/v1/jobs", params={"status": "sleeping"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_params"
