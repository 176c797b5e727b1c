"""A job's text holds whole characters only: bytes that form no character are dropped."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from core.prompts import build_conversation
from core.specs import GenerationParams
from worker.engine import complete_text

CLEF = "\U0001d11e"  # four UTF-8 bytes, none of them merged by the tiny tokenizer


def test_split_characters_are_dropped_not_shown_as_replacement(engine: Any) -> None:
    ids = engine.tokenizer.encode(f"ab{CLEF}", add_special_tokens=False)
    assert len(ids) >= 4  # the character is spread over several byte tokens
    cut = engine.tokenizer.decode(ids[:-1])  # a generation stopped inside the character
    assert cut.endswith("\ufffd")
    assert complete_text(cut) == "ab"
    orphan = engine.tokenizer.decode(ids[-1:] + engine.tokenizer.encode("c"))
    assert complete_text(orphan) == "c"
    assert complete_text(engine.tokenizer.decode(ids)) == f"ab{CLEF}"


def test_generated_text_never_holds_broken_characters(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The random-weight model emits byte tokens in any order; record what the tokenizer decodes.
    raw: list[str] = []
    decode = engine.tokenizer.decode

    def recording(*args: Any, **kwargs: Any) -> str:
        raw.append(decode(*args, **kwargs))
        return raw[-1]

    monkeypatch.setattr(engine.tokenizer, "decode", recording)
    spec = {"task": "caption", "images": [0]}
    conversation = build_conversation(spec, control_tokens=engine.control_tokens)
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    texts = []
    for seed in range(12):
        params = GenerationParams(max_new_tokens=4, do_sample=True, temperature=2.0, seed=seed)
        job = engine.prepare(f"job-{seed}", conversation, [image], params)
        texts.append(engine.generate([job])[0].text)
    assert any("\ufffd" in text for text in raw), raw  # the case occurred
    assert not any("\ufffd" in text for text in texts), texts
    assert texts == [text.replace("\ufffd", "").strip() for text in raw]
