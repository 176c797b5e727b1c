"""Loading choices: precision and attention from the hardware, quantization, device_map, offload."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from core.config import ModelSpec
from core.specs import GenerationParams
from tests.support.worker import vqa
from worker.engine import InternVLEngine
from worker.precision import (
    UNQUANTIZED_MODULES,
    load_options,
    pick_attention,
    pick_dtype,
    quantization_config,
)

GPU = torch.device("cuda:0")
CPU = torch.device("cpu")


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec(alias="m", checkpoint="OpenGVLab/InternVL3-1B-hf", **fields)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16), ((7, 5), torch.float16)],
    ids=["ampere", "hopper", "turing"],
)
def test_gpu_precision_follows_the_compute_capability(
    capability: tuple[int, int], expected: torch.dtype
) -> None:
    assert pick_dtype(spec(), GPU, capability=capability) == expected


def test_cpu_runs_in_float32_and_the_registry_can_override() -> None:
    assert pick_dtype(spec(), CPU) == torch.float32
    assert pick_dtype(spec(dtype="float16"), GPU, capability=(9, 0)) == torch.float16


def test_attention_is_sdpa_unless_flash_attention_is_installed_on_a_gpu() -> None:
    assert pick_attention(spec(), GPU, flash_installed=False) == "sdpa"
    assert pick_attention(spec(), GPU, flash_installed=True) == "flash_attention_2"
    assert pick_attention(spec(), CPU, flash_installed=True) == "sdpa"
    assert pick_attention(spec(attn_implementation="eager"), GPU) == "eager"


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantization_keeps_the_vision_tower_and_projector_in_full_precision(
    bits: str, engine: InternVLEngine
) -> None:
    config = quantization_config(spec(quantization=bits))
    assert config.llm_int8_skip_modules == UNQUANTIZED_MODULES
    assert config.load_in_8bit == (bits == "8bit") and config.load_in_4bit == (bits == "4bit")
    if bits == "8bit":
        assert config.llm_int8_threshold == 6.0
    names = [name for name, _ in engine.model.named_parameters()]
    skipped = [n for n in names if any(module in n for module in UNQUANTIZED_MODULES)]
    assert any("vision_tower" in n for n in skipped)
    assert any("multi_modal_projector" in n for n in skipped)
    assert all("language_model" in n for n in set(names) - set(skipped))  # only the LLM shrinks
    assert quantization_config(spec()) is None


def test_a_group_of_gpus_loads_balanced_with_per_gpu_budgets() -> None:
    available = {0: 80 * 2**30, 1: 80 * 2**30, "cpu": 500 * 2**30}
    grouped = spec(gpus_per_worker=2, max_memory_per_gpu="70GiB", cpu_offload_memory="200GiB")
    options = load_options(grouped, device="cuda:0", available=available, capability=(9, 0))
    assert options.device_map == "balanced"
    assert options.max_memory == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    assert options.from_pretrained_kwargs()["device_map"] == "balanced"
    plain = load_options(
        spec(gpus_per_worker=2), device="cuda:0", available=available, capability=(9, 0)
    )
    assert (plain.device_map, plain.max_memory) == ("balanced", None)  # accelerate's defaults


def test_one_gpu_without_offload_loads_whole() -> None:
    options = load_options(spec(), device="cuda:0", available={}, capability=(9, 0))
    assert (options.device_map, options.max_memory, options.offload_folder) == (None, None, None)
    quantized = load_options(
        spec(quantization="8bit"), device="cuda:0", available={}, capability=(9, 0)
    )
    assert quantized.device_map == {"": 0}


def test_offload_to_cpu_and_disk_loads_the_tiny_model_with_the_same_output(
    tiny_model_path: Path, tmp_path: Path, engine: InternVLEngine
) -> None:
    offloaded = ModelSpec(
        alias="tiny",
        checkpoint=str(tiny_model_path),
        tile_size=64,
        cpu_offload_memory="600KB",  # about half of the tiny model's weights
        offload_folder=str(tmp_path / "offload"),
    )
    spread = InternVLEngine(offloaded, device="cpu")
    placement = Counter(spread.model.hf_device_map.values())
    assert set(placement) == {"cpu", "disk"}
    for index in range(3):
        params = GenerationParams(max_new_tokens=8)
        job = vqa(spread, index, params)
        assert spread.generate([job]) == engine.generate([vqa(engine, index, params)])
