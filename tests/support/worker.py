"""Inputs for worker tests: photos, queued jobs as the API stores them, prepared VQA jobs."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from core.config import ModelSpec
from core.db import transaction
from core.jobs import insert_job, new_job
from core.models import Job
from core.prompts import build_conversation
from core.specs import GenerationParams
from core.storage import ObjectStorage, store_once
from core.tenants import ensure_default_tenant
from worker.engine import InternVLEngine, PreparedJob


def photo(seed: int = 0, size: tuple[int, int] = (160, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40 + seed).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def queue_job(
    sessions: Any,
    storage: ObjectStorage,
    model: ModelSpec,
    images: list[bytes],
    *,
    task: str = "caption",
    **fields: Any,
) -> Job:
    """Store the images and insert a queued job, as the API would."""
    shas = [store_once(storage, data, content_type="image/jpeg")[0] for data in images]
    params = fields.pop("params", {})
    spec = {
        "task": task,
        "images": shas,
        "params": GenerationParams(**params).model_dump(),
        **fields,
    }
    with transaction(sessions) as session:
        tenant = ensure_default_tenant(session)
        return insert_job(
            session,
            new_job(tenant_id=tenant.id, model=model, spec=spec, max_attempts=3),
            image_shas=shas,
        )


QUESTIONS = [
    "Describe the image.",
    "What is in this picture? Answer in one sentence.",
    "这是什么？",
    "Count the people.",
    "Read the text.",
    "What colour is the car on the left, and where is it going?",
]


SIZES = [(640, 480), (100, 100), (300, 120), (64, 900), (200, 200), (90, 300)]


def noise(seed: int, size: tuple[int, int]) -> Image.Image:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def vqa(
    engine: InternVLEngine, index: int, params: GenerationParams, job_id: str = ""
) -> PreparedJob:
    spec = {"task": "vqa", "question": QUESTIONS[index % 6], "images": ["image"]}
    conversation = build_conversation(spec, control_tokens=engine.control_tokens)
    image = noise(index, SIZES[index % 6])
    return engine.prepare(job_id or f"job-{index}", conversation, [image], params)
