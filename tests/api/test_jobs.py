"""POST/GET /v1/jobs over HTTP: accepted jobs are stored and queued; refused ones leave nothing."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api.deps import Runtime
from core.storage import image_key, sha256_hex
from tests.support.api import b64, noise_png, png_bytes, queued_messages, stored_state


def caption_request(data: bytes | None = None, **extra: object) -> dict:
    return {"task": "caption", "images": [{"data": b64(data or png_bytes())}], **extra}


def test_submit_caption_returns_202_with_location(client: TestClient, runtime: Runtime) -> None:
    response = client.post("/v1/jobs", json=caption_request(metadata={"order": 7}))
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert (job["task"], job["model"], job["metadata"]) == ("caption", "tiny", {"order": 7})
    assert job["id"].startswith("job_")


def test_accepted_job_is_stored_and_published(client: TestClient, runtime: Runtime) -> None:
    data = png_bytes()
    client.post("/v1/jobs", json=caption_request(data))
    assert stored_state(runtime) == (1, 1, 1)
    assert runtime.storage.get(image_key(sha256_hex(data))) == data
    assert queued_messages(runtime) == 1


def test_get_job_returns_the_stored_job(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=caption_request()).json()
    response = client.get(f"/v1/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.json()["id"] == job["id"]


def test_get_unknown_job_is_404_problem(client: TestClient) -> None:
    response = client.get("/v1/jobs/job_nothing")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "not_found"


def test_multipart_upload_is_accepted(client: TestClient, runtime: Runtime) -> None:
    spec = {"task": "vqa", "question": "What colour is it?"}
    response = client.post(
        "/v1/jobs",
        data={"spec": json.dumps(spec)},
        files=[("images", ("a.png", png_bytes(), "image/png"))],
    )
    assert response.status_code == 202, response.text
    assert response.json()["task"] == "vqa"
    assert stored_state(runtime) == (1, 1, 1)


def test_same_image_in_two_jobs_is_stored_once(client: TestClient, runtime: Runtime) -> None:
    data = png_bytes()
    client.post("/v1/jobs", json=caption_request(data))
    client.post("/v1/jobs", json=caption_request(data))
    assert stored_state(runtime) == (2, 1, 1)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"task": "caption", "images": [{"data": b64(b"not an image at all")}]},
            415,
            "unsupported_image_format",
        ),
        ({"task": "caption", "images": [{"data": ""}]}, 422, "empty_image"),
        ({"task": "caption", "images": [{"data": "***not base64***"}]}, 422, "invalid_base64"),
        ({"task": "summarize", "images": [{"data": b64(png_bytes())}]}, 422, "invalid_params"),
        ({"task": "vqa", "images": [{"data": b64(png_bytes())}]}, 422, "missing_question"),
        ({"task": "caption", "images": []}, 422, "missing_image"),
        (
            {"task": "caption", "images": [{"data": b64(png_bytes())}], "colour": "red"},
            422,
            "invalid_params",
        ),
        (
            {
                "task": "caption",
                "images": [{"data": b64(png_bytes())}],
                "params": {"max_new_tokens": 0},
            },
            422,
            "invalid_params",
        ),
        (
            {"task": "caption", "images": [{"data": b64(png_bytes())}], "model": "nope"},
            422,
            "unknown_model",
        ),
    ],
)
def test_bad_requests_get_a_problem_and_leave_nothing(
    client: TestClient, runtime: Runtime, body: dict, status: int, code: str
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["detail"]
    assert stored_state(runtime) == (0, 0, 0)
    assert queued_messages(runtime) == 0


def test_one_bad_image_stores_none_of_the_others(client: TestClient, runtime: Runtime) -> None:
    body = {
        "task": "compare",
        "images": [{"data": b64(png_bytes())}, {"data": b64(png_bytes()[:40])}],
    }
    response = client.post("/v1/jobs", json=body)
    assert response.status_code in (415, 422)
    assert stored_state(runtime) == (0, 0, 0)


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"


def test_body_over_the_cap_is_413(runtime: Runtime) -> None:
    from api.app import create_app

    small = runtime.settings.model_copy(update={"max_body_bytes": 2048})
    runtime.settings = small
    with TestClient(create_app(runtime=runtime)) as client:
        response = client.post("/v1/jobs", json=caption_request(noise_png()))
    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    assert stored_state(runtime) == (0, 0, 0)
