"""`internvl-jobs bench service --simulated-device h100 | --device cuda`: the service at device
speed, per image size.

Starts the API, a worker and the sweeper, submits distinct JPEG photos as caption jobs over
HTTP and reports, per image size: jobs/s, how busy the device was, and host CPU per job split
by process. From those: the cores a host needs to keep one device busy, and the service's own
overhead per job (its processes' CPU less the worker's preparing, which is measured in this
process on the same pictures right after each round, and less the model loop's thread).

The worker's engine is either worker.simulated_device's (`--simulated-device`: the real
prepare at InternVL3-1B's 448-px, max-12-tile settings, generation timed as on the device,
sleeping) or the real one (`--device`: the preset's or checkpoint's weights on that device;
on a GPU the bench also samples NVML's utilization). The stack is PostgreSQL, Redis and an S3
server, or with `--embedded` the service's embedded defaults (a SQLite file, the filesystem
broker, a local directory for objects), for a machine that has no servers, such as a lent GPU.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.gpu_meter import UtilizationMeter, nvml_reader
from bench.photos import photo_jpeg, photos
from bench.server_cpu import server_cpu_meter
from bench.service import MOTO_CREDENTIALS, _stack_settings, bench_settings, through_service
from bench.stack import Stack, service_processes
from core.config import ModelSpec, Settings
from core.tiling import tile_count
from devtools.harness import free_port, moto_server
from devtools.tiny_model import PRESETS, build_processor, train_tokenizer

HEARTBEAT_S = 0.5  # the worker's busy time is read from its heartbeat
WARM_UP_STEP = 32  # photos sent first to learn how many bytes of the prepare cache each takes
WARM_UP_SEEDS = 10**7  # warm-up photos are others than any round's


@dataclass(frozen=True)
class Accelerator:
    """What the worker generates on: a simulated device, or the real engine on a device."""

    simulated: str = ""  # "h100": InternVL3-1B timed as on it (no weights)
    checkpoint: str = ""  # the real engine: a checkpoint directory
    device: str = "cpu"  # the real engine: cpu or cuda (the worker takes GPU 0)
    dtype: str = "auto"
    attention: str = "auto"

    @property
    def name(self) -> str:
        """How the report names it."""
        return f"simulated {self.simulated}" if self.simulated else f"{self.device} (real engine)"


def processor_checkpoint(cache_dir: Path) -> Path:
    """A checkpoint directory with only InternVL3-1B's processor (no weights), built once."""
    path = cache_dir / "processor-internvl3-1b"
    if not (path / "processor_config.json").exists():
        build_processor(PRESETS["internvl3-1b"], train_tokenizer(2048)).save_pretrained(path)
    return path


def run_simulated_bench(
    *,
    accelerator: Accelerator,
    cache_dir: Path,
    database_url: str,
    broker_url: str,
    s3_endpoint_url: str | None,
    jobs: int,
    sizes: list[tuple[int, int]],
    new_tokens: int,
    max_batch_size: int,
    log_dir: Path,
    prepare_processes: int = -1,
    model_process: str = "auto",
    worker_threads: int = 0,
    embedded: bool = False,
    warm_up: int = 0,
) -> dict[str, Any]:
    """One round per image size through the whole service on the accelerator.

    Before each round, up to `warm_up` other photos of its size go through uncounted, until
    the worker's prepare cache is full (`warm_up_photos`): a worker that has run a while
    keeps its cache at its bound, evicting as it adds, while one that has not yet filled it
    pays for the new memory (its first pages) in each job it keeps.
    """
    from core.migrations import upgrade

    log_dir.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(
        alias="bench",
        checkpoint=accelerator.checkpoint or str(processor_checkpoint(cache_dir)),
        max_batch_size=max_batch_size,
        dtype=accelerator.dtype,  # checked by ModelSpec
        attn_implementation=accelerator.attention,
    )
    rows = []
    with ExitStack() as stack:
        credentials: dict[str, str] = {}
        s3_pid = None
        if embedded:
            settings = _embedded_settings(spec, log_dir)
        else:
            credentials = {} if s3_endpoint_url else MOTO_CREDENTIALS
            if s3_endpoint_url is None:
                s3_endpoint_url, s3_pid = stack.enter_context(moto_server(log_dir))
            settings = _stack_settings(
                spec, database_url, broker_url, s3_endpoint_url, log_dir, credentials
            )
        settings = settings.model_copy(
            update={
                "simulated_device": accelerator.simulated,
                "heartbeat_s": HEARTBEAT_S,
                "prepare_processes": prepare_processes,
                "model_process": model_process,
                "worker_threads": worker_threads,
            }
        )
        upgrade(settings.database_url)
        running = stack.enter_context(
            service_processes(
                settings,
                free_port(),
                log_dir,
                credentials,
                sweeper=True,
                devices="0" if accelerator.device == "cuda" else "cpu",
            )
        )
        if s3_pid is not None:
            running.pids["s3"] = s3_pid
        meter = UtilizationMeter(nvml_reader(0) if accelerator.device == "cuda" else None)
        servers = server_cpu_meter(settings.database_url, settings.broker_url)
        through_service(running.base, [photo_jpeg(64, 48, seed=10**6)], 2)  # warm-up
        prepare_ms = prepare_meter(spec.checkpoint)
        for seed, (width, height) in enumerate(sizes):
            first_seed = WARM_UP_SEEDS + 10**5 * seed
            warmed = fill_prepare_cache(running.base, (width, height), first_seed, warm_up)
            pictures = photos(width, height, seeds=range(1000 * seed, 1000 * seed + jobs))
            row = _round(running, pictures, (width, height), new_tokens, meter, servers)
            rows.append({**_with_overhead(row, prepare_ms(pictures)), "warm_up_photos": warmed})
    return {
        "device": accelerator.name,
        "stack": "embedded" if embedded else "servers",
        "jobs": jobs,
        "new_tokens": new_tokens,
        "prepare_processes": prepare_processes,
        "model_process": model_process,
        "worker_threads": worker_threads,
        "rows": rows,
    }


def _embedded_settings(spec: ModelSpec, log_dir: Path) -> Settings:
    """The service's embedded defaults under log_dir/data, emptied first (no jobs or queued
    messages of an earlier run): SQLite, the filesystem broker, local files."""
    shutil.rmtree(log_dir / "data", ignore_errors=True)
    return bench_settings(spec, log_dir, database_url="", broker_url="", storage_url="")


def fill_prepare_cache(base: str, size: tuple[int, int], first_seed: int, most: int) -> int:
    """Send distinct photos of `size` through the service, uncounted, until the worker's
    prepare cache is full or `most` have gone; how many went."""
    if most <= 0:
        return 0
    sent = 0
    start = None
    while True:
        time.sleep(2 * HEARTBEAT_S)  # the last photos' entries reach the heartbeat
        now = _worker_stats(base).get("prepare_cache")
        start = start or now
        more = warm_up_photos(start, now, sent, most)
        if not more:
            return sent
        seeds = range(first_seed + sent, first_seed + sent + more)
        through_service(base, photos(*size, seeds=seeds), 2, client_threads=16)
        sent += more


def warm_up_photos(
    start: dict[str, int] | None, now: dict[str, int] | None, sent: int, most: int
) -> int:
    """How many more photos fill the worker's prepare cache, `start` and `now` its counts
    before the first and after the last of `sent` photos, within `most` in all: a first step,
    then as many as the room left takes at the bytes each of them added. 0 when one more
    would evict (or entries no longer grow: it evicts already), or there is no cache."""
    if start is None or now is None or sent >= most or now["max_bytes"] <= 0:
        return 0
    if not sent:
        return min(WARM_UP_STEP, most)
    grew = now["entries"] - start["entries"]
    if grew <= 0:
        return 0
    each = (now["bytes"] - start["bytes"]) / grew
    room = now["max_bytes"] - now["bytes"]
    if each <= 0 or room < each:
        return 0
    return min(int(room // each) + 1, most - sent)


def _worker_stats(base: str) -> dict[str, Any]:
    """The worker's heartbeat statistics (GET /v1/workers)."""
    stats: dict[str, Any] = httpx.get(f"{base}/v1/workers", timeout=5).json()["workers"][0]["stats"]
    return stats


def _device_and_loop_s(base: str) -> tuple[float, float]:
    """The worker's device-busy seconds and its model loop's CPU seconds, from its heartbeat."""
    stats = _worker_stats(base)
    return float(stats.get("busy_s", 0.0)), float(stats.get("loop_cpu_s", 0.0))


def _round(
    running: Stack,
    pictures: list[bytes],
    size: tuple[int, int],
    new_tokens: int,
    meter: UtilizationMeter,
    servers: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    time.sleep(2 * HEARTBEAT_S)
    (busy, loop), before = _device_and_loop_s(running.base), running.cpu_seconds()
    servers_before = servers()
    meter.start()
    wall_s, jobs = through_service(running.base, pictures, new_tokens, client_threads=16)
    utilization = meter.stop()
    after = running.cpu_seconds()
    servers_after = servers()
    time.sleep(2 * HEARTBEAT_S)  # the last batch's time reaches the heartbeat
    busy_after, loop_after = _device_and_loop_s(running.base)
    busy_s = busy_after - busy
    cpu_ms = {role: 1000 * (after[role] - before[role]) / len(pictures) for role in after}
    host_ms = sum(cpu_ms.values())
    device_ms = 1000 * busy_s / len(pictures)
    return {
        "size": f"{size[0]}x{size[1]}",
        "tiles": tile_count(*size, tile_size=448, max_tiles=12),
        "succeeded": sum(job["status"] == "succeeded" for job in jobs),
        "wall_s": round(wall_s, 2),
        "jobs_per_s": round(len(pictures) / wall_s, 2),
        # The simulated device's generate time, or the real engine's model steps (host side,
        # launches and waits included), over the wall time.
        "device_busy_fraction": round(busy_s / wall_s, 3),
        # NVML's mean utilization.gpu over the round (real GPUs only; None elsewhere).
        "gpu_utilization": None if utilization is None else round(utilization, 3),
        "device_ms_per_job": round(device_ms, 2),
        "host_cpu_ms_per_job": {role: round(ms, 1) for role, ms in cpu_ms.items()},
        # PostgreSQL's and Redis's servers where readable from here (bench.server_cpu); not
        # the service's, so in no other figure.
        "server_cpu_ms_per_job": {
            name: round(1000 * (servers_after[name] - servers_before[name]) / len(pictures), 1)
            for name in servers_after
        },
        "cores_per_device": round(host_ms / device_ms, 1) if device_ms else None,
        # The model loop's thread (in the worker's or the model's process): generating's host
        # share, inside that process's figure above.
        "loop_ms_per_job": round(1000 * (loop_after - loop) / len(pictures), 1),
    }


def prepare_meter(checkpoint: str) -> Callable[[list[bytes]], float]:
    """CPU ms per picture of the worker's own preparing (a GPU worker's host part: decode at
    the grid's scale, the ids), measured in this process right after a round, so under the
    same load; what the service spends beyond it (and beyond generating, which the simulated
    device does asleep) is its overhead."""
    from transformers import AutoProcessor

    from core.prompts import build_conversation
    from worker.preparer import Preparer

    preparer = Preparer(
        AutoProcessor.from_pretrained(checkpoint), model_alias="bench", cache_bytes=0
    )
    conversation = build_conversation({"task": "caption", "images": ["image"]}, control_tokens=[])

    def measure(pictures: list[bytes]) -> float:
        preparer.image_inputs(conversation, pictures[:1], max_tiles=12, on_device=True)  # warm
        started = time.process_time()
        for data in pictures:
            preparer.image_inputs(conversation, [data], max_tiles=12, on_device=True)
        return 1000 * (time.process_time() - started) / len(pictures)

    return measure


def _with_overhead(row: dict[str, Any], prepare_ms: float) -> dict[str, Any]:
    # The service's processes (the S3 server is the test's, not the service's) less preparing
    # and less the model loop's thread (generating's host share).
    cpu = row["host_cpu_ms_per_job"]
    service_ms = sum(ms for role, ms in cpu.items() if role != "s3")
    return {
        **row,
        "prepare_ms_per_job": round(prepare_ms, 1),
        "overhead_ms_per_job": round(service_ms - prepare_ms - row["loop_ms_per_job"], 1),
    }


def format_simulated_report(report: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    first = report["rows"][0] if report["rows"] else {}
    roles = list(first.get("host_cpu_ms_per_job", {}))
    servers = list(first.get("server_cpu_ms_per_job", {}))
    lines = [
        f"{report['device']}, {report['stack']} stack, {report['jobs']} caption jobs per size, "
        f"{report['new_tokens']} new tokens, model process {report['model_process']}, "
        f"task threads {report['worker_threads'] or 'automatic'}; "
        "warm-up: photos of the size sent first, uncounted, to fill the worker's prepare "
        "cache; host CPU ms per job; postgres, redis: those servers' CPU (where readable; counted "
        "nowhere else); device busy: the engine's generate time over the wall time; GPU: "
        "NVML's mean utilization; overhead: the service's processes (not s3) less the "
        "worker's preparing and the model loop's thread",
        "| image | tiles | warm-up | ok | jobs/s | device busy | GPU | device ms/job | "
        + "".join(f"{name} | " for name in roles + servers)
        + "cores per device | of which preparing | of which model loop | overhead |",
        "|---|---:|---:|---:|---:|---:|---:|---:|"
        + "---:|" * (len(roles) + len(servers))
        + "---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        cpu = "".join(f"{row['host_cpu_ms_per_job'][role]} | " for role in roles)
        cpu += "".join(f"{row['server_cpu_ms_per_job'][name]} | " for name in servers)
        lines.append(
            f"| {row['size']} | {row['tiles']} | {row.get('warm_up_photos', 0)} "
            f"| {row['succeeded']} | {row['jobs_per_s']} "
            f"| {row['device_busy_fraction']:.1%} | {_percent(row['gpu_utilization'])} "
            f"| {row['device_ms_per_job']} | {cpu}"
            f"{row['cores_per_device']} | {row['prepare_ms_per_job']} "
            f"| {row['loop_ms_per_job']} | {row['overhead_ms_per_job']} |"
        )
    return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.1%}"
