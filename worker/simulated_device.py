"""A simulated accelerator for benchmarks: InternVL3-1B on an H100, timed from FLOPs and bytes.

`SimulatedEngine` prepares jobs exactly as the real engine does (the checkpoint's processor,
worker.preparer) but generates by sleeping for the time an H100 would take, so the whole
service can be run at device speed on a CPU machine and its host CPU per job measured. Sleep
releases the GIL, as a GPU kernel does while the host waits. The text it returns is a fixed
filler of the requested length; only timing and bookkeeping are real.

The cost model (documented in docs/benchmarks.md):
- prefill is compute-bound: 2 x parameters x tokens for each tower, plus attention's
  4 x layers x hidden x tokens^2 per sequence (per tile for the vision tower), at
  `peak_tflops x mfu`;
- a decode step is bandwidth-bound: the language model's weights plus the batch's KV cache
  read once, at `bandwidth_gbs x bandwidth_efficiency`, but never faster than
  `min_step_s` (kernel launches of a 24-layer model without CUDA graphs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoProcessor

from core.config import ModelSpec
from worker.engine import Generation, InternVLEngine, PreparedJob
from worker.preparer import Preparer


@dataclass(frozen=True)
class DeviceModel:
    """An accelerator's speeds, as the cost model uses them."""

    name: str
    peak_tflops: float  # dense bf16
    mfu: float  # fraction of peak a prefill reaches
    bandwidth_gbs: float  # HBM
    bandwidth_efficiency: float
    min_step_s: float  # a decode step is never faster than its kernel launches


@dataclass(frozen=True)
class ModelShape:
    """The sizes of InternVL3-1B that its cost depends on."""

    vision_params: float = 0.304e9  # InternViT-300M
    vision_layers: int = 24
    vision_hidden: int = 1024
    tokens_per_tile: int = 1025  # (448 / 14)^2 patches + the class token
    text_params: float = 0.494e9  # Qwen2.5-0.5B, embeddings included
    lm_head_params: float = 0.136e9  # untied in the -hf checkpoint: read every step
    embedding_params: float = 0.136e9  # gathered, not read, in a decode step
    text_layers: int = 24
    text_hidden: int = 896
    kv_bytes_per_token: int = 24 * 2 * 2 * 64 * 2  # layers x (K, V) x kv heads x dim x bf16


DEVICES = {
    "h100": DeviceModel(
        name="H100 SXM",
        peak_tflops=989.0,
        mfu=0.6,
        bandwidth_gbs=3350.0,
        bandwidth_efficiency=0.7,
        min_step_s=0.0012,
    ),
}
INTERNVL3_1B = ModelShape()


def prefill_s(device: DeviceModel, shape: ModelShape, tiles: int, prompt_tokens: int) -> float:
    """Seconds to encode `tiles` tiles and prefill `prompt_tokens` tokens of one batch."""
    vision = tiles * (
        2 * shape.vision_params * shape.tokens_per_tile
        + 4 * shape.vision_layers * shape.vision_hidden * shape.tokens_per_tile**2
    )
    text = 2 * shape.text_params * prompt_tokens
    return (vision + text) / (device.peak_tflops * 1e12 * device.mfu)


def decode_step_s(device: DeviceModel, shape: ModelShape, context_tokens: int) -> float:
    """Seconds for one decode step of a batch holding `context_tokens` tokens of KV cache."""
    weights = 2 * (shape.text_params - shape.embedding_params + shape.lm_head_params)
    moved = weights + shape.kv_bytes_per_token * context_tokens
    return max(
        moved / (device.bandwidth_gbs * 1e9 * device.bandwidth_efficiency), device.min_step_s
    )


class SimulatedEngine(InternVLEngine):
    """The engine's prepare, with generate timed as the simulated device would run it."""

    steps_rows = False  # only whole generate() calls are timed: the static batcher runs it

    def __init__(self, spec: ModelSpec, *, device: str = "h100") -> None:  # noqa: D107
        # Deliberately not InternVLEngine.__init__: no weights are loaded, only the processor.
        self.spec = spec
        self.simulated = DEVICES[device]
        self.shape = INTERNVL3_1B
        self.device = torch.device("cpu")
        self.dtype = torch.bfloat16
        self.processor = AutoProcessor.from_pretrained(spec.checkpoint, revision=spec.revision)
        self.tokenizer = self.processor.tokenizer
        self.control_tokens = self._control_tokens()
        self.preparer = Preparer(
            self.processor, model_alias=spec.alias, cache_bytes=spec.prepare_cache_mb * 2**20
        )
        self.prepare_cache = self.preparer.cache
        self.tile_size = self.preparer.tile_size
        self.image_token_ids = self.preparer.image_token_ids
        self.image_seq_length = self.preparer.image_seq_length
        # The simulated device is a GPU: under `auto` its pictures are resized there, which
        # the cost model leaves out (a few hundred microseconds of a batch's prefill).
        self.resize_on_device = spec.image_resize != "host"
        self.load_seconds = 0.0

    def constraint_for(self, response_format: dict[str, Any] | None) -> None:
        """No grammar: the simulated device writes filler text."""
        return None

    def generate(self, jobs: Sequence[PreparedJob]) -> list[Generation]:
        """Sleep for the batch's prefill, then one step per token; canceled rows stop early.

        Sleeps run to deadlines on one schedule, so a late wake-up (a busy host) is made up
        by the next step instead of adding up over the steps.
        """
        tiles = sum(job.tiles for job in jobs)
        prompt = sum(job.prompt_tokens for job in jobs)
        deadline = time.monotonic() + prefill_s(self.simulated, self.shape, tiles, prompt)
        _sleep_until(deadline)
        steps = max(job.params.max_new_tokens for job in jobs)
        done = 0
        for step in range(steps):
            if all(job.cancel.is_set() for job in jobs):
                break
            deadline += decode_step_s(self.simulated, self.shape, prompt + step * len(jobs))
            _sleep_until(deadline)
            done = step + 1
        return [self._filler(job, done) for job in jobs]

    def _filler(self, job: PreparedJob, steps: int) -> Generation:
        tokens = min(steps, job.params.max_new_tokens)
        finish = "canceled" if job.cancel.is_set() else "length"
        return Generation(" ".join(["token"] * tokens), tokens, finish, seed=job.seed)


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
