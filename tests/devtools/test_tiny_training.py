"""The trained tiny InternVL: shipped for this code, deterministic, and a real "-hf" checkpoint."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from core.config import Settings
from devtools import seeing_data, tiny_training
from devtools.embedded import ensure_tiny_model, tiny_model_dir
from devtools.seeing_batches import Batcher
from devtools.seeing_data import IGNORE, KINDS
from devtools.tiny_training import CONFIG, build_seeing_model, is_current
from tests.support.seeing import RELIABLE


def test_the_shipped_weights_were_trained_by_this_code() -> None:
    # Changing the drawing, preparing or training code changes the key: retrain and ship with
    # `python -m devtools.tiny_training --ship`.
    assert tiny_training.shipped_state() is not None
    assert tiny_training.SHIPPED.stat().st_size <= 2_000_000


def test_the_weights_key_is_the_same_under_every_transformers_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The GPU machines run another transformers release than CI: the shipped weights must
    # still be current there (the model config records the release it was written by).
    key = tiny_training.training_key()
    monkeypatch.setattr("transformers.configuration_utils.__version__", "5.17.0")
    assert tiny_training.training_key() == key


def test_training_is_deterministic() -> None:
    config = replace(CONFIG, steps=2, batch=2, warmup=1, probe_steps=2, probe_batch=2)
    first = tiny_training.train(config, log_every=0)
    second = tiny_training.train(config, log_every=0)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    # the probes that guide training are not part of the model
    plain, _ = tiny_training._new_model(tiny_training.PRESET)
    assert first.keys() == plain.state_dict().keys()


def test_training_examples_are_the_service_prompts_with_the_answer_to_learn() -> None:
    _, processor = tiny_training._new_model(tiny_training.PRESET)
    batcher = Batcher(processor)
    example = seeing_data.example("colour", random.Random(3))
    batch = batcher.training([example])
    labels = batch["labels"][0]
    learned = batch["input_ids"][0][labels != -100].tolist()
    assert processor.tokenizer.decode(learned) == f"{example.answer}<|im_end|>"
    prompt = processor.tokenizer.decode(batch["input_ids"][0][labels == -100])
    assert prompt.endswith(f"{seeing_data.COLOUR_QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    assert batch["picture_labels"].shape == (1, len(seeing_data.LABELS))


def test_a_motion_example_is_a_video_job_on_its_frames_in_order() -> None:
    _, processor = tiny_training._new_model(tiny_training.PRESET)
    example = seeing_data.example("motion", random.Random(5))
    batch = Batcher(processor).training([example])
    prompt = processor.tokenizer.decode(batch["input_ids"][0][batch["labels"][0] == -100])
    frames = [f"Frame{n}: <img>" for n in range(1, seeing_data.FRAMES + 1)]
    assert [line[: len("FrameN: <img>")] for line in prompt.splitlines()[1:5]] == frames
    assert prompt.endswith(f"{seeing_data.MOTION_QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert batch["pixel_values"].shape == (seeing_data.FRAMES, 3, 64, 64)
    # the shape's cell moves the way the answer says, frame by frame
    labels = batch["picture_labels"]
    axis = list(seeing_data.LABELS).index("x" if example.answer in ("left", "right") else "y")
    cells = labels[:, axis].tolist()
    assert IGNORE not in cells
    assert cells == sorted(cells, reverse=example.answer in ("left", "up"))
    assert cells[0] != cells[-1]


def test_the_language_model_is_asked_to_compare_pictures_at_their_ends() -> None:
    _, processor = tiny_training._new_model(tiny_training.PRESET)
    batcher = Batcher(processor)
    rng = random.Random(7)
    examples = [seeing_data.example(kind, rng) for kind in ("odd_one", "motion", "caption")]
    batch = batcher.training(examples)
    targets = batch["sequence_labels"]
    ends = batch["input_ids"] == processor.tokenizer.end_image_token_id
    assert not bool((targets[~ends] != IGNORE).any())  # only at the pictures' end tokens
    odd, motion, caption = (row[row != IGNORE].tolist() for row in targets)
    which = int(examples[0].answer.split()[1])  # "image N differs"
    assert odd == [int(which != 3), 2 + which - 1]  # 2 differs from 1; which one differs
    direction = 5 + seeing_data.DIRECTIONS.index(examples[1].answer)
    assert motion == [direction] * (seeing_data.FRAMES - 1)  # from the second frame on
    assert caption == []
    assert max(odd + motion) < seeing_data.SEQUENCE_CLASSES


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_seeing_model(tmp_path_factory.mktemp("seeing"))


def test_the_built_checkpoint_loads_and_knows_its_key(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_current(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32)
    assert processor.image_processor.size["height"] == 64
    assert model.config.vision_config.image_size == [64, 64]
    (checkpoint / tiny_training.KEY_FILE).write_text("0123\n")
    assert not is_current(checkpoint)
    (checkpoint / tiny_training.KEY_FILE).write_text(tiny_training.training_key() + "\n")


def test_held_out_accuracy_of_the_shipped_weights(checkpoint: Path) -> None:
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32)
    accuracy = tiny_training.evaluate(model, processor, replace(CONFIG, eval_per_kind=20))
    assert set(accuracy) == set(KINDS)
    assert {kind: accuracy[kind] for kind in RELIABLE} == dict.fromkeys(RELIABLE, 1.0)


@pytest.mark.slow  # two checkpoint builds in child processes
def test_dev_mode_rebuilds_a_checkpoint_the_training_code_has_left_behind(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    target = tiny_model_dir(settings)
    ensure_tiny_model(settings)
    assert is_current(target)
    (target / tiny_training.KEY_FILE).write_text("from older training code\n")
    ensure_tiny_model(settings)
    assert is_current(target)
