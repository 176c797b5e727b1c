"""The InternVL engine: loads a checkpoint once, prepares jobs, and generates for a batch of them.

`prepare` (chat template, tiling, tokenising) leaves pixels uint8: tiles, or with
`resize_on_device` decoded pictures that the device resizes and cuts (worker.device_tiles);
the worker runs the same work in its prepare processes (worker.prepare_pool) and builds the job
with `prepared`. `_pixels` normalises tiles on the device, in the model's dtype; `generate`
runs on the one thread that owns the model and takes several prepared jobs at once,
left-padded, so the device works on a batch instead of one image at a time.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteriaList,
)
from transformers.utils import logging as hf_logging

from core.config import ModelSpec
from core.prompts import Conversation
from core.specs import GenerationParams
from worker.device_tiles import ImagePixels, device_tiles, resizes_on_device
from worker.precision import load_options
from worker.preparer import ImageSource, Preparer
from worker.sampling import AllCanceled, Row, RowLimits, RowSettings, batch_key
from worker.structured import ConstrainedRows, GrammarCache, RowConstraint, parsed_json

log = logging.getLogger("worker.engine")
hf_logging.disable_progress_bar()  # progress bars are noise in service logs


@dataclass
class PreparedJob:
    """One job's model inputs, ready to be batched."""

    job_id: str
    input_ids: torch.Tensor  # (prompt_tokens,)
    pixels: list[ImagePixels]  # per image in prompt order: uint8 tiles, or a picture to tile
    image_tiles: list[int]  # per image, as the processor cut it (thumbnail included)
    params: GenerationParams
    seed: int | None = None  # the generator seed of a sampled job (drawn when not given)
    cancel: threading.Event = field(default_factory=threading.Event)
    constraint: RowConstraint | None = None  # structured output: the row's grammar state

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt, image tokens included."""
        return int(self.input_ids.shape[0])

    @property
    def tiles(self) -> int:
        """Tiles this job feeds to the vision tower."""
        return sum(self.image_tiles)

    @property
    def key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one generate() call."""
        return batch_key(self.params, self.job_id)


@dataclass
class Generation:
    """What generate produced for one job."""

    text: str
    completion_tokens: int
    finish_reason: str  # stop | length | canceled (| invalid_output, constrained rows)
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more result fields: json


class InternVLEngine:
    """One loaded InternVL checkpoint on one device (or one group of devices)."""

    steps_rows = True  # the continuous loop may run its model step by step, row by row

    def __init__(self, spec: ModelSpec, *, device: str = "auto") -> None:
        self.spec = spec
        options = load_options(spec, device=device)
        self.device = options.device
        self.dtype = options.dtype
        self.attn_implementation = options.attn_implementation
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
        self.image_seq_length = int(self.processor.image_seq_length)
        self.image_token_ids = (
            int(self.tokenizer.start_image_token_id),
            int(self.tokenizer.context_image_token_id),
            int(self.tokenizer.end_image_token_id),
        )
        self.grammars = GrammarCache(
            self.tokenizer,
            self.eos_token_ids,
            n_vocab=int(self.model.get_output_embeddings().weight.shape[0]),
        )
        self.preparer = Preparer(
            self.processor, model_alias=spec.alias, cache_bytes=spec.prepare_cache_mb * 2**20
        )
        self.prepare_cache = self.preparer.cache
        self.tile_size = self.preparer.tile_size
        self._pixel_mean = self.preparer.pixel_mean.to(self.device)
        self._pixel_std = self.preparer.pixel_std.to(self.device)
        self.vision_chunk_tiles = spec.vision_chunk_tiles or (
            8 if self.device.type == "cpu" else 64
        )
        self.resize_on_device = resizes_on_device(spec, self.device)
        log.info(
            "loaded %s on %s (%s, %s, %d CPU threads) in %.1fs",
            spec.checkpoint,
            self.device,
            self.dtype,
            self.attn_implementation,
            torch.get_num_threads(),
            self.load_seconds,
        )

    def _pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def _eos_token_ids(self) -> list[int]:
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        ids = [int(i) for i in ids if i is not None]
        # Qwen-based checkpoints end a turn with <|im_end|> and pad with <|endoftext|>; either
        # one ends a row. Counting the padding token as an end token also makes min_new_tokens
        # suppress it, so a fixed-length generation has exactly its length.
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        for token in (im_end, self.pad_token_id):
            if isinstance(token, int) and token != self.tokenizer.unk_token_id and token not in ids:
                ids.append(token)
        return ids

    def _control_tokens(self) -> list[str]:
        tokens = {str(t) for t in self.tokenizer.all_special_tokens}
        tokens.update(str(t.content) for t in self.tokenizer.added_tokens_decoder.values())
        return sorted(tokens)

    def prepare(
        self,
        job_id: str,
        conversation: Conversation,
        images: Sequence[ImageSource],
        params: GenerationParams,
    ) -> PreparedJob:
        """Render the chat template, tile the images and tokenise: one job's inputs.

        An image is stored bytes (decoded at the scale its grid needs), a decoded picture, or
        one prepared before; its pixels stay uint8 until the device (`_input_embeddings`).
        """
        max_tiles = params.max_tiles or self.spec.max_tiles
        input_ids, pixels, tiles = self.preparer.image_inputs(
            conversation, images, max_tiles=max_tiles, on_device=self.resize_on_device
        )
        return self.prepared(job_id, input_ids, pixels, tiles, params)

    def prepared(
        self,
        job_id: str,
        input_ids: torch.Tensor,
        pixels: list[ImagePixels],
        tiles: list[int],
        params: GenerationParams,
    ) -> PreparedJob:
        """A job from inputs prepared elsewhere (a prepare process); a sampled job gets its seed."""
        seed = None
        if params.do_sample:
            seed = params.seed if params.seed is not None else secrets.randbits(32)
        return PreparedJob(job_id, input_ids, pixels, tiles, params, seed=seed)

    def image_tiles(self, image: ImageSource, *, max_tiles: int) -> torch.Tensor:
        """One image's uint8 tiles (tiles, 3, T, T) at this checkpoint's tile size."""
        prepared = self.preparer.image_pixels(image, max_tiles=max_tiles)
        return self.device_tiles([prepared]).cpu()

    def device_tiles(self, images: list[ImagePixels]) -> torch.Tensor:
        """Prepared images' uint8 tiles on the device, (tiles, 3, T, T), pictures resized there."""
        return device_tiles(images, device=self.device, tile_size=self.tile_size)

    def cache_key(self, sha256: str, max_tiles: int) -> tuple[str, int, str]:
        """What identifies an image's tiles in the prepare cache."""
        return self.preparer.cache_key(sha256, max_tiles)

    def _pixels(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 tiles -> the vision tower's input on the device: normalised, in the model's dtype.

        The one place pixels become floats, after the (4x smaller) uint8 copy to the device;
        the arithmetic is the processor's own, so full-scale tiles give its exact values.
        """
        pixels = tiles.to(self.device, non_blocking=True).to(torch.float32)
        return ((pixels - self._pixel_mean) / self._pixel_std).to(self.dtype)

    def constraint_for(self, response_format: dict[str, Any] | None) -> RowConstraint | None:
        """A job's grammar state for its response_format (None: free text); compiled once."""
        if response_format is None:
            return None
        return RowConstraint(self.grammars.matcher(response_format), self.eos_token_ids)

    def tiles_per_image(self, input_ids: torch.Tensor) -> list[int]:
        """Tiles of each image, read from the image blocks the processor wrote into the prompt."""
        start, context, end = self.image_token_ids
        tiles: list[int] = []
        count: int | None = None
        for token in input_ids.tolist():
            if token == start:
                count = 0
            elif token == context and count is not None:
                count += 1
            elif token == end and count is not None:
                tiles.append(count // self.image_seq_length)
                count = None
        return tiles

    @torch.inference_mode()
    def generate(self, jobs: Sequence[PreparedJob]) -> list[Generation]:
        """Generate for several jobs in one call; their batch keys must be equal."""
        if len({job.key for job in jobs}) != 1:
            raise ValueError("jobs with different batch keys cannot share a generate() call")
        input_ids, attention_mask, padding = self._left_pad([job.input_ids for job in jobs])
        input_ids = input_ids.to(self.device)
        prompt_length = int(input_ids.shape[1])
        output = self.model.generate(
            input_ids=input_ids,
            inputs_embeds=self._input_embeddings(input_ids, jobs),
            attention_mask=attention_mask.to(self.device),
            generation_config=self._generation_config(jobs),
            logits_processor=self._processors(jobs, padding, prompt_length),
            stopping_criteria=StoppingCriteriaList([self._stopping(jobs, prompt_length)]),
        )
        new_tokens = output[:, prompt_length:].cpu()
        return [self._decode(job, row) for job, row in zip(jobs, new_tokens, strict=True)]

    def _input_embeddings(self, input_ids: torch.Tensor, jobs: Sequence[PreparedJob]) -> Any:
        """The prompts' embeddings with each image's features in its slots.

        The vision tower runs over vision_chunk_tiles tiles at a time rather than every tile of
        the batch at once: on a CPU small chunks stay in cache (a 16-image batch of 13-tile
        photos encodes about a third faster), on a GPU the chunk bounds the activation peak.
        """
        embeds = self.model.get_input_embeddings()(input_ids)
        images = [image for job in jobs for image in job.pixels]
        if not images:
            return embeds
        features = [
            self._image_features(self._pixels(chunk)).to(embeds.device, embeds.dtype)
            for chunk in self.device_tiles(images).split(self.vision_chunk_tiles)
        ]
        slots = (input_ids == self.image_token_ids[1]).unsqueeze(-1).to(embeds.device)
        return embeds.masked_scatter(slots, torch.cat(features))

    def _image_features(self, tiles: torch.Tensor) -> torch.Tensor:
        output = self.model.model.get_image_features(pixel_values=tiles)
        return getattr(output, "pooler_output", output)  # a tensor in older transformers

    def _processors(
        self, jobs: Sequence[PreparedJob], padding: list[int], prompt_length: int
    ) -> LogitsProcessorList:
        beams = jobs[0].params.num_beams
        rows = [Row(job.params, pad, job.seed) for job, pad in zip(jobs, padding, strict=True)]
        processors = LogitsProcessorList()
        constraints = [job.constraint for job in jobs]
        if any(c is not None for c in constraints):  # masks first: sampling draws from them
            processors.append(ConstrainedRows(constraints, prompt_length=prompt_length))
        if RowSettings.needed(rows, sample=beams == 1):
            settings = RowSettings(
                rows,
                prompt_length=prompt_length,
                eos_token_ids=self.eos_token_ids,
                group=beams,
                sample=beams == 1,
            )
            processors.append(settings)
        return processors

    def _stopping(self, jobs: Sequence[PreparedJob], prompt_length: int) -> Any:
        cancels = [job.cancel for job in jobs]
        if jobs[0].params.num_beams > 1:
            return AllCanceled(cancels)
        return RowLimits([job.params.max_new_tokens for job in jobs], cancels, prompt_length)

    def _generation_config(self, jobs: Sequence[PreparedJob]) -> GenerationConfig:
        # Every setting is explicit, so a checkpoint's generation_config.json cannot add a
        # batch-wide penalty or sampler behind the jobs' backs.
        first = jobs[0]
        beam_sampling = first.params.num_beams > 1 and first.params.do_sample
        config = GenerationConfig(
            max_new_tokens=max(job.params.max_new_tokens for job in jobs),
            num_beams=first.params.num_beams,
            do_sample=beam_sampling,
            repetition_penalty=1.0,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
        )
        if beam_sampling:
            config.update(temperature=first.params.temperature, top_p=first.params.top_p, top_k=0)
            torch.manual_seed(first.seed or 0)  # a beam-sampling job runs alone
        return config

    def _left_pad(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        width = max(int(row.shape[0]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        padding = [width - int(row.shape[0]) for row in rows]
        for i, (row, pad) in enumerate(zip(rows, padding, strict=True)):
            ids[i, pad:] = row
            mask[i, pad:] = 1
        return ids, mask, padding

    def _decode(self, job: PreparedJob, row: torch.Tensor) -> Generation:
        tokens = row.tolist()[: job.params.max_new_tokens]
        finish = "length"
        for index, token in enumerate(tokens):
            if token in self.eos_token_ids:
                tokens, finish = tokens[:index], "stop"
                break
        if job.cancel.is_set():
            finish = "canceled"
        text = complete_text(self.tokenizer.decode(tokens, skip_special_tokens=True)).strip()
        extra: dict[str, Any] = {}
        if job.constraint is not None:
            extra, finish = parsed_json(text, finish)
        return Generation(text, len(tokens), finish, seed=job.seed, extra=extra)

    # Continuous batching (worker/decode.py, worker/continuous.py) goes through these, so each
    # concern keeps one home: pixels reach the vision tower only in _input_embeddings.

    def prompt_embeddings(self, input_ids: torch.Tensor, jobs: Sequence[PreparedJob]) -> Any:
        """Left-padded prompts' embeddings with every job's image features in its slots."""
        return self._input_embeddings(input_ids, jobs)

    def left_pad(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Token rows padded on the left to one width: ids, attention mask, padding per row."""
        return self._left_pad(rows)

    def result(self, job: PreparedJob, tokens: list[int]) -> Generation:
        """A job's Generation from its generated tokens (cut at the first end token)."""
        return self._decode(job, torch.tensor(tokens, dtype=torch.long))


def complete_text(decoded: str) -> str:
    """Decoded text without the U+FFFD a tokenizer writes for bytes that form no character.

    Byte-level tokens split characters: a generation cut by max_new_tokens can end inside one,
    and a weak model can emit bytes in an impossible order. The tokenizer shows such bytes as
    U+FFFD; a job's text drops them, so it holds only characters the model actually completed.
    """
    return decoded.replace("\ufffd", "")
