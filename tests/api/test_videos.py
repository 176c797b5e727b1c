"""Video jobs at the API: the clip by upload, stored id or URL; cheap container checks before
anything is stored; hostile files refused with a clear 4xx and nothing left behind."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import Runtime
from core.config import Settings
from core.models import Job
from core.storage import image_key, sha256_hex
from tests.support.api import b64, png_bytes, stored_state
from tests.support.image_server import CLIP, ImageHandler
from tests.support.videos import (
    audio_only_mp4,
    clip_with_zip,
    jpeg_with_clip,
    make_clip,
    mp4_header_on_matroska,
    truncated,
    with_frame_count,
)

MP4 = make_clip("mp4")


def video_job(clip: bytes | None = None, **video: Any) -> dict[str, Any]:
    if clip is not None:
        video["data"] = b64(clip)
    return {"task": "video", "video": video}


def submit(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/v1/jobs", json=body)


def app_client(settings: Settings, **changes: object) -> tuple[TestClient, Runtime]:
    runtime = Runtime.from_settings(settings.model_copy(update=changes))
    return TestClient(create_app(runtime=runtime)), runtime


@pytest.fixture
def clip_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("container", ["mp4", "mov", "webm", "mkv", "avi"])
def test_each_container_is_accepted_and_stored_once(
    client: TestClient, runtime: Runtime, container: str
) -> None:
    clip = make_clip(container)
    first = submit(client, video_job(clip, num_frames=4))
    second = submit(client, video_job(clip))
    assert (first.status_code, second.status_code) == (202, 202), first.text
    assert first.json()["task"] == "video"
    assert runtime.storage.get(image_key(sha256_hex(clip))) == clip
    assert stored_state(runtime) == (2, 1, 1)


def test_the_stored_spec_names_the_clip_its_sampling_and_one_tile_per_frame(
    client: TestClient, runtime: Runtime
) -> None:
    body = {**video_job(MP4, num_frames=6, fps=2.0), "question": "Where does the square go?"}
    job_id = submit(client, body).json()["id"]
    with runtime.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        spec = job.spec
    assert spec["video"] == {"sha256": sha256_hex(MP4), "num_frames": 6, "fps": 2.0}
    assert spec["images"] == [] and spec["params"]["max_tiles"] == 1
    assert spec["question"] == "Where does the square go?"


def test_multipart_video_file(client: TestClient, runtime: Runtime) -> None:
    response = client.post(
        "/v1/jobs",
        data={"spec": '{"task": "video", "video": {"num_frames": 4}}'},
        files={"video": ("clip.webm", make_clip("webm"), "video/webm")},
    )
    assert response.status_code == 202, response.text
    assert stored_state(runtime) == (1, 1, 1)


def test_a_multipart_video_file_alone_is_sampled_with_the_defaults(
    client: TestClient, runtime: Runtime
) -> None:
    response = client.post(
        "/v1/jobs",
        data={"spec": '{"task": "video", "question": "What moves?"}'},
        files={"video": ("clip.mp4", MP4, "video/mp4")},
    )
    assert response.status_code == 202, response.text
    with runtime.sessions() as session:
        job = session.get(Job, response.json()["id"])
        assert job is not None
        assert job.spec["video"] == {"sha256": sha256_hex(MP4), "num_frames": 8, "fps": None}


def test_a_batch_carries_video_jobs(client: TestClient, runtime: Runtime) -> None:
    jobs = [video_job(MP4, num_frames=4), {**video_job(make_clip("avi")), "custom_id": "b"}]
    response = client.post("/v1/batches", json={"jobs": jobs})
    assert response.status_code == 202, response.text
    assert stored_state(runtime) == (2, 2, 2)
    refused = client.post("/v1/batches", json={"jobs": [video_job(truncated(MP4))]})
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid_video")
    assert refused.json()["job_index"] == 0
    assert stored_state(runtime) == (2, 2, 2)


def test_multipart_video_needs_the_video_task(client: TestClient, runtime: Runtime) -> None:
    response = client.post(
        "/v1/jobs",
        data={"spec": '{"task": "caption"}'},
        files={"video": ("clip.mp4", MP4, "video/mp4")},
    )
    assert response.status_code == 422
    assert stored_state(runtime) == (0, 0, 0)


def test_uploaded_video_is_reused_by_id(client: TestClient, runtime: Runtime) -> None:
    uploaded = client.post("/v1/videos", content=MP4, headers={"content-type": "video/mp4"})
    again = client.post("/v1/videos", files={"video": ("clip.mp4", MP4, "video/mp4")})
    assert (uploaded.status_code, again.status_code) == (201, 200), uploaded.text
    video = uploaded.json()
    assert video == {
        "video_id": f"sha256:{sha256_hex(MP4)}",
        "object": "video",
        "format": "MP4",
        "width": 64,
        "height": 48,
        "bytes": len(MP4),
    }
    assert client.get(f"/v1/videos/{video['video_id']}").json() == video
    assert submit(client, video_job(video_id=video["video_id"])).status_code == 202
    assert stored_state(runtime) == (1, 1, 1)


def test_images_and_videos_do_not_stand_in_for_each_other(client: TestClient) -> None:
    video_id = client.post("/v1/videos", content=MP4).json()["video_id"]
    image_id = client.post("/v1/images", content=png_bytes()).json()["image_id"]
    as_image = submit(client, {"task": "caption", "images": [{"image_id": video_id}]})
    as_video = submit(client, video_job(video_id=image_id))
    assert as_image.json()["code"] == "image_not_found"
    assert as_video.json()["code"] == "video_not_found"
    assert client.get(f"/v1/images/{video_id}").status_code == 404
    assert client.get(f"/v1/videos/{image_id}").status_code == 404
    assert client.post("/v1/videos", content=png_bytes()).status_code == 415


def test_a_video_url_is_fetched_through_the_guard(
    service_settings: Settings, clip_server: str
) -> None:
    client, runtime = app_client(service_settings, image_fetch_allow_private=True)
    with client:
        response = submit(client, video_job(url=f"{clip_server}/clip.mp4"))
        small = app_client(service_settings, image_fetch_allow_private=True, max_video_bytes=1024)
        with small[0] as capped:
            too_big = submit(capped, video_job(url=f"{clip_server}/clip.mp4"))
        small[1].close()
    assert response.status_code == 202, response.text
    assert runtime.storage.get(image_key(sha256_hex(CLIP))) == CLIP
    assert (too_big.status_code, too_big.json()["code"]) == (413, "video_too_large")
    runtime.close()


def test_a_private_video_url_is_refused(client: TestClient, runtime: Runtime) -> None:
    response = submit(client, video_job(url="http://127.0.0.1:9/clip.mp4"))
    assert (response.status_code, response.json()["code"]) == (422, "invalid_image_url")
    assert "the video" in response.json()["detail"]
    assert stored_state(runtime) == (0, 0, 0)


def _hostile() -> dict[str, tuple[bytes, int, str]]:
    mkv = make_clip("mkv")
    return {
        "empty": (b"", 422, "empty_video"),
        "truncated_mp4": (truncated(MP4), 422, "invalid_video"),
        "truncated_tail_mp4": (truncated(MP4, 0.97), 422, "invalid_video"),
        "truncated_webm": (truncated(make_clip("webm")), 422, "invalid_video"),
        "truncated_avi": (truncated(make_clip("avi"), 0.97), 422, "invalid_video"),
        "no_video_stream": (audio_only_mp4(), 422, "no_video_stream"),
        "absurd_frame_count": (with_frame_count(MP4, 10_000_000), 422, "video_too_many_frames"),
        "jpeg_then_mp4": (jpeg_with_clip(MP4), 415, "unsupported_video_format"),
        "mp4_then_zip": (clip_with_zip(MP4), 422, "invalid_video"),
        "webm_then_zip": (clip_with_zip(make_clip("webm")), 422, "invalid_video"),
        "mp4_header_on_matroska": (mp4_header_on_matroska(mkv), 422, "invalid_video"),
        "png": (png_bytes(), 415, "unsupported_video_format"),
        "text": (b"#EXTM3U\n#EXT-X-TARGETDURATION:1\nhttp://127.0.0.1/a.ts\n", 415, ""),
    }


HOSTILE = _hostile()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_are_refused_and_nothing_is_stored(
    client: TestClient, runtime: Runtime, name: str
) -> None:
    data, status, code = HOSTILE[name]
    for response in (
        submit(client, video_job(data)),
        client.post("/v1/videos", content=data, headers={"content-type": "video/mp4"}),
    ):
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == (code or "unsupported_video_format")
    assert stored_state(runtime) == (0, 0, 0)


LIMITS: list[tuple[str, dict[str, Any], Callable[[], bytes], int, str]] = [
    ("bytes", {"max_video_bytes": 2048}, lambda: MP4, 413, "video_too_large"),
    ("duration", {"max_video_duration_s": 1.0}, lambda: MP4, 422, "video_too_long"),
    ("frame size", {"max_video_frame_pixels": 1024}, lambda: MP4, 413, "video_frame_too_large"),
    ("frames", {"max_video_frames": 20}, lambda: make_clip("webm"), 422, "video_too_many_frames"),
    (
        "streams",
        {"max_video_streams": 1},
        lambda: make_clip("mkv", extra_video_streams=1),
        422,
        "too_many_streams",
    ),
]


@pytest.mark.parametrize(("name", "changes", "clip", "status", "code"), LIMITS)
def test_limits_come_from_the_settings(
    service_settings: Settings,
    name: str,
    changes: dict[str, Any],
    clip: Callable[[], bytes],
    status: int,
    code: str,
) -> None:
    client, runtime = app_client(service_settings, **changes)
    with client:
        response = submit(client, video_job(clip()))
    assert (response.status_code, response.json()["code"]) == (status, code), name
    assert stored_state(runtime) == (0, 0, 0)
    runtime.close()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"task": "video"}, "missing_video"),
        ({"task": "video", "video": {"num_frames": 4}}, "missing_video"),
        ({"task": "caption", "video": {"data": b64(MP4)}}, "invalid_params"),
        ({**video_job(MP4), "images": [{"data": b64(png_bytes())}]}, "invalid_params"),
        (video_job(MP4, num_frames=33), "invalid_params"),
        ({**video_job(MP4), "question": "  "}, "missing_question"),
        ({**video_job(MP4), "question": "Why?", "prompt": "Say."}, "invalid_params"),
        ({"task": "video", "video": {"data": b64(MP4), "url": "https://x.test/a.mp4"}}, ""),
        (video_job(MP4, fps=0), ""),
    ],
)
def test_bad_video_requests_are_422(
    client: TestClient, runtime: Runtime, body: dict[str, Any], code: str
) -> None:
    response = submit(client, body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == (code or "invalid_params")
    assert stored_state(runtime) == (0, 0, 0)


def test_a_video_jobs_tiles_are_checked_at_submit(service_settings: Settings) -> None:
    # num_frames x tiles per frame (params.max_tiles, default 1, plus a thumbnail when over 1).
    client, runtime = app_client(service_settings, max_tiles_per_job=24)
    with client:
        one_each = submit(client, video_job(MP4, num_frames=24))
        three_each = submit(client, video_job(MP4, num_frames=8) | {"params": {"max_tiles": 2}})
        over = submit(client, video_job(MP4, num_frames=9) | {"params": {"max_tiles": 2}})
    assert (one_each.status_code, three_each.status_code) == (202, 202), one_each.text
    assert (over.status_code, over.json()["code"]) == (422, "too_many_tiles")
    assert "27 tiles" in over.json()["detail"]
    runtime.close()


def test_an_idempotency_key_covers_the_multipart_video(client: TestClient) -> None:
    def send(clip: bytes) -> Any:
        return client.post(
            "/v1/jobs",
            data={"spec": '{"task": "video"}'},
            files={"video": ("clip.mp4", clip, "video/mp4")},
            headers={"Idempotency-Key": "video-1"},
        )

    first, replay, other = send(MP4), send(MP4), send(make_clip("mp4", seconds=1.0))
    assert (first.status_code, replay.status_code) == (202, 202), first.text
    assert replay.json()["id"] == first.json()["id"]
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_key_reused")
