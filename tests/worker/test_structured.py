"""Structured output on the tiny model: random weights, yet every answer is schema-valid JSON."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from core.response_format import format_key
from core.specs import GenerationParams
from core.tasks import preset_format
from tests.support.structured import DOCUMENT_TYPE, TICKET, TICKET_FORMAT
from tests.support.worker import vqa
from worker.continuous import ContinuousBatcher
from worker.engine import InternVLEngine, PreparedJob
from worker.structured import SchemaRefused


# Enums, integers with bounds and required keys: a random model never writes this unaided.
def constrained(
    engine: InternVLEngine, index: int, fmt: dict[str, Any] | None, **params: Any
) -> PreparedJob:
    job = vqa(engine, index, GenerationParams(**params))
    job.constraint = engine.constraint_for(fmt)
    return job


def test_a_schema_the_random_model_cannot_meet_alone_still_yields_matching_json(
    engine: InternVLEngine,
) -> None:
    free = engine.generate([vqa(engine, 0, GenerationParams(max_new_tokens=60))])[0]
    with pytest.raises(ValueError):
        json.loads(free.text)
    result = engine.generate([constrained(engine, 0, TICKET_FORMAT, max_new_tokens=60)])[0]
    assert result.finish_reason == "stop", result
    jsonschema.validate(result.extra["json"], TICKET)
    assert json.loads(result.text) == result.extra["json"]


def test_a_mixed_batch_keeps_free_rows_unchanged_and_constrained_rows_valid(
    engine: InternVLEngine,
) -> None:
    rows = [
        constrained(engine, 0, TICKET_FORMAT, max_new_tokens=60),
        constrained(engine, 1, None, max_new_tokens=16),
        constrained(engine, 2, TICKET_FORMAT, max_new_tokens=60, do_sample=True, seed=3),
        constrained(engine, 3, None, max_new_tokens=16, do_sample=True, seed=4),
        constrained(engine, 4, preset_format("document_type"), max_new_tokens=120),
        constrained(engine, 5, {"type": "json_object"}, max_new_tokens=30),
    ]
    batched = engine.generate(rows)
    for index, schema in ((0, TICKET), (2, TICKET), (4, DOCUMENT_TYPE)):
        assert batched[index].finish_reason == "stop", batched[index]
        jsonschema.validate(batched[index].extra["json"], schema)
    # Unbounded strings let a random model run to the limit: cut, and then no object at all.
    wandering = batched[5]
    assert wandering.text.startswith("{")
    if wandering.finish_reason == "length":
        assert wandering.extra == {}
    else:
        assert isinstance(wandering.extra["json"], dict)
    for index in (1, 3):  # free rows: exactly what they generate alone, no json field
        alone = engine.generate([constrained(engine, index, None, **_params(rows[index]))])[0]
        assert batched[index] == alone and batched[index].extra == {}
    again = engine.generate([constrained(engine, 2, TICKET_FORMAT, **_params(rows[2]))])
    assert again[0] == batched[2]  # a seeded constrained row reproduces alone


def _params(job: PreparedJob) -> dict[str, Any]:
    return job.params.model_dump()


def test_a_row_cut_by_max_new_tokens_is_length_with_no_object(engine: InternVLEngine) -> None:
    result = engine.generate([constrained(engine, 0, TICKET_FORMAT, max_new_tokens=5)])[0]
    assert result.finish_reason == "length" and result.extra == {}
    assert result.completion_tokens == 5


def test_compiled_grammars_are_cached_by_format_hash(engine: InternVLEngine) -> None:
    fmt = {"type": "json_schema", "name": "once", "schema": {"type": "integer"}}
    before = engine.grammars.compiled
    for _ in range(3):
        engine.constraint_for(json.loads(json.dumps(fmt)))  # equal content, new objects
    assert engine.grammars.compiled == before + 1
    assert format_key(fmt) == format_key(dict(reversed(list(fmt.items()))))


def test_a_schema_the_decoder_cannot_compile_is_refused(engine: InternVLEngine) -> None:
    bad = {
        "type": "json_schema",
        "name": "bad",
        "schema": {"type": "string", "minLength": 5, "maxLength": 2},
    }
    with pytest.raises(SchemaRefused):
        engine.constraint_for(bad)


def test_constrained_rows_in_the_continuous_loop_match_their_static_runs(
    engine: InternVLEngine,
) -> None:
    def rows() -> list[PreparedJob]:  # a grammar state is used up by one run: fresh jobs
        return [
            constrained(engine, 0, TICKET_FORMAT, max_new_tokens=60),
            constrained(engine, 1, None, max_new_tokens=16),
            constrained(engine, 2, TICKET_FORMAT, max_new_tokens=60, do_sample=True, seed=3),
            constrained(engine, 4, preset_format("document_type"), max_new_tokens=120),
        ]

    batcher = ContinuousBatcher(engine, max_batch_size=8, max_wait_ms=0, max_batch_tiles=1000)
    futures = [batcher.submit(job) for job in rows()]
    batcher.start()
    results = [future.result(timeout=300) for future in futures]
    batcher.stop()
    for index, schema in ((0, TICKET), (2, TICKET), (3, DOCUMENT_TYPE)):
        assert results[index].finish_reason == "stop", results[index]
        jsonschema.validate(results[index].extra["json"], schema)
    for result, job in zip(results, rows(), strict=True):
        assert result == engine.generate([job])[0]
