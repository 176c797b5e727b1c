"""The locally built tiny InternVL loads and behaves like a real "-hf" checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from devtools.tiny_model import CHAT_TEMPLATE, PRESETS, build_tiny_model, parameter_count

# What save_pretrained writes for a real InternVL "-hf" checkpoint in transformers 5.
CHECKPOINT_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), preset="test", seed=0)


@pytest.fixture
def loaded(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32)
    return processor, model.eval()


def noise_image(seed: int, width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_prompt(processor: Any, question: str) -> str:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def generate(processor: Any, model: Any, images: list[Image.Image], prompts: list[str]) -> Any:
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return output[:, inputs["input_ids"].shape[1] :]


def up_to_eos(tokens: list[int], eos_ids: list[int]) -> list[int]:
    """Cut a batched row after its first end token: generate pads finished rows meanwhile."""
    ends = [i for i, token in enumerate(tokens) if token in eos_ids]
    return tokens[: ends[0] + 1] if ends else tokens


def test_checkpoint_has_exactly_the_files_of_a_real_one(checkpoint: Path) -> None:
    assert {path.name for path in checkpoint.iterdir()} == CHECKPOINT_FILES


def test_loads_through_auto_classes_as_internvl(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    assert type(processor).__name__ == "InternVLProcessor"
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert type(processor.image_processor).__name__ == "GotOcr2ImageProcessor"
    assert processor.image_processor.size.height == PRESETS["test"].tile_size
    assert processor.image_seq_length == model.config.image_seq_length == 16


def test_special_tokens_round_trip(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    tokenizer = processor.tokenizer
    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    }
    for attribute, token in named.items():
        assert getattr(tokenizer, attribute) == token
        assert getattr(tokenizer, f"{attribute}_id") == tokenizer.convert_tokens_to_ids(token)
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\n猫 cat<|im_end|>\n"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(tokenizer.context_image_token_id) == 1
    assert model.config.image_token_id == tokenizer.context_image_token_id
    assert model.generation_config.eos_token_id == [
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    ]
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.padding_side == "left"


def test_processor_output_has_no_token_type_ids(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    inputs = processor(
        images=[noise_image(0, 100, 100)],
        text=[image_prompt(processor, "Describe the image.")],
        return_tensors="pt",
    )
    assert set(inputs.keys()) == {"input_ids", "attention_mask", "pixel_values"}
    tiles = inputs["pixel_values"].shape[0]
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == tiles * processor.image_seq_length


def test_chat_template_renders_internvl_format(loaded: tuple[Any, Any]) -> None:
    processor, _ = loaded
    assert processor.chat_template == CHAT_TEMPLATE
    assert image_prompt(processor, "Describe the image.") == (
        "<|im_start|>user\n<IMG_CONTEXT>\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_different_images_give_different_varied_output(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    prompt = image_prompt(processor, "Describe the image.")
    photo = generate(processor, model, [noise_image(1, 640, 480)], [prompt])[0].tolist()
    icon = generate(processor, model, [noise_image(2, 100, 100)], [prompt])[0].tolist()
    assert photo != icon
    assert len(set(photo)) > 1
    assert len(set(icon)) > 1


def test_vision_position_embeddings_and_cls_token_are_random(loaded: tuple[Any, Any]) -> None:
    _, model = loaded
    embeddings = model.model.vision_tower.embeddings
    init_std = PRESETS["test"].init_std
    for weights in (embeddings.position_embeddings, embeddings.cls_token):
        assert 0.5 * init_std < float(weights.detach().std()) < 1.5 * init_std


def test_batched_greedy_equals_single(loaded: tuple[Any, Any]) -> None:
    processor, model = loaded
    images = [noise_image(1, 640, 480), noise_image(2, 100, 100), noise_image(3, 300, 120)]
    questions = [
        "Describe the image.",
        "What is in this picture? Answer in one sentence.",
        "这是什么？",
    ]
    prompts = [image_prompt(processor, question) for question in questions]
    eos_ids = model.generation_config.eos_token_id
    batched = generate(processor, model, images, prompts)
    for row, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        single = generate(processor, model, [image], [prompt])[0].tolist()
        assert up_to_eos(batched[row].tolist(), eos_ids) == single


def test_same_seed_gives_identical_files_and_other_seed_other_weights(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", preset="test", seed=7)
    again = build_tiny_model(tmp_path / "b", preset="test", seed=7)
    other = build_tiny_model(tmp_path / "c", preset="test", seed=8)
    for name in CHECKPOINT_FILES:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    weights = (first / "model.safetensors").read_bytes()
    assert weights != (other / "model.safetensors").read_bytes()


def test_preset_sizes() -> None:
    assert 20e6 <= parameter_count("bench") <= 30e6
    assert 0.9e9 <= parameter_count("internvl3-1b") <= 1.0e9
    assert [PRESETS[name].image_seq_length for name in ("test", "bench", "internvl3-1b")] == [
        16,
        64,
        256,
    ]
