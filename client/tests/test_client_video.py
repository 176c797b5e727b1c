"""Video jobs through the client: a clip as a path, bytes, a video id or video_ref(...)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from api.deps import Runtime
from core.models import Job as JobRow
from core.storage import sha256_hex
from internvl_jobs_client import (
    AsyncClient,
    Client,
    InvalidRequestError,
    NotFoundError,
    Usage,
    video_ref,
)
from tests.support.videos import make_clip

CLIP = make_clip("mp4", seconds=1.0, fps=8)


def stored_video(runtime: Runtime, job_id: str) -> dict[str, Any]:
    with runtime.sessions() as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        return dict(job.spec["video"])


def test_submit_a_video_file_by_path_with_its_sampling(
    api_url: str, runtime: Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(CLIP)
    with Client(api_url) as client:
        plain = client.submit("video", video=path, question="Where does it go?")
        sampled = client.submit("video", video=video_ref(path, num_frames=4, fps=2.0))
    assert (plain.status, plain.task) == ("queued", "video")
    assert stored_video(runtime, plain.id) == {
        "sha256": sha256_hex(CLIP),
        "num_frames": 8,
        "fps": None,
    }
    assert stored_video(runtime, sampled.id) == {
        "sha256": sha256_hex(CLIP),
        "num_frames": 4,
        "fps": 2.0,
    }


def test_upload_a_video_once_and_submit_it_by_id(api_url: str, runtime: Runtime) -> None:
    with Client(api_url) as client:
        video = client.upload_video(CLIP)
        assert (video.format, video.width, video.height, video.bytes) == ("MP4", 64, 48, len(CLIP))
        assert client.upload_video(CLIP).video_id == video.video_id
        assert client.get_video(video.video_id) == video
        job = client.submit("video", video=video.video_id)
        with pytest.raises(NotFoundError):
            client.get_video("sha256:" + "0" * 64)
        with pytest.raises(InvalidRequestError) as refused:
            client.submit("video", video=CLIP[: len(CLIP) // 2])
    assert stored_video(runtime, job.id)["sha256"] == video.video_id.removeprefix("sha256:")
    assert refused.value.code == "invalid_video"


def test_video_ref_names_each_source() -> None:
    assert video_ref("sha256:" + "a" * 64, num_frames=3) == {
        "video_id": "sha256:" + "a" * 64,
        "num_frames": 3,
    }
    assert video_ref("https://example.com/a.mp4", fps=1.5) == {
        "url": "https://example.com/a.mp4",
        "fps": 1.5,
    }
    assert set(video_ref(b"\x00\x01")) == {"data"}


def test_usage_reports_a_video_jobs_frames() -> None:
    usage = Usage.from_dict({"image_tiles": [1, 1], "frames": 2, "frame_indices": [3, 9]})
    assert usage is not None
    assert (usage.frames, usage.frame_indices, usage.image_tiles) == (2, [3, 9], [1, 1])
    image_usage = Usage.from_dict({"image_tiles": [13]})
    assert image_usage is not None and image_usage.frames is None


def test_async_client_uploads_and_submits_videos(api_url: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(api_url) as client:
            video = await client.upload_video(CLIP)
            assert (await client.get_video(video.video_id)).format == "MP4"
            job = await client.submit("video", video=video_ref(video.video_id, num_frames=2))
            assert job.task == "video"

    asyncio.run(scenario())
