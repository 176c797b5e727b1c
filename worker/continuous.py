"""Continuous (iteration-level) batching: jobs join and leave the running batch at every step.

The model thread loops over steps. Each step first admits waiting jobs, shortest first (up to
max_batch_size rows, max_batch_tiles tiles per group, and the KV-cache token budget with the
prefill's activations; into a running batch only once enough are waiting or the oldest has
waited long enough: worker.admission), advances
the prefill of the newest group by at most prefill_tokens_per_step padded tokens (all at once
when nothing is decoding, as nobody waits then), moves a finished prefill into the running
batch, then decodes one token for every running row. A row that ends (end token, its
max_new_tokens, a cancel) leaves on that step: its job gets its Generation and its cache rows
are freed.

On a GPU with `stage_pixels_mb`, the pixels of the group expected to join next are copied to
the device during the decode step before it joins (worker.staging), so its prefill finds them
there.

Beam search keeps the static path: a beam job runs through `generate` once the running batch
has drained (the oldest job decides, so neither kind starves the other).

The rows themselves (their tokens, how each picks the next, the model's cache of them) are
worker.running_rows'; which batcher a model gets is worker.schedulers' choice.
"""

from __future__ import annotations

import logging
import time

import torch

from worker.admission import Admission, PrefillCost
from worker.batcher import (
    Batcher,
    OutOfMemory,
    _free_accelerator_memory,
    _Waiting,
    is_out_of_memory,
)
from worker.decode import Prefill, RunningBatch, kv_budget_tokens, prefill_cost
from worker.engine import InternVLEngine, PreparedJob
from worker.running_rows import RunningRows
from worker.staging import Stager

log = logging.getLogger("worker.continuous")
ROWS = ("rows",)  # the batch key of every num_beams=1 job (worker/sampling.batch_key)


class ContinuousBatcher(Batcher):
    """A Batcher whose model thread runs continuous batching on the engine (same interface)."""

    def __init__(
        self,
        engine: InternVLEngine,
        *,
        max_batch_size: int,
        max_wait_ms: int,
        max_batch_tiles: int,
        gap_ms: int | None = None,
        prefill_tokens_per_step: int = 1024,
        kv_cache_fraction: float = 0.8,
        kv_budget: int | None = None,
        join_waiting_ratio: float = 0.3,
        join_max_wait_steps: int = 20,
        shortest_first: bool = True,
        overtake_max_ms: int = 30_000,
        recover_steps: int = 200,
        recover_factor: float = 1.25,
        cost: PrefillCost | None = None,
        stager: Stager | None = None,
    ) -> None:
        # The policy holds the batch limits (the properties below), so it exists first.
        self.admission = Admission(
            max_batch_size=max_batch_size,
            max_batch_tiles=max_batch_tiles,
            prefill_tokens_per_step=prefill_tokens_per_step,
            # Measured once the model is loaded, so the weights are not counted as free memory;
            # the device memory staged pixels may hold is kept out of the cache's share.
            kv_budget=kv_budget
            or kv_budget_tokens(
                engine,
                kv_cache_fraction,
                reserved_bytes=stager.limit_bytes if stager is not None else 0,
            ),
            join_waiting_ratio=join_waiting_ratio,
            join_max_wait_steps=join_max_wait_steps,
            shortest_first=shortest_first,
            overtake_max_s=overtake_max_ms / 1000,
            recover_after_steps=recover_steps,
            recover_factor=recover_factor,
            prefill_cost=cost or prefill_cost(engine),
        )
        super().__init__(
            engine.generate,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_batch_tiles=max_batch_tiles,
            gap_ms=gap_ms,
            stager=stager,  # copies the next group's pixels to the device ahead (a GPU)
        )
        self.engine = engine
        self.stats.scheduler = "continuous"
        self.running = RunningRows(engine)  # the rows decoding, and the group prefilling

    @property
    def max_batch_size(self) -> int:
        """Rows the running batch may hold (the admission policy's; settable, as on Batcher)."""
        return self.admission.max_batch_size

    @max_batch_size.setter
    def max_batch_size(self, value: int) -> None:
        self.admission.max_batch_size = value

    @property
    def max_batch_tiles(self) -> int:
        """Tiles one joining group may hold (the admission policy's)."""
        return self.admission.max_batch_tiles

    @max_batch_tiles.setter
    def max_batch_tiles(self, value: int) -> None:
        self.admission.max_batch_tiles = value

    # -- admission (under the condition's lock, on the model thread) -------------------------

    def _busy(self) -> bool:
        return self.running.busy()

    def _compatible(self) -> list[_Waiting]:
        return self._group()[0]

    def _group(self) -> tuple[list[_Waiting], int]:
        """The group that may start now, and how many jobs it was chosen from."""
        if self._waiting[0].key != ROWS:  # beam search: alone, once the batch has drained
            return ([] if self._busy() else super()._compatible()), len(self._waiting)
        rows = [item for item in self._waiting if item.key == ROWS]
        ordered = self.admission.order(rows, time.monotonic())
        return self.admission.group(ordered, self.running.jobs()), len(rows)

    def _admit(self) -> list[_Waiting] | None:
        """Jobs to start now: after the batching wait when idle, at once when busy."""
        if not self._busy():
            return self._next_batch()  # None: stopping and nothing left
        with self._cond:
            if self.running.prefill is not None or not self._waiting:
                return []
            chosen, waiting = self._group()
            if chosen and not self.admission.join_now(
                len(chosen),
                waiting,
                len(self.running.rows),
                waited_s=time.monotonic() - min(item.arrived for item in chosen),
                max_wait_s=self.max_wait_s,
            ):
                return []
            for item in chosen:
                self._waiting.remove(item)
            return chosen

    # -- the model loop ----------------------------------------------------------------------

    def _run(self) -> None:
        # One turn per call: its locals (the jobs admitted) are dropped before the loop waits
        # for more, so a finished job's pixels (a prepare slot) are not kept until the next.
        while self._turn():
            pass
        if self.stager is not None:
            self.stager.drop()

    def _turn(self) -> bool:
        admitted = self._admit()
        if admitted is None:
            return False
        if admitted and admitted[0].key != ROWS:
            self._execute(admitted)  # beam search: the static path, the batch has drained
            return True
        try:
            live = [item for item in admitted if self._start(item)]
            if live:
                self.running.start_prefill(live, self._on_device([i.job for i in live]))
            if self._busy():
                self._step()
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
            self._abandon(admitted, exc)
        return True

    def _abandon(self, admitted: list[_Waiting], exc: Exception) -> None:
        """Hand an unexpected error to every job in flight (their task threads retry them)."""
        log.exception("continuous batching step failed", exc_info=exc)
        items = self.running.clear() + admitted
        if self.stager is not None:
            self.stager.drop()
        self.stats.generating_since = None
        for item in items:
            if item.future.running():
                item.future.set_exception(exc)

    def _start(self, item: _Waiting) -> bool:
        if item.started:
            return True  # back from an eviction: its future already runs
        if not item.future.set_running_or_notify_cancel():
            return False  # canceled while it waited
        item.started = True
        self.stats.record_wait(time.monotonic() - item.arrived)
        return True

    def _step(self) -> None:
        started = time.monotonic()
        self.stats.running_since = time.time()  # the stuck-generation watchdog reads it
        if self.stats.generating_since is None:
            self.stats.generating_since = self.stats.running_since
        prefilled = self.running.prefill is not None
        splits = self.stats.oom_splits
        try:
            if self.running.prefill is not None:
                self._advance_prefill()
            self.running.leave(self.stats, canceled_only=True)
            rows = len(self.running.rows)
            if rows:
                self._decode()
        finally:
            self.stats.running_since = None
            if not self.running.busy():  # the batch ran dry: idle again
                self.stats.generating_since = None
        if self.stats.oom_splits == splits:
            self._clean_step()
        self.stats.record_step(rows, prefill=prefilled, elapsed_s=time.monotonic() - started)
        if self.on_step is not None:
            self.on_step(rows, time.monotonic() - started, prefilled)

    def _clean_step(self) -> None:
        if self.admission.clean_step():
            budget = self.admission.kv_budget
            log.info("no out of memory for a while: the KV budget grows to %d tokens", budget)

    @torch.inference_mode()
    def _advance_prefill(self) -> None:
        prefill = self.running.prefill
        assert prefill is not None
        # While others decode, the chunk is bounded so that they do not wait for all of it.
        chunk = self.admission.chunk_columns(prefill.rows, decoding=bool(self.running.rows))
        columns = prefill.width if chunk is None else chunk
        try:
            logits = self._prefill_chunk(prefill, columns)
        except Exception as exc:  # noqa: BLE001 - every failure ends in the jobs' futures
            self._prefill_failed(exc)
            return
        if logits is None:
            return
        items = self.running.take_prefill()
        self.running.join(prefill, items, logits)
        self.stats.batches += 1
        self.stats.tiles += sum(item.job.tiles for item in items)
        if self.on_batch is not None:  # a group joined: its size, and how long it prefilled
            self.on_batch(len(items), time.monotonic() - prefill.started)
        self.running.leave(self.stats)

    @torch.inference_mode()
    def _decode(self) -> None:
        try:
            logits = self._decode_step(self.running.batch)
        except Exception as exc:  # noqa: BLE001 - every failure ends in the jobs' futures
            self._decode_failed(exc)
            return
        self._stage_next()  # while the step computes, before its tokens are read below
        self.running.decoded(logits)
        self.running.leave(self.stats)

    def _expected_group(self) -> list[PreparedJob]:
        """The jobs admission would choose after the step being computed: beside the rows that
        it does not end at their max_new_tokens (or cancel) and the group being prefilled.
        Canceled jobs are left out; none while a beam job is first."""
        if not self._waiting or self._waiting[0].key != ROWS:
            return []
        rows = [i for i in self._waiting if i.key == ROWS and not i.future.cancelled()]
        ordered = self.admission.order(rows, time.monotonic())
        return [item.job for item in self.admission.group(ordered, self.running.staying_jobs())]

    # Model calls, separate so that tests can make them run out of memory like a full GPU.
    def _prefill_chunk(self, prefill: Prefill, columns: int) -> torch.Tensor | None:
        return prefill.run_chunk(columns)

    def _decode_step(self, batch: RunningBatch) -> torch.Tensor:
        return batch.step()

    # -- failures ----------------------------------------------------------------------------

    def _prefill_failed(self, exc: Exception) -> None:
        items = self.running.take_prefill()
        if not is_out_of_memory(exc):
            log.warning("prefill of %d jobs failed (%s); running them one by one", len(items), exc)
            for item in items:
                self._run_batch([item])  # the static path: only the job that breaks fails
            return
        _free_accelerator_memory()
        if len(items) == 1 and not self.running.rows:
            job = items[0].job
            items[0].future.set_exception(
                OutOfMemory(f"job {job.job_id} does not fit in device memory alone")
            )
            return
        self._out_of_memory([item.job for item in items])
        if len(items) == 1:
            self.admission.alone.add(items[0].job.job_id)  # it runs once the batch has drained
        self._requeue(items)

    def _decode_failed(self, exc: Exception) -> None:
        rows = self.running.take_rows()
        if not is_out_of_memory(exc):
            log.warning("a step of %d rows failed (%s); running them one by one", len(rows), exc)
            for row in rows:
                self._run_batch([row.item])
            return
        _free_accelerator_memory()
        if len(rows) == 1:
            job = rows[0].item.job
            rows[0].item.future.set_exception(
                OutOfMemory(f"job {job.job_id} does not fit in device memory alone")
            )
            return
        # The cache cannot be trimmed in place after a failed step: every row starts again
        # (same tokens: greedy is deterministic, a sampled row's generator is seeded afresh).
        self._out_of_memory([row.item.job for row in rows])
        self._requeue([row.item for row in rows])

    def _out_of_memory(self, jobs: list[PreparedJob]) -> None:
        self.stats.oom_splits += 1
        running = self.running.jobs()
        budget = self.admission.out_of_memory(running, jobs)
        log.warning(
            "out of memory with %d rows; the KV budget is now %d tokens",
            len(running) + len(jobs),
            budget,
        )

    def _requeue(self, items: list[_Waiting]) -> None:
        with self._cond:
            self._waiting[:0] = items  # first in line again, their futures still running
