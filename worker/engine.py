"""The InternVL engine: loads a checkpoint once, prepares jobs, and generates for a batch of them.

`prepare` (tokenising, tiling) runs in the Celery task threads, in parallel; `generate` runs
on the one thread that owns the model and takes several prepared jobs at once, left-padded,
so the GPU works on a batch instead of one image at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, StoppingCriteria
from transformers.utils import logging as hf_logging

from core.config import ModelSpec
from core.prompts import Conversation
from core.specs import GenerationParams
from core.tiling import tile_count
from worker.precision import load_options

log = logging.getLogger("worker.engine")
hf_logging.disable_progress_bar()  # progress bars are noise in service logs


@dataclass
class PreparedJob:
    """One job's model inputs, ready to be batched."""

    job_id: str
    input_ids: torch.Tensor  # (prompt_tokens,)
    pixel_values: torch.Tensor | None  # (tiles, 3, tile, tile)
    image_tiles: list[int]
    params: GenerationParams
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt, image tokens included."""
        return int(self.input_ids.shape[0])

    @property
    def tiles(self) -> int:
        """Tiles this job feeds to the vision tower."""
        return sum(self.image_tiles)


@dataclass
class Generation:
    """What generate produced for one job."""

    text: str
    completion_tokens: int
    finish_reason: str  # stop | length | canceled


def batch_key(params: GenerationParams) -> tuple[Any, ...]:
    """Jobs whose keys are equal can share one generate() call.

    Logits processors (temperature, top_p, repetition penalty, min length) act on the whole
    batch, so those settings must match; max_new_tokens may differ (stopped per row), except
    in beam search. A seeded sampling job runs alone so that its seed reproduces its output.
    """
    if params.do_sample and params.seed is not None:
        return ("seeded", id(params))
    return (
        params.do_sample,
        params.temperature if params.do_sample else None,
        params.top_p if params.do_sample else None,
        params.repetition_penalty,
        params.num_beams,
        params.min_new_tokens,
        params.max_new_tokens if params.num_beams > 1 else None,
    )


class _RowLimits(StoppingCriteria):
    """Stops each row at its own max_new_tokens, or as soon as its job is canceled."""

    def __init__(self, jobs: Sequence[PreparedJob], prompt_length: int) -> None:
        self.jobs = jobs
        self.prompt_length = prompt_length
        self.limits = torch.tensor([job.params.max_new_tokens for job in jobs])

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_length
        done = self.limits.to(input_ids.device) <= generated
        canceled = [job.cancel.is_set() for job in self.jobs]
        if any(canceled):
            done = done | torch.tensor(canceled, device=input_ids.device)
        return done


class _AllCanceled(StoppingCriteria):
    """Beam search keeps rows together: stop only when every job of the batch is canceled."""

    def __init__(self, jobs: Sequence[PreparedJob]) -> None:
        self.jobs = jobs

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        stop = all(job.cancel.is_set() for job in self.jobs)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class InternVLEngine:
    """One loaded InternVL checkpoint on one device (or one group of devices)."""

    def __init__(self, spec: ModelSpec, *, device: str = "auto") -> None:
        self.spec = spec
        options = load_options(spec, device=device)
        self.device = options.device
        self.dtype = options.dtype
        started = time.monotonic()
        self.processor = AutoProcessor.from_pretrained(spec.checkpoint, revision=spec.revision)
        self.model = AutoModelForImageTextToText.from_pretrained(
            spec.checkpoint, revision=spec.revision, **options.from_pretrained_kwargs()
        )
        if options.device_map is None:
            self.model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()
        if spec.compile:
            self.model.forward = torch.compile(self.model.forward, dynamic=True)
        self.load_seconds = time.monotonic() - started
        self.tokenizer = self.processor.tokenizer
        self.pad_token_id = self._pad_token_id()
        self.eos_token_ids = self._eos_token_ids()
        self.control_tokens = self._control_tokens()
        self.tile_size = int(self.processor.image_processor.size["height"])
        log.info(
            "loaded %s on %s (%s, %s) in %.1fs",
            spec.checkpoint,
            self.device,
            self.dtype,
            options.attn_implementation,
            self.load_seconds,
        )

    def _pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def _eos_token_ids(self) -> list[int]:
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        ids = [int(i) for i in ids if i is not None]
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id and im_end not in ids:
            ids.append(im_end)
        return ids

    def _control_tokens(self) -> list[str]:
        tokens = {str(t) for t in self.tokenizer.all_special_tokens}
        tokens.update(str(t.content) for t in self.tokenizer.added_tokens_decoder.values())
        return sorted(tokens)

    def prepare(
        self,
        job_id: str,
        conversation: Conversation,
        images: list[Image.Image],
        params: GenerationParams,
    ) -> PreparedJob:
        """Render the chat template, tile the images and tokenise: one job's inputs."""
        ordered = [images[i] for i in conversation.image_order]
        max_tiles = params.max_tiles or self.spec.max_tiles
        text = self.processor.apply_chat_template(
            conversation.messages, add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(
            text=[text],
            images=ordered or None,
            return_tensors="pt",
            max_patches=max_tiles,
        )
        tiles = [
            tile_count(img.width, img.height, tile_size=self.tile_size, max_tiles=max_tiles)
            for img in ordered
        ]
        pixel_values = inputs.get("pixel_values")
        if pixel_values is not None and int(pixel_values.shape[0]) != sum(tiles):
            raise RuntimeError(
                f"processor made {pixel_values.shape[0]} tiles, expected {sum(tiles)}"
            )
        return PreparedJob(
            job_id=job_id,
            input_ids=inputs["input_ids"][0],
            pixel_values=pixel_values,
            image_tiles=tiles,
            params=params,
        )

    @torch.inference_mode()
    def generate(self, jobs: Sequence[PreparedJob]) -> list[Generation]:
        """Generate for several jobs in one call; their batch_key must be equal."""
        params = jobs[0].params
        input_ids, attention_mask = self._left_pad([job.input_ids for job in jobs])
        pixels = [job.pixel_values for job in jobs if job.pixel_values is not None]
        kwargs: dict[str, Any] = {}
        if pixels:
            kwargs["pixel_values"] = torch.cat(pixels).to(self.device, self.dtype)
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        output = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            max_new_tokens=max(job.params.max_new_tokens for job in jobs),
            min_new_tokens=params.min_new_tokens or None,
            do_sample=params.do_sample,
            num_beams=params.num_beams,
            repetition_penalty=params.repetition_penalty,
            stopping_criteria=[
                _RowLimits(jobs, input_ids.shape[1])
                if params.num_beams == 1
                else _AllCanceled(jobs)
            ],
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids,
            **kwargs,
        )
        new_tokens = output[:, input_ids.shape[1] :].cpu()
        return [self._decode(job, row) for job, row in zip(jobs, new_tokens, strict=True)]

    def _left_pad(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(int(row.shape[0]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - row.shape[0] :] = row
            mask[i, width - row.shape[0] :] = 1
        return ids, mask

    def _decode(self, job: PreparedJob, row: torch.Tensor) -> Generation:
        tokens = row.tolist()[: job.params.max_new_tokens]
        finish = "length"
        for index, token in enumerate(tokens):
            if token in self.eos_token_ids or token == self.pad_token_id:
                tokens, finish = tokens[:index], "stop"
                break
        if job.cancel.is_set():
            finish = "canceled"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Generation(text=text.strip(), completion_tokens=len(tokens), finish_reason=finish)
