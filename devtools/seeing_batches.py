"""Training examples to the tensors the tiny InternVL reads, exactly as the worker prepares a job.

core.prompts builds each example's conversation (a video job's `Frame1: <image>` lines
included) and worker.preparer its ids and uint8 tiles; the tiles are normalised with the
engine's arithmetic. So training sees what the worker feeds the model at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.prompts import build_conversation
from devtools.seeing_data import IGNORE, Example, label_rows, sequence_targets
from worker.preparer import Preparer


class Batcher:
    """Examples to left-padded model inputs, with the answer to learn and the pictures' labels."""

    def __init__(self, processor: Any) -> None:
        self.preparer = Preparer(processor, model_alias="tiny-seeing", cache_bytes=0)
        self.tokenizer = processor.tokenizer
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.end_image_id = int(self.tokenizer.end_image_token_id)

    def prompt(self, example: Example) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt ids, normalised float tiles) of one example."""
        frames = len(example.images) if example.spec["task"] == "video" else 0
        conversation = build_conversation(example.spec, control_tokens=[], frames=frames)
        ids, tiles, counts = self.preparer.inputs(conversation, example.images, max_tiles=12)
        assert tiles is not None and counts == [1] * len(example.images), "one tile a picture"
        pixels = (tiles.to(torch.float32) - self.preparer.pixel_mean) / self.preparer.pixel_std
        return ids, pixels

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's ids and the end of the turn: what the model learns to say."""
        return [*self.tokenizer.encode(answer, add_special_tokens=False), self.eos_id]

    def training(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Left-padded ids, mask, labels (answer and end of turn only), tiles, picture labels."""
        rows, answers, pixels = [], [], []
        for example in examples:
            ids, tiles = self.prompt(example)
            answer = self.answer_ids(example.answer)
            rows.append([*ids.tolist(), *answer])
            answers.append(len(answer))
            pixels.append(tiles)
        batch = self._padded(rows)
        labels = torch.full_like(batch["input_ids"], -100)
        for i, length in enumerate(answers):
            labels[i, -length:] = batch["input_ids"][i, -length:]
        batch["labels"] = labels
        batch["sequence_labels"] = self._at_picture_ends(batch["input_ids"], examples)
        batch["pixel_values"] = torch.cat(pixels)
        batch["picture_labels"] = label_rows([row for ex in examples for row in ex.labels])
        return batch

    def _at_picture_ends(
        self, input_ids: torch.Tensor, examples: Sequence[Example]
    ) -> torch.Tensor:
        """(rows, positions): each example's sequence targets at its pictures' end tokens."""
        targets = torch.full_like(input_ids, IGNORE)
        for row, example in enumerate(examples):
            ends = (input_ids[row] == self.end_image_id).nonzero().flatten()
            targets[row, ends] = torch.tensor(sequence_targets(example))
        return targets

    def prompts(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Left-padded prompts for greedy generation."""
        prepared = [self.prompt(example) for example in examples]
        batch = self._padded([ids.tolist() for ids, _ in prepared])
        batch["pixel_values"] = torch.cat([tiles for _, tiles in prepared])
        return batch

    def pictures(self, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every picture's normalised tile, and its labels."""
        tiles = torch.cat([self.prompt(example)[1] for example in examples])
        return tiles, label_rows([row for example in examples for row in example.labels])

    def _padded(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return {"input_ids": input_ids, "attention_mask": mask}
