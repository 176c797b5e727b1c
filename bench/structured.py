"""`python -m bench.structured`: decoding speed with and without a response_format.

One loaded model, one batch of jobs (one tile each), greedy, measured in one process and one
run. `free`: no schema, exactly N new tokens (min_new_tokens = max_new_tokens). `schema`: the
same batch held to a schema whose one string field cannot close within N tokens, so every row
also runs exactly N steps (cut, finish_reason "length"): the ratio of the two is the cost of
masking per step. `mixed`: half the rows constrained. `document_json`: the structured preset,
whose rows end when their JSON does: tokens per second over the tokens actually made.
Also printed: the time to compile a new schema, and to reuse a cached one.
`--compare-libraries` measures the grammar libraries instead (bench.structured_libraries).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from bench.engine import bench_checkpoint, bench_images
from bench.structured_libraries import compare, large_tokenizer
from core.config import ModelSpec
from core.prompts import build_conversation
from core.specs import GenerationParams
from core.tasks import preset_format
from worker.engine import InternVLEngine, PreparedJob

LONG_STRING = {
    "type": "json_schema",
    "name": "long",
    "schema": {
        "type": "object",
        "properties": {"text": {"type": "string", "minLength": 100_000}},
        "required": ["text"],
    },
}


def _jobs(
    engine: InternVLEngine, count: int, params: GenerationParams, fmt: Any, every: int = 1
) -> list[PreparedJob]:
    spec = {"task": "ocr", "images": ["image"]}
    conversation = build_conversation(spec, control_tokens=engine.control_tokens)
    images = bench_images(count, 1, engine.tile_size)
    jobs = []
    for index, image in enumerate(images):
        job = engine.prepare(f"job-{index}", conversation, [image], params)
        job.constraint = engine.constraint_for(fmt if index % every == 0 else None)
        jobs.append(job)
    return jobs


def _run(engine: InternVLEngine, count: int, new_tokens: int, fmt: Any, every: int = 1) -> dict:
    fixed = fmt is None or fmt is LONG_STRING
    params = GenerationParams(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens if fmt is None else 0
    )
    jobs = _jobs(engine, count, params, fmt, every)
    started = time.perf_counter()
    results = engine.generate(jobs)
    seconds = time.perf_counter() - started
    tokens = sum(r.completion_tokens for r in results)
    return {
        "rows": count,
        "fixed_length": fixed,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "finish": sorted({r.finish_reason for r in results}),
    }


def run(checkpoint: str, rows: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    """Every mode `repeats` times (the fastest kept), and the compile and cache-hit times."""
    spec = ModelSpec(alias="bench", checkpoint=checkpoint, dtype="float32")
    engine = InternVLEngine(spec, device="cpu")
    assert engine.grammars.tokenizer is not None  # built once per worker: not a schema's cost
    started = time.perf_counter()
    engine.constraint_for(preset_format("document_json"))
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    engine.constraint_for(preset_format("document_json"))
    cached_s = time.perf_counter() - started
    modes = {
        "free": (None, 1),
        "schema": (LONG_STRING, 1),
        "mixed": (LONG_STRING, 2),
        "document_json": (preset_format("document_json"), 1),
    }
    report: dict[str, Any] = {
        "checkpoint": checkpoint,
        "torch_threads": torch.get_num_threads(),
        "compile_new_schema_ms": round(compile_s * 1000, 1),
        "reuse_cached_schema_ms": round(cached_s * 1000, 3),
    }
    for name, (fmt, every) in modes.items():
        runs = [_run(engine, rows, new_tokens, fmt, every) for _ in range(repeats)]
        report[name] = min(runs, key=lambda r: r["seconds"])
    free = report["free"]["tokens_per_s"]
    for name in ("schema", "mixed", "document_json"):
        report[name]["speed_vs_free"] = round(report[name]["tokens_per_s"] / free, 3)
    return report


def main(argv: list[str] | None = None) -> int:
    """Build (once) the bench checkpoint, measure, print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.structured", description=__doc__)
    parser.add_argument("--preset", default="bench", help="tiny model preset (default: bench)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".bench/models"))
    parser.add_argument("--rows", type=int, default=8, help="jobs in the batch")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compare-libraries",
        action="store_true",
        help="instead: llguidance against xgrammar and outlines-core where installed "
        "(compile and mask times on the checkpoint's tokenizer; bench.structured_libraries)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=0,
        help="with --compare-libraries: use a byte-level BPE tokenizer of this many tokens "
        "(151643: InternVL's), trained once into --cache-dir, instead of the checkpoint's",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    checkpoint = bench_checkpoint(args.preset, args.cache_dir)
    if args.compare_libraries:
        source = large_tokenizer(args.vocab_size, args.cache_dir) if args.vocab_size else checkpoint
        report = compare(str(source), args.rows)
    else:
        report = run(str(checkpoint), args.rows, args.new_tokens, args.repeats)
    print(json.dumps(report, indent=2))  # noqa: T201 - the command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
