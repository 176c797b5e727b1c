"""`internvl-jobs bench prepare --interference`: the model loop's decode-step time while jobs are
prepared beside it, in the model's own process (task threads) or in prepare processes.

The model loop: the bench preset in fp32 on the CPU with one torch thread (the loop's core), a
running batch of `rows` text rows decoded step after step by the continuous loop's own
RunningBatch (refilled, untimed, every `steps_per_batch` steps). The load: 640x480 photo JPEGs
(13 tiles at 448 px, the InternVL3-1B processor's settings, built in memory) prepared at
`rate` jobs/s by four task threads, either in this process (prepare_processes = 0) or through
a PreparePool of `processes` processes, each way twice: cutting uint8 tiles on the host
(`image_resize: host`) and, "device resize", decoding the picture only (`image_resize: device`:
the host's share; the resize itself is the device's). Phases of `seconds` each run interleaved
(idle, then each loaded mode) for `rounds` rounds in one run, so machine noise hits each
alike; the figure is each loaded phase's median step time over idle's. The model process's
CPU per job (its CPU outside the decode loop's thread, over the jobs prepared) says what
preparing still costs that process.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import torch

from bench.photos import photo_jpeg
from core.config import ModelSpec
from core.prompts import build_conversation
from core.specs import GenerationParams
from devtools.tiny_model import PRESETS, build_processor, train_tokenizer
from worker.decode import Prefill, RunningBatch
from worker.engine import InternVLEngine, PreparedJob
from worker.prepare_pool import PreparePool
from worker.preparer import Preparer
from worker.preparing import InProcessPreparing, Preparing

# Each loaded mode prepares either host tiles (image_resize: host, a CPU worker) or the decoded
# picture for the device to resize (image_resize: device, a GPU worker: the host's share only).
# Pools hand pixels back through recycled slots, as a worker's do (prepare_slot_mb), except
# the last mode, which sends them as shared tensors (a file descriptor each) for comparison.
MODES = (
    "idle",
    "threads",
    "pool",
    "threads, device resize",
    "pool, device resize",
    "pool, device resize, no slots",
)
SLOTS, SLOT_BYTES = 16, 8 * 2**20
PROMPT = "Describe the picture in detail, then list every object you can see."


class DecodeLoop:
    """A running batch decoded step by step; each step's wall time is recorded."""

    def __init__(self, engine: InternVLEngine, rows: int, steps_per_batch: int) -> None:
        self.engine = engine
        self.steps_per_batch = steps_per_batch
        ids = engine.tokenizer(PROMPT, return_tensors="pt")["input_ids"][0]
        params = GenerationParams(max_new_tokens=steps_per_batch)
        self.jobs = [PreparedJob(f"row-{i}", ids, [], [], params) for i in range(rows)]

    def _fresh(self) -> RunningBatch:
        prefill = Prefill(self.engine, self.jobs)
        logits = prefill.run_chunk(prefill.width)
        assert logits is not None
        batch = RunningBatch(self.engine)
        batch.join(prefill, logits.argmax(-1))
        return batch

    @torch.inference_mode()
    def run(self, until: float) -> list[float]:
        """Decode until the deadline; every step's seconds."""
        times: list[float] = []
        while time.perf_counter() < until:
            batch = self._fresh()
            for _ in range(self.steps_per_batch):
                started = time.perf_counter()
                batch.next_tokens = batch.step().argmax(-1)
                times.append(time.perf_counter() - started)
                if time.perf_counter() >= until:
                    break
        return times


class Feeder:
    """Prepares one job every 1/rate seconds on four task threads, until stopped."""

    def __init__(self, prepare: Callable[[], Any], rate: float) -> None:
        self.prepare = prepare
        self.rate = rate
        self.done = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _one(self) -> None:
        self.prepare()
        with self._lock:
            self.done += 1

    def _run(self) -> None:
        threads = ThreadPoolExecutor(max_workers=4)
        due = time.perf_counter()
        while not self._stop.is_set():
            threads.submit(self._one)
            due += 1.0 / self.rate
            self._stop.wait(max(0.0, due - time.perf_counter()))
        threads.shutdown(wait=True, cancel_futures=True)  # jobs not started are dropped


def _phase(
    loop: DecodeLoop, mode: str, preparing: Preparing | None, job: Any, seconds: float, rate: float
) -> dict[str, Any]:
    """One phase: step seconds, jobs prepared, wall seconds, and this process's CPU seconds
    outside the decode loop's thread (the task threads' share of preparing)."""
    on_device = "device resize" in mode
    cpu, loop_cpu = time.process_time(), time.thread_time()
    started = time.perf_counter()
    if preparing is None:
        steps = loop.run(started + seconds)
        jobs = 0
    else:
        work = partial(preparing.run, *job, max_tiles=12, on_device=on_device)
        with Feeder(work, rate) as feeder:
            steps = loop.run(started + seconds)
            jobs = feeder.done  # in the window; a backlog left is dropped, not counted
    wall = time.perf_counter() - started
    loop_cpu = time.thread_time() - loop_cpu
    other_cpu = time.process_time() - cpu - loop_cpu
    return {"steps": steps, "jobs": jobs, "wall": wall, "cpu": other_cpu}


def run_interference_bench(
    *,
    checkpoint: str,
    rate: float = 20.0,
    seconds: float = 5.0,
    rounds: int = 3,
    rows: int = 8,
    processes: int = 1,
    steps_per_batch: int = 64,
) -> dict[str, Any]:
    """Decode-step times idle, beside in-process preparing and beside a prepare pool."""
    torch.set_num_threads(1)
    engine = InternVLEngine(
        ModelSpec(alias="bench", checkpoint=checkpoint, dtype="float32"), device="cpu"
    )
    loop = DecodeLoop(engine, rows, steps_per_batch)
    processor = build_processor(PRESETS["internvl3-1b"], train_tokenizer(2048))
    conversation = build_conversation(
        {"task": "caption", "images": ["image"]}, control_tokens=engine.control_tokens
    )
    job = (conversation, [photo_jpeg(640, 480)])
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        processor.save_pretrained(folder)
        spec = ModelSpec(alias="bench", checkpoint=folder)
        pool = PreparePool(spec, processes=processes, slots=SLOTS, slot_bytes=SLOT_BYTES)
        plain = PreparePool(spec, processes=processes)
        for started in (pool, plain):
            started.start()
            started.wait_ready()
        threads = InProcessPreparing(Preparer(processor, model_alias="b", cache_bytes=0))
        preparers: dict[str, Preparing | None] = {
            mode: None if mode == "idle" else threads if mode.startswith("threads") else pool
            for mode in MODES
        }
        preparers["pool, device resize, no slots"] = plain
        try:
            for mode, preparing in preparers.items():  # warm-up: kernels, the first jobs
                _phase(loop, mode, preparing, job, 0.5, rate)
            measured: dict[str, dict[str, Any]] = {
                mode: {"steps": [], "jobs": 0, "cpu": 0.0, "wall": 0.0} for mode in MODES
            }
            for _ in range(rounds):
                for mode in MODES:
                    phase = _phase(loop, mode, preparers[mode], job, seconds, rate)
                    for key, value in phase.items():
                        measured[mode][key] += value
        finally:
            pool.close()
            plain.close()
    return _report(measured, load_before, rate, rows, processes)


def _report(
    measured: dict[str, dict[str, Any]],
    load_before: tuple[float, float, float],
    rate: float,
    rows: int,
    processes: int,
) -> dict[str, Any]:
    idle_median = statistics.median(measured["idle"]["steps"])
    report_rows = []
    for mode in MODES:
        figures = measured[mode]
        steps = sorted(figures["steps"])
        median = statistics.median(steps)
        report_rows.append(
            {
                "mode": mode,
                "steps": len(steps),
                "median_step_ms": round(median * 1000, 2),
                "p90_step_ms": round(steps[int(0.9 * (len(steps) - 1))] * 1000, 2),
                "ratio_to_idle": round(median / idle_median, 2),
                "jobs_per_s": round(figures["jobs"] / figures["wall"], 1),
                "model_process_cpu_ms_per_job": (
                    round(figures["cpu"] / figures["jobs"] * 1000, 1) if figures["jobs"] else None
                ),
            }
        )
    return {
        "rate": rate,
        "rows": rows,
        "prepare_processes": processes,
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "rows_measured": report_rows,
    }


def format_interference_report(report: dict[str, Any]) -> str:
    """The figures as a Markdown table, with the load average."""
    lines = [
        f"decode steps of {report['rows']} rows beside {report['rate']:g} jobs/s of 640x480 "
        f"JPEGs; pool: {report['prepare_processes']} process(es); load average "
        f"{report['load_average_before'][0]} before, {report['load_average_after'][0]} after",
        "| prepare | steps | median step ms | p90 step ms | vs idle | jobs/s "
        "| model-process CPU ms/job |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows_measured"]:
        cpu = (
            "-"
            if row["model_process_cpu_ms_per_job"] is None
            else row["model_process_cpu_ms_per_job"]
        )
        lines.append(
            f"| {row['mode']} | {row['steps']} | {row['median_step_ms']} | {row['p90_step_ms']} "
            f"| {row['ratio_to_idle']}x | {row['jobs_per_s']} | {cpu} |"
        )
    return "\n".join(lines)
