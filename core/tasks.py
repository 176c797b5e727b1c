"""The kinds of job the service runs, and the instructions each uses by default."""

from __future__ import annotations

from enum import StrEnum


class Task(StrEnum):
    """The kinds of job the service runs."""

    CAPTION = "caption"
    VQA = "vqa"
    OCR = "ocr"
    COMPARE = "compare"
    CHAT = "chat"
    PROMPT = "prompt"


# The guide's own instructions for each task.
DEFAULT_INSTRUCTIONS = {
    Task.CAPTION: "Please describe this image in detail.",
    Task.OCR: "Please extract all text from this image and organize it.",
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
