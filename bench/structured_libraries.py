"""`python -m bench.structured --compare-libraries`: llguidance against xgrammar and outlines-core.

On the bench checkpoint's tokenizer (no model is loaded), for the structured presets' schemas:
- compile: the first compile of each schema (cold), and getting a row's grammar state for a
  schema seen before (cached: llguidance's GrammarCache as the worker uses it, xgrammar's
  compiler cache, outlines-core's Index kept by the caller);
- masks: one batch of rows with different schemas, each fed the tokens of a valid document
  for its schema, with the time to fill the next-token bitmask of every row at every step,
  one row after another and, where the library has one, with its parallel batch call;
- checks: every fed token is allowed by its row's mask, and the end token once the JSON is
  complete (a library that fails these is measured on a wrong grammar).

Each library runs in a child process of its own (one at a time, so their thread pools never
compete); a library that is not installed is reported as such, never installed here.
The other two are not project dependencies: `pip install xgrammar outlines-core` to compare.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.tasks import STRUCTURED_PRESETS

LIBRARIES = {"llguidance": "llguidance", "xgrammar": "xgrammar", "outlines-core": "outlines_core"}
CHILD_TIMEOUT_S = 900.0

# Two valid documents per preset (rows of one schema still differ).
_FIELDS = [
    {"name": "Invoice number", "value": "INV-2041"},
    {"name": "Total", "value": "€ 1,280.00"},
]
_SAMPLES: dict[str, list[dict[str, Any]]] = {
    "document_json": [
        {
            "text": "ACME Corp\nInvoice INV-2041\nTotal due: € 1,280.00 by 31 March",
            "document_type": "invoice",
            "fields": _FIELDS,
            "summary": "An invoice from ACME Corp for € 1,280.00, due at the end of March.",
        },
        {
            "text": "Dear Ms Novak, thank you for your letter of 4 May.",
            "document_type": "letter",
            "fields": [],
            "summary": "A short reply to a letter.",
        },
    ],
    "document_type": [
        {"document_type": "receipt", "language": "en"},
        {"document_type": "formulaire", "language": "fr"},
    ],
    "document_fields": [
        {"document_type": "invoice", "fields": _FIELDS},
        {"document_type": "form", "fields": [{"name": "Name", "value": "Jan Novak"}]},
    ],
    "document_summary": [
        {"document_type": "report", "title": "Q3 results", "summary": "Revenue rose 4 %."},
        {"document_type": "letter", "title": "Reply", "summary": "Thanks for the letter."},
    ],
}


@dataclass
class Vocab:
    """What every library needs to know of the tokenizer."""

    hf: Any
    n_vocab: int  # the logits' width
    eos: list[int]


@dataclass
class Row:
    """One constrained row: its library state and the tokens it is fed."""

    state: Any
    tokens: list[int]


@dataclass
class Adapter:
    """One library behind the same five calls."""

    setup_s: float
    compile: Callable[[dict[str, Any]], Any]  # schema -> compiled grammar (cold)
    row: Callable[[dict[str, Any]], Any]  # schema seen before -> a fresh row state (cached)
    fill: Callable[[Any, Any, int], None]  # (state, bitmask, index): one row's mask
    advance: Callable[[Any, int], bool]
    fill_batch: Callable[[list[Any], Any], None] | None = None  # all rows at once, if offered
    notes: dict[str, Any] = field(default_factory=dict)


def _llguidance(vocab: Vocab) -> Adapter:
    import llguidance
    import llguidance.torch

    from worker.structured import GrammarCache

    cache = GrammarCache(vocab.hf, vocab.eos, n_vocab=vocab.n_vocab)
    started = time.perf_counter()
    assert cache.tokenizer is not None
    setup_s = time.perf_counter() - started
    executor = llguidance.LLExecutor()

    def stored(schema: dict[str, Any]) -> dict[str, Any]:
        return {"type": "json_schema", "name": "bench", "schema": schema}

    def fill_batch(states: list[Any], bitmask: Any) -> None:
        llguidance.torch.fill_next_token_bitmask_par(
            executor, [(s, i) for i, s in enumerate(states)], bitmask
        )

    return Adapter(
        setup_s=setup_s,
        compile=lambda schema: cache.matcher(stored(schema)),
        row=lambda schema: cache.matcher(stored(schema)),
        fill=lambda state, bitmask, i: llguidance.torch.fill_next_token_bitmask(state, bitmask, i),
        advance=lambda state, token: bool(state.consume_token(token)),
        fill_batch=fill_batch,
        notes={"batch_call": "LLExecutor fill_next_token_bitmask_par (threads)"},
    )


def _xgrammar(vocab: Vocab) -> Adapter:
    import xgrammar

    started = time.perf_counter()
    info = xgrammar.TokenizerInfo.from_huggingface(
        vocab.hf, vocab_size=vocab.n_vocab, stop_token_ids=vocab.eos
    )
    compiler = xgrammar.GrammarCompiler(info, cache_enabled=True)
    setup_s = time.perf_counter() - started
    batch = xgrammar.BatchGrammarMatcher()

    def compiled(schema: dict[str, Any]) -> Any:
        # Compact JSON, as the worker asks of llguidance.
        return compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(",", ":")
        )

    return Adapter(
        setup_s=setup_s,
        compile=compiled,
        row=lambda schema: xgrammar.GrammarMatcher(compiled(schema)),
        fill=lambda state, bitmask, i: state.fill_next_token_bitmask(bitmask, i),
        advance=lambda state, token: bool(state.accept_token(token)),
        fill_batch=lambda states, bitmask: batch.batch_fill_next_token_bitmask(states, bitmask),
        notes={"batch_call": "BatchGrammarMatcher.batch_fill_next_token_bitmask (threads)"},
    )


def _outlines_core(vocab: Vocab) -> Adapter:
    from outlines_core import Guide, Index, Vocabulary, json_schema
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    started = time.perf_counter()
    # Byte-level BPE: each token's characters stand for bytes (GPT-2's table).
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(vocab.hf.all_special_ids)
    tokens: dict[bytes, list[int]] = {}
    for text, token_id in vocab.hf.get_vocab().items():
        if token_id in special or not all(c in to_byte for c in text):
            continue
        tokens.setdefault(bytes(to_byte[c] for c in text), []).append(token_id)
    vocabulary = Vocabulary(vocab.eos[0], tokens)
    setup_s = time.perf_counter() - started
    indexes: dict[str, Any] = {}

    def compile_index(schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        indexes[key] = Index(json_schema.build_regex_from_schema(json.dumps(schema)), vocabulary)
        return indexes[key]

    def fill(state: Any, bitmask: Any, i: int) -> None:
        row = bitmask[i]
        state.write_mask_into(row.data_ptr(), row.numel(), row.element_size())

    def advance(state: Any, token: int) -> bool:
        try:
            state.advance(token, return_tokens=False)
        except ValueError:  # a token its state has no transition for
            return False
        return True

    return Adapter(
        setup_s=setup_s,
        compile=compile_index,
        row=lambda schema: Guide(indexes[json.dumps(schema, sort_keys=True)]),
        fill=fill,
        advance=advance,
        notes={"batch_call": None, "tokens_mapped": sum(len(v) for v in tokens.values())},
    )


ADAPTERS = {"llguidance": _llguidance, "xgrammar": _xgrammar, "outlines-core": _outlines_core}


def large_tokenizer(size: int, cache_dir: Path) -> Path:
    """A byte-level BPE tokenizer of `size` tokens with InternVL's split and special tokens.

    Trained once (minutes) on about 40 MB of this Python's standard library source and kept in
    cache_dir: a stand-in for the real 151,643-token vocabulary, which is not downloaded here.
    The bench checkpoint's own tokenizer has about 1,600 tokens, and grammar compile and mask
    times grow with the vocabulary.
    """
    from devtools.tiny_model import train_tokenizer

    target = cache_dir / f"bpe-{size}"
    if not (target / "tokenizer_config.json").is_file():
        train_tokenizer(size, _standard_library_text(40_000_000)).save_pretrained(target)
    return target


def _standard_library_text(limit: int) -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    read = 0
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        yield text
        read += len(text)
        if read >= limit:
            return


def _vocab(checkpoint: str) -> Vocab:
    from transformers import AutoConfig, AutoTokenizer

    hf = AutoTokenizer.from_pretrained(checkpoint)
    if (Path(checkpoint) / "config.json").is_file():
        n_vocab = int(AutoConfig.from_pretrained(checkpoint).text_config.vocab_size)
    else:  # a tokenizer alone: logits as wide as the real model's (151,674)
        n_vocab = max(len(hf), 151_674)
    eos = [hf.convert_tokens_to_ids("<|im_end|>"), hf.eos_token_id]
    return Vocab(hf=hf, n_vocab=n_vocab, eos=list(dict.fromkeys(t for t in eos if t is not None)))


def _row_plan(vocab: Vocab, rows: int) -> list[tuple[str, list[int]]]:
    """(preset, tokens of a valid compact document) for each row, cycling through the presets."""
    names = list(STRUCTURED_PRESETS)
    plan = []
    for index in range(rows):
        name = names[index % len(names)]
        sample = _SAMPLES[name][(index // len(names)) % len(_SAMPLES[name])]
        text = json.dumps(sample, separators=(",", ":"), ensure_ascii=False)
        plan.append((name, vocab.hf.encode(text, add_special_tokens=False)))
    return plan


def _allowed(bitmask: Any, index: int, token: int) -> bool:
    return bool((int(bitmask[index, token // 32]) >> (token % 32)) & 1)


def _decode(adapter: Adapter, rows: list[Row], vocab: Vocab, *, batched: bool) -> dict[str, Any]:
    """Feed every row its tokens; time the mask fills; count tokens or ends a mask refused."""
    import torch

    bitmask = torch.zeros((len(rows), (vocab.n_vocab + 31) // 32), dtype=torch.int32)
    fill_s, steps, row_steps, refused = 0.0, 0, 0, 0
    longest = max(len(row.tokens) for row in rows)
    for step in range(longest + 1):  # the last step checks that the end token is allowed
        active = [i for i, row in enumerate(rows) if step <= len(row.tokens)]
        if not active:
            break
        started = time.perf_counter()
        if batched and adapter.fill_batch is not None and len(active) == len(rows):
            adapter.fill_batch([row.state for row in rows], bitmask)
        else:
            for i in active:
                adapter.fill(rows[i].state, bitmask, i)
        fill_s += time.perf_counter() - started
        steps += 1
        row_steps += len(active)
        for i in active:
            row = rows[i]
            if step == len(row.tokens):
                refused += not any(_allowed(bitmask, i, t) for t in vocab.eos)
                continue
            token = row.tokens[step]
            refused += not _allowed(bitmask, i, token)
            adapter.advance(row.state, token)
    return {
        "steps": steps,
        "row_steps": row_steps,
        "ms_per_step": round(fill_s / steps * 1000, 3),
        "us_per_row_mask": round(fill_s / row_steps * 1e6, 1),
        "refused": refused,
    }


def measure(library: str, checkpoint: str, rows: int) -> dict[str, Any]:
    """One library's figures (run in a process of its own)."""
    import torch

    vocab = _vocab(checkpoint)
    adapter = ADAPTERS[library](vocab)
    plan = _row_plan(vocab, rows)
    report: dict[str, Any] = {
        "library": library,
        "version": importlib.metadata.version(library),
        "torch_threads": torch.get_num_threads(),
        "n_vocab": vocab.n_vocab,
        "tokenizer_setup_ms": round(adapter.setup_s * 1000, 1),
        "compile_cold_ms": {},
        "compile_cached_ms": {},
        **adapter.notes,
    }
    for name, (_, schema) in STRUCTURED_PRESETS.items():
        started = time.perf_counter()
        adapter.compile(schema)
        report["compile_cold_ms"][name] = round((time.perf_counter() - started) * 1000, 2)
        started = time.perf_counter()
        adapter.row(schema)
        report["compile_cached_ms"][name] = round((time.perf_counter() - started) * 1000, 3)

    def fresh_rows() -> list[Row]:
        return [Row(adapter.row(STRUCTURED_PRESETS[n][1]), tokens) for n, tokens in plan]

    report["rows"] = [name for name, _ in plan]
    report["masks_first_use"] = _decode(adapter, fresh_rows(), vocab, batched=False)
    report["masks_one_by_one"] = _decode(adapter, fresh_rows(), vocab, batched=False)
    if adapter.fill_batch is not None:
        report["masks_batch_call"] = _decode(adapter, fresh_rows(), vocab, batched=True)
    return report


def compare(
    checkpoint: str,
    rows: int,
    *,
    libraries: dict[str, str] = LIBRARIES,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> dict[str, Any]:
    """Every library that is installed, each in a child process; the others marked missing."""
    results: dict[str, Any] = {}
    for library, module in libraries.items():
        if importlib.util.find_spec(module) is None:
            results[library] = {"installed": False, "note": f"pip install {library} to compare"}
            continue
        command = [sys.executable, "-m", "bench.structured_libraries", library]
        command += ["--checkpoint", checkpoint, "--rows", str(rows)]
        try:
            done = subprocess.run(  # noqa: S603 - this interpreter, this module
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            results[library] = {"installed": True, "error": f"no result within {timeout_s:.0f} s"}
            continue
        if done.returncode != 0:
            results[library] = {"installed": True, "error": done.stderr.strip()[-2000:]}
            continue
        results[library] = json.loads(done.stdout)
    return results


def main(argv: list[str] | None = None) -> int:
    """Measure one library (the child process of compare())."""
    parser = argparse.ArgumentParser(prog="python -m bench.structured_libraries")
    parser.add_argument("library", choices=sorted(LIBRARIES))
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.library, args.checkpoint, args.rows)))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
