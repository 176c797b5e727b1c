"""POST /v1/images: content-addressed, deduplicated uploads that jobs reference by image_id."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import api.uploads
from api.deps import Runtime
from core.db import transaction
from core.errors import Unavailable
from core.models import Image as ImageRow
from core.storage import ObjectStorage, image_key, sha256_hex, store_once
from core.tenants import ensure_tenant
from core.tiling import tile_count
from tests.support.api import make_key, png_bytes, stored_state


def upload(client: TestClient, data: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        "/v1/images", content=data, headers={"content-type": "image/png", **(headers or {})}
    )


def test_upload_returns_id_size_format_and_tiles(client: TestClient) -> None:
    data = png_bytes((640, 480))
    response = upload(client, data)
    assert response.status_code == 201, response.text
    image = response.json()
    assert image["image_id"] == f"sha256:{sha256_hex(data)}"
    assert (image["format"], image["width"], image["height"]) == ("PNG", 640, 480)
    assert image["bytes"] == len(data)
    assert image["tiles"] == tile_count(640, 480, tile_size=64, max_tiles=12)


def test_same_bytes_give_the_same_id_and_are_stored_once(
    client: TestClient, runtime: Runtime
) -> None:
    data = png_bytes()
    first, again = upload(client, data), upload(client, data)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["image_id"] == again.json()["image_id"]
    assert stored_state(runtime) == (0, 1, 1)


def test_multipart_upload(client: TestClient) -> None:
    response = client.post("/v1/images", files={"image": ("cat.png", png_bytes(), "image/png")})
    assert response.status_code == 201
    assert response.json()["format"] == "PNG"


def test_jobs_reuse_an_uploaded_image(client: TestClient, runtime: Runtime) -> None:
    image_id = upload(client, png_bytes()).json()["image_id"]
    body = {"task": "vqa", "question": "What colour?", "images": [{"image_id": image_id}]}
    first = client.post("/v1/jobs", json=body)
    second = client.post("/v1/jobs", json=body)
    assert (first.status_code, second.status_code) == (202, 202)
    assert stored_state(runtime) == (2, 1, 1)


def test_chat_turns_refer_to_the_same_image(client: TestClient) -> None:
    image_id = upload(client, png_bytes()).json()["image_id"]
    turn = {
        "role": "user",
        "content": [{"type": "image", "image": 0}, {"type": "text", "text": "Hi"}],
    }
    body = {
        "task": "chat",
        "images": [{"image_id": image_id}],
        "messages": [
            turn,
            {"role": "assistant", "content": "A red square."},
            {"role": "user", "content": "Is it bright?"},
        ],
    }
    assert client.post("/v1/jobs", json=body).status_code == 202


def test_get_image_shows_its_metadata(client: TestClient) -> None:
    image_id = upload(client, png_bytes((100, 50))).json()["image_id"]
    image = client.get(f"/v1/images/{image_id}").json()
    assert (image["width"], image["height"]) == (100, 50)


def test_another_tenant_cannot_see_or_use_an_image(
    auth_client: TestClient, auth_runtime: Runtime
) -> None:
    owner, stranger = make_key(auth_runtime, "acme"), make_key(auth_runtime, "globex")
    image_id = upload(auth_client, png_bytes(), headers=owner).json()["image_id"]
    assert auth_client.get(f"/v1/images/{image_id}", headers=stranger).status_code == 404
    body = {"task": "caption", "images": [{"image_id": image_id}]}
    refused = auth_client.post("/v1/jobs", json=body, headers=stranger)
    assert refused.status_code == 422
    assert refused.json()["code"] == "image_not_found"


def test_exif_rotated_photo_reports_its_displayed_size(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (400, 100), (0, 0, 255)).save(buffer, format="JPEG", exif=exif)
    image = client.post(
        "/v1/images", content=buffer.getvalue(), headers={"content-type": "image/jpeg"}
    ).json()
    assert (image["width"], image["height"]) == (100, 400)
    assert image["tiles"] == tile_count(100, 400, tile_size=64, max_tiles=12)


def test_an_image_over_the_byte_cap_is_413(client: TestClient, runtime: Runtime) -> None:
    runtime.settings = runtime.settings.model_copy(update={"max_image_bytes": 2048})
    response = upload(client, png_bytes() + b"\0" * 4096)
    assert response.status_code == 413
    assert response.json()["code"] == "image_too_large"
    assert stored_state(runtime) == (0, 0, 0)


def test_text_sent_as_an_image_is_415(client: TestClient, runtime: Runtime) -> None:
    response = upload(client, b"<html><script>alert(1)</script></html>")
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_image_format"
    assert stored_state(runtime) == (0, 0, 0)


def test_a_json_body_is_an_unsupported_media_type(client: TestClient) -> None:
    response = client.post("/v1/images", json={"data": "aGVsbG8="})
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_an_upload_puts_back_bytes_retention_deleted_before_its_commit(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = png_bytes((90, 60))

    def store_then_lose(storage: ObjectStorage, data: bytes, *, content_type: str) -> Any:
        sha, stored = store_once(storage, data, content_type=content_type)
        storage.delete(image_key(sha))  # a retention pass between the upload and its commit
        return sha, stored

    monkeypatch.setattr(api.uploads, "store_once", store_then_lose)
    assert upload(client, data).status_code == 201
    assert runtime.storage.get(image_key(sha256_hex(data))) == data


def test_a_failed_upload_keeps_bytes_another_tenant_recorded_meanwhile(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = png_bytes((70, 70))
    sha = sha256_hex(data)

    def store_while_another_tenant_records(
        storage: ObjectStorage, data: bytes, *, content_type: str
    ) -> Any:
        stored = store_once(storage, data, content_type=content_type)
        with transaction(runtime.sessions) as session:  # the same bytes, uploaded by globex
            tenant_id = ensure_tenant(session, "globex").id
            session.add(
                ImageRow(
                    tenant_id=tenant_id,
                    sha256=sha,
                    format="PNG",
                    width=70,
                    height=70,
                    byte_size=len(data),
                )
            )
        return stored

    def database_lost(*_: Any) -> bool:
        raise Unavailable("the database went away", code="database_down")

    monkeypatch.setattr(api.uploads, "store_once", store_while_another_tenant_records)
    monkeypatch.setattr(api.uploads, "record_image", database_lost)
    assert upload(client, data).status_code == 503
    assert runtime.storage.get(image_key(sha)) == data  # globex's image keeps its bytes


def test_base64_with_and_without_line_breaks_decodes_and_anything_else_is_a_clear_422() -> None:
    from api.intake import decode_base64
    from core.errors import InvalidImage

    data = png_bytes((64, 48))
    plain = base64.b64encode(data).decode()
    wrapped = "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76)) + "\r\n"
    assert decode_base64(plain, index=0) == data
    assert decode_base64(wrapped, index=0) == data  # MIME-style line breaks are allowed
    for bad in ("***not base64***", plain[:-2] + "é=", plain[:-1]):
        with pytest.raises(InvalidImage) as caught:
            decode_base64(bad, index=2)
        assert caught.value.code == "invalid_base64"
        assert "image 2" in caught.value.detail


# Characters a base64 field may hold, well-formed or not: the alphabet, padding, whitespace of
# every kind the API strips, and a few that must be refused (URL-safe letters, non-ASCII).
BASE64_ISH = st.text(
    alphabet=st.sampled_from(list("AQgw+/09az=") + [" ", "\n", "\r", "\t", "\x0b", "-", "_", "é"]),
    max_size=40,
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(BASE64_ISH, st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode())))
def test_base64_is_accepted_and_refused_as_by_the_standard_library(text: str) -> None:
    from api.intake import decode_base64
    from core.errors import InvalidImage

    def standard(candidate: str) -> bytes | None:
        try:
            return base64.b64decode(candidate, validate=True)
        except (binascii.Error, ValueError):
            return None

    expected = standard(text)
    if expected is None:
        expected = standard("".join(text.split()))
    try:
        decoded: bytes | None = decode_base64(text, index=0)
    except InvalidImage:
        decoded = None
    assert decoded == expected
