"""Constrained decoding for structured output, one row at a time (llguidance).

Why llguidance: a matcher compiles its grammar lazily as decoding goes, so a schema seen for
the first time costs milliseconds rather than the up-front token-index build other libraries
need, and every row carries its own matcher: rows with different schemas, with none, greedy
and sampled, share one forward pass and only the constrained rows are masked. A compiled
matcher is cached by the SHA-256 of its format (core.response_format.format_key) and each row
gets a deep copy of it. `python -m bench.structured --compare-libraries` measures it against
xgrammar and outlines-core (figures in docs/benchmarks.md).

`RowConstraint` is self-contained (mask a row's logits, advance on the sampled token, say
when it is finished), so any decoding loop can drive it; `ConstrainedRows` plugs a batch of
them into transformers' generate() as a logits processor.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import torch
from transformers import LogitsProcessor

from core.errors import ServiceError
from core.response_format import format_key

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

log = logging.getLogger("worker.structured")
CACHE_SIZE = 256
_SHIFTS = torch.arange(32, dtype=torch.int32)


class SchemaRefused(ServiceError):
    """The decoder cannot compile the job's schema (a permanent failure of the job)."""

    status = 422
    code = "invalid_schema"
    title = "Invalid schema"


def grammar_for(stored: dict[str, Any]) -> str:
    """The llguidance grammar of a stored response_format."""
    schema = stored["schema"] if stored["type"] == "json_schema" else {"type": "object"}
    # Compact JSON: no free whitespace for a random or wandering model to fill to the limit.
    options: JsonCompileOptions = {
        "whitespace_flexible": False,
        "item_separator": ",",
        "key_separator": ":",
    }
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=options)


class GrammarCache:
    """Compiled matchers by format hash, for one tokenizer; thread-safe, least recent out."""

    def __init__(
        self, hf_tokenizer: Any, eos_token_ids: list[int], *, n_vocab: int, size: int = CACHE_SIZE
    ) -> None:
        self.hf_tokenizer = hf_tokenizer
        self.eos_token_ids = eos_token_ids
        self.n_vocab = n_vocab  # the logits' width (may exceed the tokenizer's vocabulary)
        self.size = size
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._matchers: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self.compiled = 0  # grammars compiled (cache misses), for statistics and tests

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        """The llguidance view of the model's tokenizer (built once: about a second)."""
        if self._tokenizer is None:
            self._tokenizer = llguidance.hf.from_tokenizer(
                self.hf_tokenizer, n_vocab=self.n_vocab, eos_token=self.eos_token_ids[0]
            )
        return self._tokenizer

    def matcher(self, stored: dict[str, Any]) -> llguidance.LLMatcher:
        """A fresh matcher for the format: a copy of the cached compiled one."""
        key = format_key(stored)
        with self._lock:
            template = self._matchers.get(key)
            if template is None:
                try:
                    template = llguidance.LLMatcher(
                        self.tokenizer, grammar_for(stored), log_level=0
                    )
                except ValueError as exc:
                    raise SchemaRefused(f"the schema cannot be compiled: {exc}") from exc
                if template.is_error():
                    raise SchemaRefused(f"the schema cannot be compiled: {template.get_error()}")
                self.compiled += 1
                self._matchers[key] = template
                if len(self._matchers) > self.size:
                    self._matchers.popitem(last=False)
            self._matchers.move_to_end(key)
            return template.deep_copy()


class RowConstraint:
    """One row's grammar state: which tokens may come next, and whether the JSON is complete."""

    def __init__(self, matcher: llguidance.LLMatcher, eos_token_ids: Sequence[int]) -> None:
        self.matcher = matcher
        self.eos_token_ids = frozenset(eos_token_ids)
        self.finished = False

    def allowed(self, vocab_size: int) -> torch.Tensor:
        """A bool mask over the vocabulary: True where the token keeps the output valid."""
        words = (vocab_size + 31) // 32
        bits = torch.zeros(words, dtype=torch.int32)
        self.matcher.unsafe_compute_mask_ptr(bits.data_ptr(), words * 4)
        mask = ((bits.unsqueeze(-1) >> _SHIFTS) & 1).bool().flatten()[:vocab_size]
        if self.matcher.is_accepting():  # complete: any end-of-turn token may close the row
            mask[[t for t in self.eos_token_ids if t < vocab_size]] = True
        return mask

    def mask(self, vocab_size: int) -> torch.Tensor:
        """allowed(), or every token once the row finished: it only pads, and that is dropped."""
        if self.finished:
            return torch.ones(vocab_size, dtype=torch.bool)
        return self.allowed(vocab_size)

    def restart(self) -> None:
        """Back to the grammar's start, for a row that generates again from its prompt."""
        self.matcher.reset()
        self.finished = False

    def advance(self, token: int) -> None:
        """Take the token the row produced; an end token (or a refused one) finishes the row."""
        if self.finished:
            return
        if token in self.eos_token_ids:
            self.finished = True
            return
        if not self.matcher.consume_token(token):
            log.warning("constrained row left its grammar: %s", self.matcher.get_error())
            self.finished = True


class ConstrainedRows(LogitsProcessor):
    """Masks the logits of constrained rows (None: a free row) before any sampling."""

    def __init__(self, rows: Sequence[RowConstraint | None], *, prompt_length: int) -> None:
        self.rows = rows
        self.prompt_length = prompt_length
        self.constrained = [i for i, row in enumerate(rows) if row is not None]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_length
        last = input_ids[:, -1].tolist() if generated > 0 else None
        vocab = scores.shape[-1]
        masks = []
        for i in self.constrained:
            row = self.rows[i]
            assert row is not None
            if last is not None:
                row.advance(int(last[i]))
            masks.append(row.mask(vocab))
        if masks:
            allowed = torch.stack(masks).to(scores.device)
            scores[self.constrained] = scores[self.constrained].masked_fill(~allowed, float("-inf"))
        return scores


class ConstrainedRow:
    """A constrained row's RowProcessor in continuous batching: masks its logits each step.

    The row's grammar takes the tokens generated since the last step first; a row restarted
    from its prompt (after an out-of-memory eviction) starts its grammar again.
    """

    def __init__(self, constraint: RowConstraint) -> None:
        self.constraint = constraint
        self.consumed = 0

    def __call__(self, generated: list[int], scores: torch.Tensor) -> torch.Tensor:
        if len(generated) < self.consumed:
            self.constraint.restart()
            self.consumed = 0
        for token in generated[self.consumed :]:
            self.constraint.advance(int(token))
        self.consumed = len(generated)
        allowed = self.constraint.mask(scores.shape[-1]).to(scores.device)
        return scores.masked_fill(~allowed[None, :], float("-inf"))


def parsed_json(text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
    """The result fields of a constrained row: {"json": value} when complete, and the reason.

    A row cut by max_new_tokens stays "length" with no value (never a partial object).
    """
    if finish_reason != "stop":
        return {}, finish_reason
    try:
        return {"json": json.loads(text)}, finish_reason
    except ValueError:
        log.warning("a constrained row ended without valid JSON")
        return {}, "invalid_output"
