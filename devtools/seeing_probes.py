"""Linear probes that guide the tiny InternVL's vision tower while it learns, then are dropped.

Each probe reads every one of a tile's image tokens as the projector hands them to the language
model and predicts one label of the picture (its colour, shape, count, word, or the cell its
shape is in; devtools.seeing_data.LABELS). Training them with the model asks every image token
to carry what the whole picture shows, so the language model finds it wherever it looks. The
shipped checkpoint is the plain InternVL: the probes are not part of it.
"""

from __future__ import annotations

import random

import torch
from torch import nn
from transformers import InternVLForConditionalGeneration

from devtools import seeing_data
from devtools.seeing_batches import Batcher
from devtools.seeing_data import IGNORE, KINDS, LABELS, SEQUENCE_CLASSES


class Probes(nn.Module):
    """One linear head per label over the projector's output, and what it last produced."""

    def __init__(self, hidden: int, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.lr, self.weight_decay = lr, weight_decay
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, size) for name, size in LABELS.items()})
        self.sequence = nn.Linear(hidden, SEQUENCE_CLASSES)
        self.features: torch.Tensor | None = None
        self.states: torch.Tensor | None = None

    def watch(self, model: InternVLForConditionalGeneration) -> None:
        """Keep the projector's output (tiles, tokens, hidden) and the language model's states."""
        model.model.multi_modal_projector.register_forward_hook(self._keep)
        model.model.language_model.norm.register_forward_hook(self._keep_states)

    def _keep(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.features = output

    def _keep_states(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.states = output

    def sequence_loss(self, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the language model's states at pictures' ends (seeing_data targets).

        Asks the language model to compare pictures as it reads them, not only when it answers.
        """
        assert self.states is not None, "the language model has not run"
        if bool((targets == IGNORE).all()):
            return self.states.new_zeros(())
        logits = self.sequence(self.states)
        return nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE
        )

    def loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of every head on every image token; `labels` is (tiles, LABELS)."""
        assert self.features is not None, "no image went through the projector"
        tokens = self.features.shape[1]
        total = self.features.new_zeros(())
        for column, head in enumerate(self.heads.values()):
            target = labels[:, column]
            if bool((target == IGNORE).all()):
                continue
            logits = head(self.features)
            total = total + nn.functional.cross_entropy(
                logits.flatten(0, 1), target.repeat_interleave(tokens), ignore_index=IGNORE
            )
        return total

    def first_stage(
        self,
        model: InternVLForConditionalGeneration,
        batcher: Batcher,
        steps: int,
        batch: int,
        rng: random.Random,
        log_every: int,
    ) -> None:
        """The vision tower, projector and probes alone first: they learn to tell pictures apart."""
        vision = [
            *model.model.vision_tower.parameters(),
            *model.model.multi_modal_projector.parameters(),
        ]
        optimizer = torch.optim.AdamW(
            [*vision, *self.parameters()], lr=self.lr, weight_decay=self.weight_decay
        )
        for step in range(steps):
            kinds = [KINDS[(step * batch + i) % len(KINDS)] for i in range(batch)]
            tiles, labels = batcher.pictures([seeing_data.example(kind, rng) for kind in kinds])
            model.model.get_image_features(pixel_values=tiles)
            loss = self.loss(labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if log_every and (step % log_every == 0 or step == steps - 1):
                print(f"probe step {step}: {loss.item():.3f}")  # noqa: T201


def place_patches(model: InternVLForConditionalGeneration, side: int) -> None:
    """2-D sine-cosine starting position embeddings for a side x side grid of patches.

    InternVL starts them at zero, which leaves a freshly built tower a bag of patches: where a
    shape is, and so which way it moves, would have to be learned from nothing.
    """
    embeddings = model.model.vision_tower.embeddings.position_embeddings
    quarter = embeddings.shape[-1] // 4
    rates = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    cells = torch.arange(side, dtype=torch.float32)
    rows, columns = torch.meshgrid(cells, cells, indexing="ij")
    angles = [axis.flatten()[:, None] * rates[None, :] for axis in (columns, rows)]
    table = torch.cat([f(angle) for angle in angles for f in (torch.sin, torch.cos)], dim=1)
    with torch.no_grad():
        embeddings[0, 1:] = table  # the class token's stays zero
