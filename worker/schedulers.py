"""Which batcher runs a model: the static Batcher or the ContinuousBatcher, as its registry asks.

`scheduler: continuous` (the default) steps rows in and out of a running batch
(worker.continuous) when the engine can step rows; `scheduler: static` (or an engine that
cannot) batches whole generate() calls (worker.batcher). Both take their limits from the
model's registry entry (core.config.ModelSpec).
"""

from __future__ import annotations

from core.config import ModelSpec
from worker.batcher import Batcher
from worker.continuous import ContinuousBatcher
from worker.engine import InternVLEngine
from worker.staging import make_stager


def make_batcher(engine: InternVLEngine, spec: ModelSpec) -> Batcher:
    """The batcher a model's registry entry asks for: continuous (default) or static."""
    stager = make_stager(engine.device, spec.stage_pixels_mb)  # both copy ahead on a GPU
    if spec.scheduler == "static" or not engine.steps_rows:
        return Batcher(
            engine.generate,
            max_batch_size=spec.max_batch_size,
            max_wait_ms=spec.max_batch_wait_ms,
            max_batch_tiles=spec.max_batch_tiles,
            gap_ms=spec.batch_gap_ms,
            stager=stager,
        )
    return ContinuousBatcher(
        engine,
        max_batch_size=spec.max_batch_size,
        max_wait_ms=spec.max_batch_wait_ms,
        max_batch_tiles=spec.max_batch_tiles,
        gap_ms=spec.batch_gap_ms,
        prefill_tokens_per_step=spec.prefill_tokens_per_step,
        kv_cache_fraction=spec.kv_cache_memory_fraction,
        join_waiting_ratio=spec.join_waiting_ratio,
        join_max_wait_steps=spec.join_max_wait_steps,
        shortest_first=spec.join_order == "shortest",
        overtake_max_ms=spec.join_overtake_max_ms,
        recover_steps=spec.kv_budget_recover_steps,
        recover_factor=spec.kv_budget_recover_factor,
        stager=stager,
    )
