"""Per-row generation settings, so jobs with different settings can share one generate() call.

transformers applies its logits processors (temperature, top_p, repetition penalty, minimum
length) to the whole batch with one value each. `RowSettings` applies every job's own values to
its own row instead, and samples each sampled row with the job's own random generator, so a
job's output depends on its settings and seed alone, never on its batch-mates. Greedy, sampled,
penalised and seeded jobs therefore batch together; only beam search (whose beams the beam
scorer keeps in lockstep) batches by its beam settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import LogitsProcessor, StoppingCriteria

from core.specs import GenerationParams


def batch_key(params: GenerationParams, job_id: str) -> tuple[Any, ...]:
    """Jobs whose keys are equal can share one generate() call.

    Every num_beams=1 job shares the key ("rows",): its settings are applied per row. Beam
    search stops a batch's rows together, so beam jobs batch only with equal beam settings;
    beam sampling draws from the one global generator, seeded per job, so it runs alone.
    """
    if params.num_beams == 1:
        return ("rows",)
    if params.do_sample:
        return ("alone", job_id)
    return ("beams", params.num_beams, params.max_new_tokens)


@dataclass(frozen=True)
class Row:
    """One job's settings as the per-row processor needs them."""

    params: GenerationParams
    padding: int  # left padding of this job's prompt in the batch
    seed: int | None  # generator seed of a sampled job


def _penalize(scores: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    # The rule of transformers' RepetitionPenaltyLogitsProcessor, one penalty per row.
    picked = torch.gather(scores, 1, seen)
    picked = torch.where(picked < 0, picked * penalty[:, None], picked / penalty[:, None])
    return scores.scatter(1, seen, picked)


def _top_p_filter(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    # The rule of transformers' TopPLogitsWarper, one threshold per row.
    ordered, order = torch.sort(logits, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p[:, None])
    remove[:, -1] = False  # always keep the most likely token
    return logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))


class RowSettings(LogitsProcessor):
    """Applies each job's repetition penalty, min_new_tokens and sampling to its own rows.

    Sampled rows are drawn here with the job's generator and returned as a one-hot score, so
    generate() itself runs greedy and its argmax picks exactly the token drawn here.
    `group` is how many consecutive rows belong to one job (its beams).
    """

    def __init__(
        self,
        rows: Sequence[Row],
        *,
        prompt_length: int,
        eos_token_ids: list[int],
        group: int = 1,
        sample: bool = True,
    ) -> None:
        self.rows = rows
        self.prompt_length = prompt_length
        self.eos_token_ids = eos_token_ids
        self.group = group
        self.sample = sample
        self._ready_on: torch.device | None = None

    @staticmethod
    def needed(rows: Sequence[Row], *, sample: bool = True) -> bool:
        """False when every row is plain greedy: generate() then needs no extra processor."""
        return any(
            r.params.repetition_penalty != 1.0
            or r.params.min_new_tokens > 0
            or (sample and r.params.do_sample)
            for r in rows
        )

    def _prepare(self, device: torch.device) -> None:
        # Per-row constants are built once, on the device the scores live on.
        def per_row(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=device).repeat_interleave(self.group)

        params = [r.params for r in self.rows]
        self.penalty = per_row([p.repetition_penalty for p in params])
        self.penalized = bool((self.penalty != 1.0).any())
        self.padding = per_row([float(r.padding) for r in self.rows]).long()
        self.min_new = per_row([float(p.min_new_tokens) for p in params])
        self.longest_min_new = max(p.min_new_tokens for p in params)
        self.eos = torch.tensor(self.eos_token_ids, device=device)
        sampled = [i for i, p in enumerate(params) if self.sample and p.do_sample]
        self.sampled = torch.tensor(sampled, device=device, dtype=torch.long)
        self.temperature = torch.tensor([params[i].temperature for i in sampled], device=device)
        self.top_p = torch.tensor([params[i].top_p for i in sampled], device=device)
        self.generators = []
        for i in sampled:
            generator = torch.Generator(device=device)
            generator.manual_seed(int(self.rows[i].seed or 0))
            self.generators.append(generator)
        self._ready_on = device

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._ready_on != scores.device:
            self._prepare(scores.device)
        if self.penalized:
            scores = _penalize(scores, self._own_tokens(input_ids), self.penalty)
        generated = input_ids.shape[1] - self.prompt_length
        if generated < self.longest_min_new:
            too_short = (self.min_new > generated)[:, None]
            eos_scores = scores[:, self.eos]
            scores[:, self.eos] = eos_scores.masked_fill(too_short, float("-inf"))
        if len(self.generators):
            scores = self._draw(scores)
        return scores

    def _own_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Left padding is not part of a job's text: point it at the row's first real token,
        # which is penalised anyway, so padding never counts as a repeated token.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        first = torch.gather(input_ids, 1, self.padding[:, None])
        return torch.where(positions[None, :] < self.padding[:, None], first, input_ids)

    def _draw(self, scores: torch.Tensor) -> torch.Tensor:
        logits = scores[self.sampled] / self.temperature[:, None]
        probs = _top_p_filter(logits, self.top_p).softmax(dim=-1)
        chosen = torch.stack(
            [
                torch.multinomial(probs[k], 1, generator=generator)[0]
                for k, generator in enumerate(self.generators)
            ]
        )
        drawn = torch.full_like(scores[self.sampled], float("-inf"))
        drawn.scatter_(1, chosen[:, None], 0.0)
        scores[self.sampled] = drawn
        return scores


class RowLimits(StoppingCriteria):
    """Stops each row at its own max_new_tokens, or as soon as its job is canceled."""

    def __init__(self, limits: list[int], cancels: Sequence[Any], prompt_length: int) -> None:
        self.limits = limits
        self.cancels = cancels
        self.prompt_length = prompt_length
        self._limits: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if self._limits is None or self._limits.device != input_ids.device:
            self._limits = torch.tensor(self.limits, device=input_ids.device)
        done = self._limits <= input_ids.shape[1] - self.prompt_length
        canceled = [cancel.is_set() for cancel in self.cancels]
        if any(canceled):
            done = done | torch.tensor(canceled, device=input_ids.device)
        return done


class AllCanceled(StoppingCriteria):
    """Beam search keeps rows together: stop only when every job of the batch is canceled."""

    def __init__(self, cancels: Sequence[Any]) -> None:
        self.cancels = cancels

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        stop = all(cancel.is_set() for cancel in self.cancels)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class RowProcessor(Protocol):
    """A per-row logits step: a row's generated tokens so far and its logits (1, vocab) in,
    adjusted logits out. Constraints (e.g. structured output) plug into RowChooser.processors."""

    def __call__(self, generated: list[int], scores: torch.Tensor) -> torch.Tensor: ...


class RowChooser:
    """Picks one row's next token in continuous batching, with its job's own settings.

    The same rules as RowSettings, in the same order (repetition penalty over the prompt and
    the generated tokens, end tokens masked below min_new_tokens, then the extra processors,
    then temperature, top_p and a draw from the job's own generator), applied to one row.
    """

    def __init__(
        self,
        params: GenerationParams,
        *,
        seed: int | None,
        prompt_ids: torch.Tensor,
        eos_token_ids: list[int],
        device: torch.device,
    ) -> None:
        self.params = params
        self.prompt_ids = prompt_ids.to(device)
        self.eos = torch.tensor(eos_token_ids, device=device)
        self.processors: list[RowProcessor] = []
        self.generator: torch.Generator | None = None
        if params.do_sample:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(int(seed or 0))

    @property
    def plain(self) -> bool:
        """Greedy with no penalty and no processors: once the batch-wide min_new_tokens mask
        is applied (choose_tokens), the batch's argmax is this row's token."""
        params = self.params
        return params.repetition_penalty == 1.0 and not params.do_sample and not self.processors

    def choose(self, generated: list[int], logits: torch.Tensor) -> int:
        """The next token of this row, from its logits (vocab,) and the tokens it generated."""
        params = self.params
        scores = logits[None, :].clone()
        if params.repetition_penalty != 1.0:
            new = torch.tensor(generated, dtype=torch.long, device=scores.device)
            seen = torch.cat([self.prompt_ids, new])[None, :]
            penalty = torch.tensor([params.repetition_penalty], device=scores.device)
            scores = _penalize(scores, seen, penalty)
        if len(generated) < params.min_new_tokens:
            scores[:, self.eos] = float("-inf")
        for processor in self.processors:
            scores = processor(generated, scores)
        if self.generator is None:
            return int(scores.argmax(-1)[0])
        temperature = torch.tensor([params.temperature], device=scores.device)
        top_p = torch.tensor([params.top_p], device=scores.device)
        probs = _top_p_filter(scores / temperature[:, None], top_p).softmax(dim=-1)
        return int(torch.multinomial(probs[0], 1, generator=self.generator)[0])


def choose_tokens(
    choosers: Sequence[RowChooser], generated: Sequence[list[int]], logits: Any
) -> Any:
    """Every row's next token: one argmax for the plain rows, each other row by its chooser.

    The end tokens of rows still short of their min_new_tokens are masked for all rows in one
    operation first (masking twice, in `choose`, changes nothing), so fixed-length greedy rows
    cost no per-row work.
    """
    short = [i for i, c in enumerate(choosers) if len(generated[i]) < c.params.min_new_tokens]
    if short:
        rows = torch.tensor(short, device=logits.device)
        logits[rows[:, None], choosers[0].eos[None, :]] = float("-inf")
    tokens = logits.argmax(-1)
    for index, chooser in enumerate(choosers):
        if not chooser.plain:
            tokens[index] = chooser.choose(generated[index], logits[index])
    return tokens
