"""What the trained tiny InternVL says about pictures, through the API and a worker process.

The pictures are drawn with seeds its training never used; the answers are the short phrases
it was taught. Only the kinds of question it answers reliably are asked (tests/support/
seeing.py's RELIABLE: at least 0.95 of held-out pictures right). A right answer needs the right
pixels, in the right order and normalisation, to reach the model with the service's own
prompts: jobs, a JSONL batch, multi-image compare and chat jobs, and video jobs whose frames the
worker decodes from a clip (which way a shape moves: the frames must arrive in order).
(tests/cli/test_submit.py checks the demo's picture and answer in dev mode.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import ModelSpec, Settings
from tests.support import ServiceProcess, free_port, service_env, wait_http, wait_job
from tests.support.media import b64
from tests.support.seeing import RELIABLE, motion_clip, shapes_png, word_png

COLOUR, SHAPE, COUNT, MOTION = (
    "What colour is the shape?",
    "What shape is it?",
    "How many shapes are there?",
    "Which way does the shape move?",
)


def images(*pictures: bytes) -> list[dict[str, str]]:
    return [{"data": b64(picture)} for picture in pictures]


def vqa(picture: bytes, question: str) -> dict[str, Any]:
    return {"task": "vqa", "images": images(picture), "question": question}


def video(clip: bytes) -> dict[str, Any]:
    # 4 of the clip's 7 frames: 0, 2, 4 and 6 (tests/support/seeing.py's MOTION_FRAMES)
    return {"task": "video", "video": {"data": b64(clip), "num_frames": 4}, "question": MOTION}


def chat(picture: bytes, question: str) -> dict[str, Any]:
    content = [{"type": "image", "image": 0}, {"type": "text", "text": question}]
    return {
        "task": "chat",
        "images": images(picture),
        "messages": [{"role": "user", "content": content}],
    }


RED_CIRCLE = shapes_png("red", "circle", seed=1)
BLUE_SQUARE = shapes_png("blue", "square", seed=2)
GREEN_TRIANGLES = shapes_png("green", "triangle", 3, seed=3)
YELLOW_SQUARES = shapes_png("yellow", "square", 2, seed=4)

# name: (kind of example, job request, the answer the model gives)
JOBS: dict[str, tuple[str, dict[str, Any], str]] = {
    "caption": ("caption", {"task": "caption", "images": images(RED_CIRCLE)}, "a red circle"),
    "caption_count": (
        "caption",
        {"task": "caption", "images": images(GREEN_TRIANGLES)},
        "3 green triangles",
    ),
    "colour": ("colour", vqa(BLUE_SQUARE, COLOUR), "blue"),
    "shape": ("shape", vqa(GREEN_TRIANGLES, SHAPE), "triangle"),
    "count": ("count", vqa(YELLOW_SQUARES, COUNT), "2"),
    "ocr_stop": ("ocr", {"task": "ocr", "images": images(word_png("STOP", seed=5))}, "STOP"),
    "ocr_exit": ("ocr", {"task": "ocr", "images": images(word_png("EXIT", seed=6))}, "EXIT"),
    "compare": (
        "compare",
        {"task": "compare", "images": images(RED_CIRCLE, BLUE_SQUARE)},
        "a red circle, a blue square",
    ),
    "compare_odd_one": (
        "odd_one",
        {"task": "compare", "images": images(RED_CIRCLE, BLUE_SQUARE, RED_CIRCLE)},
        "image 2 differs",
    ),
    "compare_odd_one_last": (
        "odd_one",
        {"task": "compare", "images": images(BLUE_SQUARE, BLUE_SQUARE, RED_CIRCLE)},
        "image 3 differs",
    ),
    "chat": ("colour", chat(YELLOW_SQUARES, COLOUR), "yellow"),
    "chat_count": ("count", chat(GREEN_TRIANGLES, COUNT), "3"),
    "video_right": ("motion", video(motion_clip("red", "circle", "right", seed=13)), "right"),
    "video_up": ("motion", video(motion_clip("blue", "triangle", "up", seed=14)), "up"),
    "video_left": ("motion", video(motion_clip("yellow", "square", "left", seed=15)), "left"),
}

# A JSONL batch: (kind, custom_id, job request, answer)
BATCH = [
    ("colour", "red", vqa(shapes_png("red", "triangle", 2, seed=7), COLOUR), "red"),
    ("colour", "green", vqa(shapes_png("green", "circle", 1, seed=8), COLOUR), "green"),
    ("colour", "yellow", vqa(shapes_png("yellow", "square", 4, seed=12), COLOUR), "yellow"),
    ("count", "four", vqa(shapes_png("blue", "circle", 4, seed=9), COUNT), "4"),
    ("count", "one", vqa(shapes_png("yellow", "triangle", 1, seed=10), COUNT), "1"),
    ("shape", "square", vqa(shapes_png("red", "square", 1, seed=11), SHAPE), "square"),
    ("ocr", "word", {"task": "ocr", "images": images(word_png("SALE", seed=16))}, "SALE"),
    (
        "caption",
        "caption",
        {"task": "caption", "images": images(shapes_png("blue", "circle", 2, seed=17))},
        "2 blue circles",
    ),
]


@pytest.fixture
def seeing_settings(service_settings: Settings, seeing_model_path: Path) -> Settings:
    spec = ModelSpec(
        alias="tiny-seeing", checkpoint=str(seeing_model_path), default=True, tile_size=64
    )
    return service_settings.model_copy(update={"models": [spec]})


def test_the_model_says_what_the_pictures_show(seeing_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(seeing_settings)
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "worker.log")
    with api, worker, httpx.Client(base_url=base, timeout=30) as client:
        wait_http(f"{base}/readyz", process=api)
        ids = {}
        for name, (kind, request, _) in JOBS.items():
            if kind not in RELIABLE:
                continue
            response = client.post("/v1/jobs", json={**request, "params": {"max_new_tokens": 24}})
            assert response.status_code == 202, (name, response.text)
            ids[name] = response.json()["id"]
        lines = [
            {**request, "custom_id": custom_id, "params": {"max_new_tokens": 24}}
            for kind, custom_id, request, _ in BATCH
            if kind in RELIABLE
        ]
        batch = client.post(
            "/v1/batches",
            content=b"".join(json.dumps(line).encode() + b"\n" for line in lines),
            headers={"content-type": "application/jsonl"},
        )
        assert batch.status_code == 202, batch.text
        jobs = {name: wait_job(client, job_id, timeout=240) for name, job_id in ids.items()}
        batch_jobs = client.get("/v1/jobs", params={"batch_id": batch.json()["id"]}).json()
        for job in batch_jobs["data"]:
            jobs[f"batch:{job['custom_id']}"] = wait_job(client, job["id"], timeout=240)
    said = {name: job["result"]["text"] if job["result"] else job for name, job in jobs.items()}
    expected = {name: answer for name, (kind, _, answer) in JOBS.items() if kind in RELIABLE}
    expected |= {f"batch:{cid}": answer for kind, cid, _, answer in BATCH if kind in RELIABLE}
    assert "chat" in expected and len(lines) > 1  # a chat job and a batch at the least
    assert said == expected, worker.log()[-3000:]
