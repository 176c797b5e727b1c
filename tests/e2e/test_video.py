"""Video jobs through HTTP to a worker process on the tiny model, checked against the engine
run in this process on the same frames with InternVL's video prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import ModelSpec, Settings
from core.prompts import video_conversation
from core.specs import GenerationParams
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env, wait_http, wait_job
from tests.support.media import b64
from tests.support.videos import make_clip
from worker.video import sample_frames

CLIP = make_clip("mp4", seconds=2.0, fps=12)  # 24 frames
WEBM = make_clip("webm", seconds=1.0, fps=10)


@pytest.fixture(scope="module")
def in_process(tiny_model_path: Path) -> Any:
    from worker.engine import InternVLEngine

    spec = ModelSpec(alias="tiny", checkpoint=str(tiny_model_path), tile_size=64)
    return InternVLEngine(spec, device="cpu")


def expected(engine: Any, clip: bytes, instruction: str, **sampling: Any) -> Any:
    indices, frames = sample_frames(clip, **sampling)
    conversation = video_conversation(instruction, len(frames))
    params = GenerationParams(max_new_tokens=8, max_tiles=1)
    prepared = engine.prepare("expected", conversation, frames, params)
    return indices, prepared, engine.generate([prepared])[0]


# Where the worker runs its model: in its own process with the task threads preparing (the
# default on small hosts), or in a model process beside a prepare process, where a video's
# frames cross from the prepare process through the worker to the model process.
PLACEMENTS = {
    "in-process": {},
    "model-process": {"INTERNVL_JOBS_MODEL_PROCESS": "on", "INTERNVL_JOBS_PREPARE_PROCESSES": "1"},
}


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_video_jobs_run_through_the_api(
    service_settings: Settings, tmp_path: Path, in_process: Any, placement: str
) -> None:
    port = free_port()
    env = service_env(service_settings, **PLACEMENTS[placement])
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "worker.log")
    params = {"max_new_tokens": 8}
    with api, worker, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_http(f"http://127.0.0.1:{port}/readyz", process=api)
        inline = client.post(
            "/v1/jobs",
            json={
                "task": "video",
                "video": {"data": b64(CLIP), "num_frames": 6},
                "question": "Where does the square go?",
                "params": params,
            },
        )
        video_id = client.post("/v1/videos", content=WEBM).json()["video_id"]
        stored = client.post(
            "/v1/jobs",
            json={"task": "video", "video": {"video_id": video_id, "fps": 4}, "params": params},
        )
        assert (inline.status_code, stored.status_code) == (202, 202), inline.text
        jobs = [wait_job(client, r.json()["id"], timeout=180) for r in (inline, stored)]
    for job in jobs:
        assert job["status"] == "succeeded", (job, worker.log()[-3000:])
    cases = [
        (CLIP, "Where does the square go?", {"num_frames": 6, "fps": None}),
        (WEBM, "Describe this video in detail.", {"num_frames": 8, "fps": 4.0}),
    ]
    for job, (clip, instruction, sampling) in zip(jobs, cases, strict=True):
        indices, prepared, answer = expected(in_process, clip, instruction, **sampling)
        usage = job["usage"]
        assert usage["frames"] == len(indices) and usage["frame_indices"] == indices
        assert usage["image_tiles"] == [1] * len(indices) == prepared.image_tiles
        assert usage["prompt_tokens"] == prepared.prompt_tokens
        assert job["result"]["text"] == answer.text
    assert jobs[0]["usage"]["frame_indices"] == [2, 6, 10, 14, 18, 22]
    assert jobs[1]["usage"]["frame_indices"] == [0, 2, 5, 8]  # 4 fps over 1 s at 10 fps
