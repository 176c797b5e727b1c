"""Continuous batching's model side: chunked prefill, and one padded cache rows join and leave.

The running batch is a left-padded batch like the one `generate` builds, with a transformers
`DynamicCache` whose per-layer key/value tensors (batch, heads, length, head_dim) gain rows
when a prefilled group joins (both sides padded on the left to one length) and lose them when
a row ends (rows selected, then columns that are padding in every remaining row cut off). Each
step passes the attention mask and every row's own position ids to the model itself, as
`generate` does for a left-padded batch, so a row's tokens do not depend on its neighbours.

Only public pieces are used (`DynamicCache`, its `layers` and their `keys`/`values`, the
model's forward with `past_key_values`, `attention_mask`, `position_ids`, `logits_to_keep`);
they exist in every transformers release the project supports (5.17 on the GPU machine,
5.24 here). transformers' own continuous batching (`generate_batch`) runs text-only requests
over a paged cache and cannot place image features into a prompt, hence this module.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from worker.admission import PrefillCost
from worker.engine import InternVLEngine, PreparedJob


def cache_argument(model: Any) -> str:
    """The forward argument that takes the cache: `cache` in newer transformers (which warns
    about the old name), `past_key_values` in older ones such as 5.17."""
    parameters = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class Prefill:
    """A group of new jobs on its way into the running batch, prefilled a few columns per step.

    The group is left-padded like a static batch; its embeddings (image features in place) are
    computed once, on the first chunk, through the engine's one pixel-to-embedding method.
    """

    def __init__(self, engine: InternVLEngine, jobs: Sequence[PreparedJob]) -> None:
        self.engine = engine
        self.jobs = list(jobs)
        input_ids, mask, _ = engine.left_pad([job.input_ids for job in jobs])
        self.input_ids = input_ids.to(engine.device)
        self.mask = mask.to(engine.device)
        # As generate() does for left padding: positions count real tokens; padding gets 0.
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.embeds: torch.Tensor | None = None
        self.cache = DynamicCache()
        self.cache_arg = cache_argument(engine.model)
        self.done = 0  # columns already through the model
        self.started = time.monotonic()

    @property
    def width(self) -> int:
        """Columns of the padded group (its longest prompt)."""
        return int(self.input_ids.shape[1])

    @property
    def rows(self) -> int:
        """Jobs in the group."""
        return len(self.jobs)

    def run_chunk(self, columns: int) -> torch.Tensor | None:
        """Feed the next `columns` columns; the last chunk returns each row's next-token logits."""
        if self.embeds is None:
            self.embeds = self.engine.prompt_embeddings(self.input_ids, self.jobs)
        end = min(self.done + max(columns, 1), self.width)
        output = self.engine.model(
            inputs_embeds=self.embeds[:, self.done : end],
            attention_mask=self.mask[:, :end],
            position_ids=self.positions[:, self.done : end],
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: self.cache},
        )
        self.done = end
        if end < self.width:
            return None
        self.embeds = None  # the image features are in the cache now
        return output.logits[:, -1, :].float()


class RunningBatch:
    """The rows being decoded: a padded cache, its attention mask and each row's position."""

    def __init__(self, engine: InternVLEngine) -> None:
        self.engine = engine
        self.cache_arg = cache_argument(engine.model)
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=engine.device)
        self.lengths = torch.zeros(0, dtype=torch.long, device=engine.device)  # real tokens
        self.next_tokens = torch.zeros(0, dtype=torch.long, device=engine.device)

    @property
    def rows(self) -> int:
        """Rows in the batch."""
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        """Columns of the padded cache."""
        return int(self.mask.shape[1])

    def join(self, prefill: Prefill, first_tokens: torch.Tensor) -> None:
        """Append a prefilled group's rows, each to be fed its first generated token next."""
        lengths = prefill.mask.sum(-1)
        if self.cache is None or self.rows == 0:
            self.cache, self.mask, self.lengths = prefill.cache, prefill.mask, lengths
            self.next_tokens = first_tokens
            return
        width = max(self.width, prefill.width)
        for mine, theirs in zip(_layers(self.cache), _layers(prefill.cache), strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat(
                [_pad_left(mine.values, width), _pad_left(theirs.values, width)]
            )
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(prefill.mask, width)])
        self.lengths = torch.cat([self.lengths, lengths])
        self.next_tokens = torch.cat([self.next_tokens, first_tokens])

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows (in this order); free the columns no remaining row uses."""
        if not indices:
            self.cache = None  # the whole cache is released
            self.mask = self.mask[:0, :0]
            self.lengths = self.lengths[:0]
            self.next_tokens = self.next_tokens[:0]
            return
        index = torch.tensor(indices, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        used = self.mask.any(0).nonzero()
        start = int(used[0, 0]) if used.numel() else 0
        self.mask = self.mask[:, start:]
        assert self.cache is not None
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:].contiguous()
            layer.values = layer.values.index_select(0, index)[:, :, start:].contiguous()
        self.lengths = self.lengths.index_select(0, index)
        self.next_tokens = self.next_tokens.index_select(0, index)

    def step(self) -> torch.Tensor:
        """Feed every row its last token; return each row's next-token logits (float32)."""
        ones = torch.ones((self.rows, 1), dtype=self.mask.dtype, device=self.mask.device)
        mask = torch.cat([self.mask, ones], dim=1)
        output = self.engine.model(
            input_ids=self.next_tokens[:, None],
            attention_mask=mask,
            position_ids=self.lengths[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: self.cache},
        )
        self.mask = mask
        self.lengths = self.lengths + 1
        return output.logits[:, -1, :].float()


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers; each holds keys and values of shape (rows, heads, length, dim)."""
    return list(cache.layers)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the sequence axis (the last one of a mask, -2 of keys/values)."""
    axis = -1 if tensor.dim() == 2 else -2
    missing = width - int(tensor.shape[axis])
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def kv_bytes_per_token(model: Any, dtype: torch.dtype) -> int:
    """Bytes one token of one row takes in the KV cache, from the language model's config."""
    config = model.config.get_text_config()
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    element = torch.tensor([], dtype=dtype).element_size()
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * element


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for the cache now: the accelerator's, or the host's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def kv_budget_tokens(engine: InternVLEngine, fraction: float, *, reserved_bytes: int = 0) -> int:
    """Cache tokens (rows x padded length) the running batch may hold: a fraction of free memory,
    less `reserved_bytes` that something else on the device holds at times (staged pixels)."""
    per_token = kv_bytes_per_token(engine.model, engine.dtype)
    usable = int(free_memory_bytes(engine.device) * fraction) - reserved_bytes
    return max(usable // per_token, 1)


def activation_elements(config: Any) -> int:
    """Elements one token's activations take inside one layer of a transformer (its config).

    The documented factor, 3 x hidden + 3 x intermediate: the residual stream, its normed
    copy and the attention (or MLP) output, plus the MLP's two projections and their product
    (SwiGLU; a GELU MLP keeps two, so this errs on the large side). Layers run one at a time,
    so one layer's worth is live at once. Attention scores are not counted: the SDPA and flash
    kernels do not materialise them.
    """
    hidden = int(config.hidden_size)
    return 3 * hidden + 3 * int(getattr(config, "intermediate_size", 4 * hidden))


def prefill_cost(engine: InternVLEngine) -> PrefillCost:
    """A prefill's transient activations in KV-cache tokens, from the model's config."""
    config = engine.model.config
    text = config.get_text_config()
    element = torch.tensor([], dtype=engine.dtype).element_size()
    per_token = kv_bytes_per_token(engine.model, engine.dtype) / element  # in elements
    vision = getattr(config, "vision_config", None)
    encoder = 0.0
    if vision is not None:
        image = vision.image_size
        patch = vision.patch_size
        side = image[0] if isinstance(image, (list, tuple)) else image
        step = patch[0] if isinstance(patch, (list, tuple)) else patch
        encoder = ((side // step) ** 2 + 1) * activation_elements(vision) / per_token
    return PrefillCost(
        held_per_token=int(text.hidden_size) / per_token,
        chunk_per_token=activation_elements(text) / per_token,
        per_tile=engine.image_seq_length * int(text.hidden_size) / per_token,
        encoder_per_tile=encoder,
        chunk_tiles=engine.vision_chunk_tiles,
    )
