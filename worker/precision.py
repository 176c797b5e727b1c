"""How a checkpoint is loaded on this hardware: device, dtype, attention kernel, quantization."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import torch

from core.config import ModelSpec

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Quantizing these would cost accuracy for little memory: the guide keeps them in full precision.
UNQUANTIZED_MODULES = ["vision_tower", "multi_modal_projector", "lm_head"]


@dataclass
class LoadOptions:
    """Resolved loading choices for one worker."""

    device: torch.device
    dtype: torch.dtype
    attn_implementation: str
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[Any, str] | None = None
    quantization_config: Any = None
    offload_folder: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AutoModelForImageTextToText.from_pretrained."""
        kwargs: dict[str, Any] = {
            "dtype": self.dtype,
            "attn_implementation": self.attn_implementation,
        }
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        if self.max_memory is not None:
            kwargs["max_memory"] = self.max_memory
        if self.quantization_config is not None:
            kwargs["quantization_config"] = self.quantization_config
        if self.offload_folder is not None:
            kwargs["offload_folder"] = self.offload_folder
        return kwargs


def pick_device(requested: str = "auto") -> torch.device:
    """cuda:0 when a GPU is visible (the launcher pins one per process), else the CPU."""
    if requested == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(
    spec: ModelSpec, device: torch.device, *, capability: tuple[int, int] | None = None
) -> torch.dtype:
    """bf16 on Ampere or newer, fp16 on older GPUs, fp32 on CPU, unless the registry says."""
    if spec.dtype != "auto":
        return _DTYPES[spec.dtype]
    if device.type != "cuda":
        return torch.float32
    major, _ = capability or torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def flash_attention_installed() -> bool:
    """True when the flash-attn package can be imported."""
    return importlib.util.find_spec("flash_attn") is not None


def pick_attention(
    spec: ModelSpec, device: torch.device, *, flash_installed: bool | None = None
) -> str:
    """flash_attention_2 when installed on a GPU, else PyTorch's sdpa."""
    if spec.attn_implementation != "auto":
        return spec.attn_implementation
    if flash_installed is None:
        flash_installed = flash_attention_installed()
    return "flash_attention_2" if device.type == "cuda" and flash_installed else "sdpa"


def quantization_config(spec: ModelSpec) -> Any:
    """A bitsandbytes config for 8-bit or 4-bit weights, or None."""
    if spec.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=6.0,
            llm_int8_skip_modules=UNQUANTIZED_MODULES,
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_type="nf4",
        llm_int8_skip_modules=UNQUANTIZED_MODULES,
    )


def offloads(spec: ModelSpec) -> bool:
    """True when the registry allows weights outside the GPUs (CPU RAM or a disk folder)."""
    return spec.offload_folder is not None or spec.cpu_offload_memory is not None


def max_memory(spec: ModelSpec, available: dict[Any, Any]) -> dict[Any, Any] | None:
    """Per-device budgets for accelerate, from `available` (its own estimate) and the registry."""
    if spec.max_memory_per_gpu is None and spec.cpu_offload_memory is None:
        return None  # accelerate's defaults: what is free on each GPU, then the CPU's RAM
    budgets = dict(available)
    if spec.max_memory_per_gpu is not None:
        budgets.update({k: spec.max_memory_per_gpu for k in available if isinstance(k, int)})
    if spec.cpu_offload_memory is not None:
        budgets["cpu"] = spec.cpu_offload_memory
    return budgets


def load_options(
    spec: ModelSpec,
    *,
    device: str = "auto",
    available: dict[Any, Any] | None = None,
    capability: tuple[int, int] | None = None,
) -> LoadOptions:
    """Everything needed to load `spec` on this process's device(s).

    A model spread over a group of GPUs (gpus_per_worker > 1), capped per GPU or allowed to
    offload is placed by accelerate's device_map: "balanced" over a group, "auto" otherwise.
    """
    target = pick_device(device)
    options = LoadOptions(
        device=target,
        dtype=pick_dtype(spec, target, capability=capability),
        attn_implementation=pick_attention(spec, target),
        quantization_config=quantization_config(spec),
    )
    grouped = spec.gpus_per_worker > 1 and target.type == "cuda"
    capped = spec.max_memory_per_gpu is not None and target.type == "cuda"
    if grouped or capped or offloads(spec):
        if available is None:
            from accelerate.utils import get_max_memory

            available = get_max_memory()
        options.device_map = "balanced" if grouped else "auto"
        options.max_memory = max_memory(spec, available)
        options.offload_folder = spec.offload_folder
    elif options.quantization_config is not None and target.type == "cuda":
        options.device_map = {"": target.index or 0}
    return options
