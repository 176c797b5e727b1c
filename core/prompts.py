"""Turning a job's stored spec into the chat conversation InternVL reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.tasks import COMPARE_INSTRUCTION, DEFAULT_INSTRUCTIONS, PRESETS, Task

# Text a user sends must never become one of the model's control tokens.
_ZERO_WIDTH_SPACE = "\u200b"


def neutralize(text: str, control_tokens: list[str]) -> str:
    """Break every control token in user text so the tokenizer reads it as plain text."""
    for token in sorted(control_tokens, key=len, reverse=True):
        if token and token in text:
            text = text.replace(token, token[0] + _ZERO_WIDTH_SPACE + token[1:])
    return text


@dataclass(frozen=True)
class Conversation:
    """HF chat messages with image items, and which job image each item shows, in order."""

    messages: list[dict[str, Any]]
    image_order: list[int]


def instruction_for(spec: dict[str, Any]) -> str:
    """The instruction text of a single-turn task."""
    task = Task(spec["task"])
    if task in (Task.VQA, Task.VIDEO) and spec.get("question"):
        return str(spec["question"])
    if spec.get("prompt"):
        return str(spec["prompt"])
    if task == Task.PROMPT:
        return PRESETS[spec["preset"]]
    if task == Task.COMPARE:
        count = len(spec["images"])
        return COMPARE_INSTRUCTION[2] if count == 2 else COMPARE_INSTRUCTION["many"]
    return DEFAULT_INSTRUCTIONS[task]


def build_conversation(
    spec: dict[str, Any], *, control_tokens: list[str], frames: int = 0
) -> Conversation:
    """The conversation for a job: images first then the instruction, the chat as sent, or a
    video's `frames` sampled frames then the instruction."""
    if Task(spec["task"]) == Task.CHAT:
        return _chat_conversation(spec["messages"], control_tokens)
    if Task(spec["task"]) == Task.VIDEO:
        return video_conversation(neutralize(instruction_for(spec), control_tokens), frames)
    images = list(range(len(spec["images"])))
    content: list[dict[str, Any]] = [{"type": "image"} for _ in images]
    content.append({"type": "text", "text": neutralize(instruction_for(spec), control_tokens)})
    return Conversation([{"role": "user", "content": content}], images)


def video_conversation(instruction: str, frames: int) -> Conversation:
    """InternVL's video prompt: `Frame1: <image>`, `Frame2: <image>`, ... one line each, then
    the instruction (the chat template ends each image with a newline)."""
    content: list[dict[str, Any]] = []
    for number in range(1, frames + 1):
        content += [{"type": "text", "text": f"Frame{number}: "}, {"type": "image"}]
    content.append({"type": "text", "text": instruction})
    return Conversation([{"role": "user", "content": content}], list(range(frames)))


def _chat_conversation(messages: list[dict[str, Any]], control_tokens: list[str]) -> Conversation:
    rendered: list[dict[str, Any]] = []
    order: list[int] = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts: list[dict[str, Any]] = []
        for part in content:
            if part["type"] == "image":
                order.append(int(part["image"]))
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": neutralize(part["text"], control_tokens)})
        rendered.append({"role": message["role"], "content": parts})
    return Conversation(rendered, order)
