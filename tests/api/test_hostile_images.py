"""Every file of the hostile corpus is refused with its 4xx code, and nothing is stored."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.deps import Runtime
from api.problems import http_status
from core.errors import InvalidImage
from core.images import ImageLimits, inspect_image
from tests.api.hostile_images import CORPUS
from tests.support.api import b64, stored_state

CASES = [pytest.param(data, status, code, id=name) for name, data, status, code in CORPUS]


@pytest.mark.parametrize(("data", "status", "code"), CASES)
def test_inspection_refuses_with_the_right_code(data: bytes, status: int, code: str) -> None:
    with pytest.raises(InvalidImage) as caught:
        inspect_image(data, limits=ImageLimits(max_bytes=20 << 20, max_pixels=40_000_000))
    assert (http_status(caught.value), caught.value.code) == (status, code)


@pytest.mark.parametrize(("data", "status", "code"), CASES)
def test_jobs_refuse_hostile_images_and_store_nothing(
    client: TestClient, runtime: Runtime, data: bytes, status: int, code: str
) -> None:
    response = client.post("/v1/jobs", json={"task": "caption", "images": [{"data": b64(data)}]})
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert stored_state(runtime) == (0, 0, 0)


@pytest.mark.parametrize(("data", "status", "code"), CASES)
def test_uploads_refuse_hostile_images_and_store_nothing(
    client: TestClient, runtime: Runtime, data: bytes, status: int, code: str
) -> None:
    response = client.post(
        "/v1/images", content=data, headers={"content-type": "application/octet-stream"}
    )
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert stored_state(runtime) == (0, 0, 0)


def test_a_hostile_image_among_good_ones_refuses_the_job(
    client: TestClient, runtime: Runtime
) -> None:
    from tests.support.api import png_bytes

    images = [{"data": b64(png_bytes())}, {"data": b64(CORPUS[1][1])}]
    response = client.post("/v1/jobs", json={"task": "compare", "images": images})
    assert response.status_code == 413
    assert stored_state(runtime) == (0, 0, 0)
