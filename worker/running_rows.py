"""The continuous batcher's running batch: the rows decoding in it and the group prefilling to join.

ContinuousBatcher (worker.continuous) decides which jobs join and when; RunningRows holds what
has joined. Each Row is one job being decoded: where its Generation goes, how it picks its
tokens (a RowChooser, with a grammar's mask for structured output) and the tokens it made so
far. Beside the rows, the model's key-value cache of them (worker.decode.RunningBatch) and
the group whose prefill is in progress (worker.decode.Prefill), with the jobs it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from worker.batcher import BatchStats, _Waiting
from worker.decode import Prefill, RunningBatch
from worker.engine import InternVLEngine, PreparedJob
from worker.sampling import RowChooser, choose_tokens
from worker.structured import ConstrainedRow


@dataclass
class Row:
    """One job being decoded: where its Generation goes, how it picks tokens, what it made."""

    item: _Waiting
    chooser: RowChooser
    tokens: list[int] = field(default_factory=list)

    def ended(self, eos_token_ids: list[int], *, canceled_only: bool = False) -> bool:
        """Whether the row is done: canceled, or (unless canceled_only) at an end token or at
        its max_new_tokens."""
        job = self.item.job
        return job.cancel.is_set() or (
            not canceled_only
            and (self.tokens[-1] in eos_token_ids or len(self.tokens) >= job.params.max_new_tokens)
        )

    def last_step(self) -> bool:
        """Whether the step being computed ends the row for sure (an end token may end it too)."""
        job = self.item.job
        return job.cancel.is_set() or len(self.tokens) + 1 >= job.params.max_new_tokens


def row_chooser(engine: InternVLEngine, job: PreparedJob) -> RowChooser:
    """How a job's row picks its tokens: its sampling parameters, and its grammar, if any."""
    chooser = RowChooser(
        job.params,
        seed=job.seed,
        prompt_ids=job.input_ids,
        eos_token_ids=engine.eos_token_ids,
        device=engine.device,
    )
    if job.constraint is not None:  # structured output: masks before the row's draw
        chooser.processors.append(ConstrainedRow(job.constraint))
    return chooser


class RunningRows:
    """The rows in the running batch and the group being prefilled (the model thread's only)."""

    def __init__(self, engine: InternVLEngine) -> None:
        self.engine = engine
        self.rows: list[Row] = []
        self.batch = RunningBatch(engine)
        self.prefill: Prefill | None = None
        self.prefill_items: list[_Waiting] = []

    def busy(self) -> bool:
        """Whether any job is decoding or prefilling."""
        return bool(self.rows) or self.prefill is not None

    def jobs(self) -> list[PreparedJob]:
        """The jobs of the rows decoding now."""
        return [row.item.job for row in self.rows]

    def staying_jobs(self) -> list[PreparedJob]:
        """The jobs still running after the step being computed: the rows it does not end at
        their max_new_tokens (or cancel), and the group being prefilled."""
        running = [row.item.job for row in self.rows if not row.last_step()]
        return running + [item.job for item in self.prefill_items]

    def start_prefill(self, items: list[_Waiting], jobs: list[PreparedJob]) -> None:
        """Begin prefilling a group (items' jobs, as `jobs`: their pixels maybe on the device)."""
        self.prefill = Prefill(self.engine, jobs)
        self.prefill_items = items

    def take_prefill(self) -> list[_Waiting]:
        """The group being prefilled, no longer prefilling."""
        items, self.prefill, self.prefill_items = self.prefill_items, None, []
        return items

    def join(self, prefill: Prefill, items: list[_Waiting], logits: torch.Tensor) -> None:
        """A finished prefill's jobs join the batch as rows, each with its first token."""
        rows = [Row(item, row_chooser(self.engine, item.job)) for item in items]
        tokens = choose_tokens([r.chooser for r in rows], [[] for _ in rows], logits)
        self.batch.join(prefill, tokens)
        self.rows.extend(rows)
        for row, token in zip(rows, tokens.tolist(), strict=True):
            row.tokens.append(token)

    def decoded(self, logits: torch.Tensor) -> None:
        """Every row picks its next token from a decode step's logits."""
        generated = [row.tokens for row in self.rows]
        tokens = choose_tokens([row.chooser for row in self.rows], generated, logits)
        self.batch.next_tokens = tokens
        for row, token in zip(self.rows, tokens.tolist(), strict=True):
            row.tokens.append(token)

    def leave(self, stats: BatchStats, *, canceled_only: bool = False) -> None:
        """Rows that ended get their results and leave the batch; the others go on."""
        keep: list[int] = []
        for index, row in enumerate(self.rows):
            if not row.ended(self.engine.eos_token_ids, canceled_only=canceled_only):
                keep.append(index)
                continue
            generation = self.engine.result(row.item.job, row.tokens)
            stats.record_job(generation.completion_tokens)
            row.item.future.set_result(generation)
        if len(keep) < len(self.rows):
            self.rows = [self.rows[i] for i in keep]
            self.batch.keep(keep)

    def take_rows(self) -> list[Row]:
        """Every decoding row, out of the batch (its cache emptied)."""
        rows, self.rows = self.rows, []
        self.batch.keep([])
        return rows

    def clear(self) -> list[_Waiting]:
        """Empty the batch and drop the prefill; returns every job that was in either."""
        items = [row.item for row in self.rows] + self.prefill_items
        self.rows, self.prefill, self.prefill_items = [], None, []
        self.batch.keep([])
        return items
