"""Train the tiny InternVL to see: colours, shapes, counts, printed words and odd pictures out.

The random-weight presets of devtools.tiny_model say nothing true about an image. This module
trains one tiny checkpoint, deterministically on one CPU thread, on pictures devtools.seeing_data
draws, through the service's own path: core.prompts builds each job's conversation and
worker.preparer its ids and uint8 tiles, normalised as the engine does. The weights are shipped
(devtools/tiny_seeing.safetensors) with a key hashing this code, its configuration, and what
devtools.tiny_model builds for it (the tokenizer's vocabulary and merges, the model config),
so that a change there which alters the model also retrains it, and one that does not (a
refactor) does not; a checkpoint is built from the weights when the key matches and
retrained otherwise.

    python -m devtools.tiny_training --ship      # retrain, rewrite the shipped file, print accuracy
    python -m devtools.tiny_training --evaluate  # the shipped weights' held-out accuracy
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig, InternVLForConditionalGeneration

from core.prompts import build_conversation
from devtools import seeing_data
from devtools.seeing_data import KINDS, Example
from devtools.tiny_model import (
    TinyPreset,
    build_processor,
    model_config,
    train_tokenizer,
)
from worker.preparer import Preparer

SHIPPED = Path(__file__).with_name("tiny_seeing.safetensors")
KEY_FILE = "seeing.key"  # in a built checkpoint: the key its weights were trained under

# The "test" preset's tile and vocabulary, a wider vision tower, a narrow language model.
PRESET = TinyPreset(
    tile_size=64, patch_size=8, vision_hidden=64, vision_layers=3, vision_heads=4,
    vision_intermediate=128, text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2,
    text_intermediate=128, bpe_vocab_size=1024, init_std=0.02,
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything training depends on besides the code."""

    steps: int = 1200
    batch: int = 32
    vision_lr: float = 3e-3  # vision tower and projector
    text_lr: float = 1e-3  # language model
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    eval_per_kind: int = 100
    eval_seed: int = 10_000


CONFIG = TrainConfig()


def training_key(config: TrainConfig = CONFIG) -> str:
    """A hash of the code that draws and trains, its configuration, and the model it starts from.

    The starting model enters by what the builder makes (the tokenizer, the model config; a
    few tens of milliseconds), not by the builder's source.
    """
    digest = hashlib.sha256()
    for module in ("tiny_training.py", "seeing_data.py"):
        digest.update(Path(__file__).with_name(module).read_bytes())
    digest.update(repr((asdict(config), PRESET)).encode())
    tokenizer = train_tokenizer(PRESET.bpe_vocab_size)
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(model_config(PRESET, tokenizer).to_json_string(use_diff=False).encode())
    return digest.hexdigest()[:16]


def _new_model(preset: TinyPreset) -> tuple[InternVLForConditionalGeneration, Any]:
    tokenizer = train_tokenizer(preset.bpe_vocab_size)
    processor = build_processor(preset, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = InternVLForConditionalGeneration(model_config(preset, tokenizer))
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, processor


class Batcher:
    """Examples to the tensors the model reads, exactly as the worker prepares a job."""

    def __init__(self, processor: Any) -> None:
        self.preparer = Preparer(processor, model_alias="tiny-seeing", cache_bytes=0)
        self.tokenizer = processor.tokenizer
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.eos_id = int(self.tokenizer.eos_token_id)

    def prompt(self, example: Example) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt ids, normalised float tiles) of one example."""
        conversation = build_conversation(example.spec, control_tokens=[])
        ids, tiles, _ = self.preparer.inputs(conversation, example.images, max_tiles=12)
        assert tiles is not None
        pixels = (tiles.to(torch.float32) - self.preparer.pixel_mean) / self.preparer.pixel_std
        return ids, pixels

    def answer_ids(self, answer: str) -> list[int]:
        return [*self.tokenizer.encode(answer, add_special_tokens=False), self.eos_id]

    def training(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Left-padded ids, mask, labels (answer and end of turn only) and tiles."""
        rows, targets, pixels = [], [], []
        for example in examples:
            ids, tiles = self.prompt(example)
            answer = self.answer_ids(example.answer)
            rows.append([*ids.tolist(), *answer])
            targets.append([-100] * len(ids) + answer)
            pixels.append(tiles)
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
            input_ids[i, width - len(row) :] = torch.tensor(row)
            labels[i, width - len(row) :] = torch.tensor(target)
            mask[i, width - len(row) :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": labels,
            "pixel_values": torch.cat(pixels),
        }

    def prompts(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Left-padded prompts for greedy generation."""
        prepared = [self.prompt(example) for example in examples]
        width = max(len(ids) for ids, _ in prepared)
        input_ids = torch.full((len(prepared), width), self.pad_id)
        mask = torch.zeros((len(prepared), width), dtype=torch.long)
        for i, (ids, _) in enumerate(prepared):
            input_ids[i, width - len(ids) :] = ids
            mask[i, width - len(ids) :] = 1
        pixels = torch.cat([tiles for _, tiles in prepared])
        return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixels}


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    vision: list[torch.nn.Parameter] = []
    text: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        (text if ".language_model." in f".{name}" or "lm_head" in name else vision).append(
            parameter
        )
    return torch.optim.AdamW(
        [{"params": vision, "lr": config.vision_lr}, {"params": text, "lr": config.text_lr}],
        weight_decay=config.weight_decay,
    )


def _schedule(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return max(0.05, 1.0 - progress)


def train(config: TrainConfig = CONFIG, *, log_every: int = 100) -> dict[str, torch.Tensor]:
    """Train from scratch on one thread; returns the state dict, the same for a given config."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(config, log_every)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(config: TrainConfig, log_every: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(config.seed)
    model, processor = _new_model(PRESET)
    batcher = Batcher(processor)
    optimizer = _optimizer(model, config)
    bases = [group["lr"] for group in optimizer.param_groups]
    rng = random.Random(config.seed)  # noqa: S311 - drawing pictures, not cryptography
    model.train()
    started = time.monotonic()
    recent: dict[str, float] = {}
    for step in range(config.steps):
        kind = KINDS[step % len(KINDS)]
        batch = batcher.training([seeing_data.example(kind, rng) for _ in range(config.batch)])
        for group, base in zip(optimizer.param_groups, bases, strict=True):
            group["lr"] = base * _schedule(step, config)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent[kind] = 0.9 * recent.get(kind, loss.item()) + 0.1 * loss.item()
        if log_every and (step % log_every == 0 or step == config.steps - 1):
            losses = " ".join(f"{name} {value:.3f}" for name, value in recent.items())
            print(f"step {step} ({time.monotonic() - started:.0f} s): {losses}")  # noqa: T201
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@torch.no_grad()
def evaluate(
    model: InternVLForConditionalGeneration, processor: Any, config: TrainConfig = CONFIG
) -> dict[str, float]:
    """Exact-answer accuracy per kind on pictures drawn with a seed training never uses."""
    model.eval()
    batcher = Batcher(processor)
    rng = random.Random(config.eval_seed)  # noqa: S311 - drawing pictures, not cryptography
    accuracy: dict[str, float] = {}
    for kind in KINDS:
        examples = [seeing_data.example(kind, rng) for _ in range(config.eval_per_kind)]
        right = 0
        for start in range(0, len(examples), 50):
            chunk = examples[start : start + 50]
            inputs = batcher.prompts(chunk)
            out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
            texts = processor.tokenizer.batch_decode(
                out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            right += sum(text.strip() == ex.answer for text, ex in zip(texts, chunk, strict=True))
        accuracy[kind] = right / len(examples)
    return accuracy


def shipped_state() -> dict[str, torch.Tensor] | None:
    """The shipped weights when they were trained by this code and configuration."""
    if not SHIPPED.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(SHIPPED), framework="pt") as handle:
        key = (handle.metadata() or {}).get("key")
    return load_file(str(SHIPPED)) if key == training_key() else None


def build_seeing_model(out_dir: str | Path) -> Path:
    """Write the trained tiny checkpoint to `out_dir` (from the shipped weights, or trained)."""
    out_path = Path(out_dir)
    state = shipped_state()
    if state is None:
        state = train()
    model, processor = _new_model(PRESET)
    model.load_state_dict(state)
    model.save_pretrained(out_path)
    processor.save_pretrained(out_path)
    (out_path / KEY_FILE).write_text(training_key() + "\n")
    return out_path


def is_current(checkpoint: str | Path) -> bool:
    """Whether a built checkpoint holds the weights this code trains."""
    path = Path(checkpoint) / KEY_FILE
    return path.is_file() and path.read_text().strip() == training_key()


def ship(config: TrainConfig = CONFIG) -> dict[str, float]:
    """Retrain, write the shipped weights with their key, and return held-out accuracies."""
    state = _timed_training(config)
    save_file(state, str(SHIPPED), metadata={"key": training_key(config)})
    print(f"wrote {SHIPPED} ({SHIPPED.stat().st_size} bytes)")  # noqa: T201
    model, processor = _new_model(PRESET)
    model.load_state_dict(state)
    return evaluate(model, processor, config)


def _timed_training(config: TrainConfig) -> dict[str, torch.Tensor]:
    wall, cpu = time.monotonic(), time.process_time()
    state = train(config)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    print(f"trained {config.steps} steps: {wall:.0f} s wall, {cpu:.0f} s CPU")  # noqa: T201
    return state


def main(argv: Sequence[str] | None = None) -> int:
    """Train (--ship: and rewrite the shipped weights), then print held-out accuracy per kind.

    --evaluate: print the shipped weights' accuracy, without training.
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--ship", action="store_true")
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument("--steps", type=int, default=CONFIG.steps)
    args = parser.parse_args(argv)
    config = TrainConfig(**{**asdict(CONFIG), "steps": args.steps})
    shipped = shipped_state() if args.evaluate else None
    if args.evaluate and shipped is None:
        parser.error("the shipped weights were not trained by this code; train with --ship")
    if shipped is not None:
        model, processor = _new_model(PRESET)
        model.load_state_dict(shipped)
        accuracy = evaluate(model, processor, config)
    elif args.ship:
        accuracy = ship(config)
    else:
        state = _timed_training(config)
        model, processor = _new_model(PRESET)
        model.load_state_dict(state)
        accuracy = evaluate(model, processor, config)
    for kind, value in accuracy.items():
        print(f"{kind:8s} {value:.2f}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
