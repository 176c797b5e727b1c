"""Every job type through HTTP to a worker process, checked against the engine run in-process.

Each job's prompt is rebuilt here independently, with the guide's instructions, and run through
the tiny model in this process: the worker's answer, prompt length and tiles must match it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import ModelSpec, Settings
from core.images import load_rgb
from core.specs import GenerationParams
from core.tiling import tile_count
from devtools.harness import free_port
from tests.support import ServiceProcess, service_env, wait_http, wait_job
from tests.support.media import CAT, COFFEE, WIDE, b64


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


IMAGE = {"type": "image"}


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


# (request sent to the API, the conversation the guide would write, the images in prompt order)
CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], list[bytes]]] = {
    "caption": (
        {"task": "caption", "images": [{"data": b64(CAT)}]},
        [user(IMAGE, text("Please describe this image in detail."))],
        [CAT],
    ),
    "caption_prompt": (
        {"task": "caption", "images": [{"data": b64(CAT)}], "prompt": "One word only."},
        [user(IMAGE, text("One word only."))],
        [CAT],
    ),
    "vqa": (
        {"task": "vqa", "images": [{"data": b64(COFFEE)}], "question": "How many cups?"},
        [user(IMAGE, text("How many cups?"))],
        [COFFEE],
    ),
    "ocr": (
        {"task": "ocr", "images": [{"data": b64(WIDE)}]},
        [user(IMAGE, text("Please extract all text from this image and organize it."))],
        [WIDE],
    ),
    "compare": (
        {"task": "compare", "images": [{"data": b64(CAT)}, {"data": b64(COFFEE)}]},
        [
            user(
                IMAGE,
                IMAGE,
                text("Compare these two images. Describe their similarities and differences."),
            )
        ],
        [CAT, COFFEE],
    ),
    "compare_three": (
        {"task": "compare", "images": [{"data": b64(d)} for d in (CAT, COFFEE, WIDE)]},
        [
            user(
                IMAGE,
                IMAGE,
                IMAGE,
                text("Compare these images. Describe their similarities and differences."),
            )
        ],
        [CAT, COFFEE, WIDE],
    ),
    "chat": (
        {
            "task": "chat",
            "images": [{"data": b64(CAT)}],
            "messages": [
                {"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": [{"type": "image", "image": 0}, text("What is this?")]},
                {"role": "assistant", "content": [text("A cat on a sofa.")]},
                {
                    "role": "user",
                    "content": [
                        text("And this one?"),
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/jpeg;base64," + b64(COFFEE)},
                        },
                    ],
                },
            ],
        },
        [
            {"role": "system", "content": [text("You are a careful assistant.")]},
            user(IMAGE, text("What is this?")),
            {"role": "assistant", "content": [text("A cat on a sofa.")]},
            user(text("And this one?"), IMAGE),
        ],
        [CAT, COFFEE],
    ),
    "prompt_preset": (
        {"task": "prompt", "images": [{"data": b64(WIDE)}], "preset": "document_extraction"},
        [
            user(
                IMAGE,
                text(
                    "This is a document. Extract all of its text, state the document type, "
                    "list the key fields with their values, and give a short summary."
                ),
            )
        ],
        [WIDE],
    ),
    "prompt_free": (
        {"task": "prompt", "images": [{"data": b64(COFFEE)}], "prompt": "Solve the exercise."},
        [user(IMAGE, text("Solve the exercise."))],
        [COFFEE],
    ),
    "caption_two_tiles": (
        {"task": "caption", "images": [{"data": b64(CAT)}], "params": {"max_tiles": 2}},
        [user(IMAGE, text("Please describe this image in detail."))],
        [CAT],
    ),
}


@pytest.fixture(scope="module")
def in_process(tiny_model_path: Path) -> Any:
    from worker.engine import InternVLEngine

    spec = ModelSpec(alias="tiny", checkpoint=str(tiny_model_path), tile_size=64)
    return InternVLEngine(spec, device="cpu")


def expected_answer(
    engine: Any, messages: list[dict[str, Any]], images: list[bytes], **params: Any
) -> Any:
    """What the tiny model answers to this conversation, run here without the service."""
    from core.prompts import Conversation

    conversation = Conversation(messages, list(range(len(images))))
    prepared = engine.prepare(
        "expected", conversation, [load_rgb(data) for data in images], GenerationParams(**params)
    )
    return prepared, engine.generate([prepared])[0]


def test_every_job_type_runs_through_the_api(
    service_settings: Settings, tmp_path: Path, in_process: Any
) -> None:
    port = free_port()
    env = service_env(service_settings)
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "worker.log")
    with api, worker, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_http(f"http://127.0.0.1:{port}/readyz", process=api)
        submitted = {}
        for name, (request, _, _) in CASES.items():
            body = {**request, "params": {"max_new_tokens": 10, **request.get("params", {})}}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, (name, response.text)
            submitted[name] = response.json()["id"]
        finished = {
            name: wait_job(client, job_id, timeout=180) for name, job_id in submitted.items()
        }
    for name, job in finished.items():
        assert job["status"] == "succeeded", (name, job, worker.log()[-3000:])
        _, messages, images = CASES[name]
        max_tiles = CASES[name][0].get("params", {}).get("max_tiles", 12)
        prepared, answer = expected_answer(
            in_process, messages, images, max_new_tokens=10, max_tiles=max_tiles
        )
        tiles = [tile_count(*load_rgb(d).size, tile_size=64, max_tiles=max_tiles) for d in images]
        assert job["usage"]["image_tiles"] == tiles == prepared.image_tiles, name
        assert job["usage"]["prompt_tokens"] == prepared.prompt_tokens, name
        assert job["result"]["text"] == answer.text and answer.text, name
        assert job["usage"]["completion_tokens"] == answer.completion_tokens, name
    assert finished["caption_two_tiles"]["usage"]["image_tiles"] == [3]


def test_sampled_jobs_reproduce_with_their_seed(service_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = service_env(service_settings)
    api = ServiceProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    worker = ServiceProcess(["worker", "--devices", "cpu"], env, tmp_path / "worker.log")
    sampling = {"max_new_tokens": 12, "do_sample": True, "temperature": 1.5, "top_p": 0.95}
    seeds = [7, 7, 8, None]
    with api, worker, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_http(f"http://127.0.0.1:{port}/readyz", process=api)
        ids = []
        for seed in seeds:
            params = {**sampling, **({"seed": seed} if seed is not None else {})}
            body = {"task": "caption", "images": [{"data": b64(CAT)}], "params": params}
            ids.append(client.post("/v1/jobs", json=body).json()["id"])
        jobs = [wait_job(client, job_id, timeout=180) for job_id in ids]
        drawn = jobs[3]["result"]["seed"]
        body = {
            "task": "caption",
            "images": [{"data": b64(CAT)}],
            "params": {**sampling, "seed": drawn},
        }
        replay = wait_job(client, client.post("/v1/jobs", json=body).json()["id"], timeout=180)
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, worker.log()[-3000:]
    texts = [job["result"]["text"] for job in jobs]
    assert texts[0] == texts[1] and texts[0] != texts[2]
    assert [job["result"]["seed"] for job in jobs[:3]] == [7, 7, 8]
    assert replay["result"]["text"] == texts[3]
