"""Train the tiny InternVL to see: colours, shapes, counts, words, differences, motion.

The random-weight presets of devtools.tiny_model say nothing true about an image. This module
trains one tiny checkpoint, deterministically on one CPU thread, on pictures devtools.seeing_data
draws, through the service's own path: core.prompts builds each job's conversation and
worker.preparer its ids and uint8 tiles, normalised as the engine does (devtools.seeing_batches).
Linear probes on the image tokens guide the vision tower first, then alongside the answers
(devtools.seeing_probes), and are dropped: the checkpoint is the plain InternVL. The weights
are shipped (devtools/tiny_seeing.safetensors) with a key hashing this code (the four modules),
its configuration, and what devtools.tiny_model builds for it (the tokenizer's vocabulary and
merges, the model config), so that a change there which alters the model also retrains it, and
one that does not (a refactor) does not; a checkpoint is built from the weights when the key
matches and retrained otherwise.

    python -m devtools.tiny_training --ship      # retrain, rewrite the shipped file, print accuracy
    python -m devtools.tiny_training --evaluate  # the shipped weights' held-out accuracy
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig, InternVLForConditionalGeneration

from devtools import seeing_data
from devtools.seeing_batches import Batcher
from devtools.seeing_data import KINDS, Example
from devtools.seeing_probes import Probes, place_patches
from devtools.tiny_model import (
    TinyPreset,
    build_processor,
    model_config,
    train_tokenizer,
)

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

    steps: int = 1700
    batch: int = 32
    vision_lr: float = 3e-3  # vision tower, projector and probes
    text_lr: float = 5e-3  # language model
    warmup: int = 100
    weight_decay: float = 0.01
    probe_steps: int = 200  # the first stage: vision tower, projector and probes alone
    probe_batch: int = 32
    probe_weight: float = 1.0  # the probes' share of the loss in the second stage
    # The kinds a batch draws in turn: the odd one the most, then motion, then captions.
    turn: tuple[str, ...] = (*KINDS, "odd_one", "odd_one", "odd_one", "motion", "motion", "caption")
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
    for module in ("tiny_training.py", "seeing_data.py", "seeing_batches.py", "seeing_probes.py"):
        digest.update(Path(__file__).with_name(module).read_bytes())
    digest.update(repr((asdict(config), PRESET)).encode())
    tokenizer = train_tokenizer(PRESET.bpe_vocab_size)
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    config_dict = model_config(PRESET, tokenizer).to_dict()
    config_dict.pop("transformers_version", None)  # the same model under every supported release
    digest.update(json.dumps(config_dict, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _new_model(preset: TinyPreset) -> tuple[InternVLForConditionalGeneration, Any]:
    tokenizer = train_tokenizer(preset.bpe_vocab_size)
    processor = build_processor(preset, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = InternVLForConditionalGeneration(model_config(preset, tokenizer))
    place_patches(model, preset.tile_size // preset.patch_size)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, processor


def _optimizer(
    model: torch.nn.Module, probes: torch.nn.Module, config: TrainConfig
) -> torch.optim.Optimizer:
    vision: list[torch.nn.Parameter] = list(probes.parameters())
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


def _draw(step: int, config: TrainConfig, rng: random.Random) -> list[Example]:
    """A batch holding every kind in turn (the turn starts where the last batch's ended)."""
    first, turn = step * config.batch, config.turn
    return [seeing_data.example(turn[(first + i) % len(turn)], rng) for i in range(config.batch)]


def _answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on the answer tokens, with logits computed for the answer's end only."""
    labels = batch.pop("labels")
    width = int((labels != -100).sum(dim=1).max())  # answers end every row (left padding)
    logits = model(**batch, logits_to_keep=width + 1).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), labels[:, -width:].flatten(), ignore_index=-100
    )


def _train(config: TrainConfig, log_every: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(config.seed)
    model, processor = _new_model(PRESET)
    batcher = Batcher(processor)
    probes = Probes(PRESET.text_hidden, config.vision_lr, config.weight_decay)
    probes.watch(model)
    rng = random.Random(config.seed)  # noqa: S311 - drawing pictures, not cryptography
    model.train()
    probes.first_stage(model, batcher, config.probe_steps, config.probe_batch, rng, log_every)
    optimizer = _optimizer(model, probes, config)
    bases = [group["lr"] for group in optimizer.param_groups]
    started, recent = time.monotonic(), {"answer": 0.0, "probes": 0.0}
    for step in range(config.steps):
        batch = batcher.training(_draw(step, config, rng))
        picture_labels, sequence = batch.pop("picture_labels"), batch.pop("sequence_labels")
        for group, base in zip(optimizer.param_groups, bases, strict=True):
            group["lr"] = base * _schedule(step, config)
        answer = _answer_loss(model, batch)
        probe = probes.loss(picture_labels) + probes.sequence_loss(sequence)
        optimizer.zero_grad(set_to_none=True)
        (answer + config.probe_weight * probe).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        for name, value in (("answer", answer.item()), ("probes", probe.item())):
            recent[name] = value if step == 0 else 0.9 * recent[name] + 0.1 * value
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
