"""Generation parameters and task fields over HTTP: ranges and caps refused with a clear 422."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.deps import Runtime
from tests.support.api import b64, png_bytes, stored_state


def job(task: str = "caption", images: int = 1, **fields: Any) -> dict[str, Any]:
    pictures = [{"data": b64(png_bytes(color=(i * 40, 20, 200)))} for i in range(images)]
    return {"task": task, "images": pictures, **fields}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 4097}, "max_new_tokens"),
        ({"min_new_tokens": -1}, "min_new_tokens"),
        ({"max_new_tokens": 8, "min_new_tokens": 9}, "min_new_tokens"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": 5.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 6}, "repetition_penalty"),
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 9}, "num_beams"),
        ({"max_tiles": 0}, "max_tiles"),
        ({"max_tiles": 13}, "max_tiles"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"do_sample": "sometimes"}, "do_sample"),
        ({"top_k": 40}, "top_k"),
    ],
)
def test_out_of_range_generation_parameters_are_refused(
    client: TestClient, runtime: Runtime, params: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/jobs", json=job(params=params))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_params"
    assert field in problem["detail"]
    assert stored_state(runtime) == (0, 0, 0)


def test_every_guide_parameter_is_accepted_and_stored(client: TestClient) -> None:
    params = {
        "max_new_tokens": 64,
        "min_new_tokens": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "do_sample": True,
        "repetition_penalty": 1.1,
        "num_beams": 1,
        "max_tiles": 6,
        "seed": 1234,
    }
    response = client.post("/v1/jobs", json=job(params=params))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (job("prompt"), "missing_prompt"),
        (job("prompt", preset="horoscope"), "invalid_params"),
        (job("prompt", preset="product_description", prompt="Describe it."), "invalid_params"),
        (job("caption", preset="product_description"), "invalid_params"),
        (job("caption", question="Why?"), "invalid_params"),
        (job("compare", images=1), "missing_image"),
        (job("ocr", prompt="   "), "missing_prompt"),
        (job("chat", messages=[]), "missing_messages"),
        (
            job("chat", messages=[{"role": "assistant", "content": "Hi"}]),
            "invalid_messages",
        ),
        (
            job("chat", messages=[{"role": "user", "content": [{"type": "image", "image": 3}]}]),
            "invalid_messages",
        ),
        (
            job("chat", images=2, messages=[{"role": "user", "content": "no image"}]),
            "invalid_messages",
        ),
    ],
)
def test_task_fields_are_checked(
    client: TestClient, runtime: Runtime, body: dict[str, Any], code: str
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert stored_state(runtime) == (0, 0, 0)


def test_presets_are_listed_with_their_instructions(client: TestClient) -> None:
    presets = {p["name"]: p["instruction"] for p in client.get("/v1/presets").json()["presets"]}
    assert set(presets) == {
        "document_extraction",
        "product_description",
        "medical_description",
        "exercise_solving",
    }
    assert "not a diagnosis" in presets["medical_description"]
    accepted = client.post("/v1/jobs", json=job("prompt", preset="exercise_solving"))
    assert accepted.status_code == 202, accepted.text
