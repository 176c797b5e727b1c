"""The kinds of job the service runs, and the instructions each uses by default."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Task(StrEnum):
    """The kinds of job the service runs."""

    CAPTION = "caption"
    VQA = "vqa"
    OCR = "ocr"
    COMPARE = "compare"
    CHAT = "chat"
    PROMPT = "prompt"
    VIDEO = "video"


# The guide's own instructions for each task.
DEFAULT_INSTRUCTIONS = {
    Task.CAPTION: "Please describe this image in detail.",
    Task.OCR: "Please extract all text from this image and organize it.",
    Task.VIDEO: "Describe this video in detail.",
}
COMPARE_INSTRUCTION = {
    2: "Compare these two images. Describe their similarities and differences.",
    "many": "Compare these images. Describe their similarities and differences.",
}

# Named instructions for task=prompt: the guide's application recipes.
PRESETS: dict[str, str] = {
    "document_extraction": (
        "This is a document. Extract all of its text, state the document type, list the key "
        "fields with their values, and give a short summary."
    ),
    "product_description": (
        "Write an appealing e-commerce product description for the item in this image: "
        "what it is, its main features, materials, colours and suitable uses."
    ),
    "medical_description": (
        "Describe this medical image objectively: modality, anatomy shown and visible "
        "findings. This description is for reference only and is not a diagnosis."
    ),
    "exercise_solving": (
        "Read the exercise in this image, then solve it step by step and state the final answer."
    ),
}

_FIELDS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 100},
            "value": {"type": "string", "maxLength": 1000},
        },
        "required": ["name", "value"],
        "additionalProperties": False,
    },
}
# Bounded strings: an answer that wanders still ends, as JSON, within max_new_tokens.
_DOCUMENT_TYPE = {
    "type": "string",
    "maxLength": 40,
    "description": "e.g. invoice, receipt, letter, form",
}

# Presets whose answer is JSON: the instruction, and the schema the worker holds it to.
STRUCTURED_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "document_json": (
        "This is a document. Answer in JSON: all of its text, the document type, the key "
        "fields with their values, and a short summary.",
        {
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "document_type": _DOCUMENT_TYPE,
                "fields": _FIELDS_SCHEMA,
                "summary": {"type": "string", "maxLength": 2000},
            },
            "required": ["text", "document_type", "fields", "summary"],
            "additionalProperties": False,
        },
    ),
    "document_type": (
        "What kind of document is this? Answer in JSON with its type and language.",
        {
            "type": "object",
            "properties": {
                "document_type": _DOCUMENT_TYPE,
                "language": {"type": "string", "maxLength": 20},
            },
            "required": ["document_type", "language"],
            "additionalProperties": False,
        },
    ),
    "document_fields": (
        "List the key fields of this document (names and values) in JSON.",
        {
            "type": "object",
            "properties": {"document_type": _DOCUMENT_TYPE, "fields": _FIELDS_SCHEMA},
            "required": ["document_type", "fields"],
            "additionalProperties": False,
        },
    ),
    "document_summary": (
        "Summarise this document in JSON: its type, a title and a short summary.",
        {
            "type": "object",
            "properties": {
                "document_type": _DOCUMENT_TYPE,
                "title": {"type": "string", "maxLength": 200},
                "summary": {"type": "string", "maxLength": 2000},
            },
            "required": ["document_type", "title", "summary"],
            "additionalProperties": False,
        },
    ),
}
PRESETS.update({name: instruction for name, (instruction, _) in STRUCTURED_PRESETS.items()})


def preset_format(preset: str | None) -> dict[str, Any] | None:
    """The stored response_format a structured preset brings (None for a free-text one)."""
    if preset not in STRUCTURED_PRESETS:
        return None
    return {"type": "json_schema", "name": preset, "schema": STRUCTURED_PRESETS[preset][1]}
