"""`internvl-jobs bench service`: the engine bench's work through the whole running service.

Starts the API and one worker process (as `internvl-jobs api` and `internvl-jobs worker`)
against the given PostgreSQL, Redis and S3 server (a moto server is started when none is
given), submits every image as its own caption job over HTTP, long-polls until the last result,
and compares that time with the bare batched engine doing the same work in this process.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.engine import batched_engine, bench_images
from bench.stack import Stack, service_processes
from core.config import ModelSpec, Settings
from core.images import load_rgb
from devtools.harness import free_port, moto_server
from worker.engine import InternVLEngine

log = logging.getLogger("bench.service")
TERMINAL = ("succeeded", "failed", "canceled", "expired")
# A moto server accepts any credentials; these are used only with the one the bench starts.
MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def png_bytes(image: Image.Image) -> bytes:
    """Lossless bytes, so the service decodes exactly the pixels the bare engine gets."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def through_service(
    base: str, images: list[bytes], new_tokens: int, *, client_threads: int = 8
) -> tuple[float, list[dict[str, Any]]]:
    """Submit one caption job per image over HTTP; time from first submit to last result."""
    params = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    bodies = [
        {"task": "caption", "images": [{"data": base64.b64encode(data).decode()}], "params": params}
        for data in images
    ]
    with httpx.Client(base_url=base, timeout=60) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(client_threads) as pool:
            ids = list(pool.map(lambda body: _submit(client, body), bodies))
        jobs = _poll(client, ids)
        return time.perf_counter() - started, [jobs[job_id] for job_id in ids]


def _submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


def _poll(client: httpx.Client, ids: list[str]) -> dict[str, Any]:
    # Wait on the jobs in submission order with the API's long-poll, as a client waiting for
    # its jobs would: one request per job, answered as soon as the job ends.
    done: dict[str, Any] = {}
    for job_id in ids:
        while job_id not in done:
            job = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
            if job["status"] in TERMINAL:
                done[job_id] = job
    return done


def run_service_bench(
    *,
    checkpoint: str,
    database_url: str,
    broker_url: str,
    s3_endpoint_url: str | None,
    images: int,
    new_tokens: int,
    max_batch_size: int,
    repeats: int,
    log_dir: Path,
    batching: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Bare engine and service, alternately `repeats` times, on the same images; best of each.

    `batching` overrides the model's batching settings (max_batch_wait_ms, batch_gap_ms).
    """
    from core.migrations import upgrade

    log_dir.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(
        alias="bench", checkpoint=checkpoint, max_batch_size=max_batch_size, **(batching or {})
    )
    engine = InternVLEngine(spec, device="cpu")
    spec = spec.model_copy(update={"tile_size": engine.tile_size})
    pictures = [png_bytes(image) for image in bench_images(images, 1, engine.tile_size)]
    decoded = [load_rgb(data) for data in pictures]
    upgrade(database_url)
    rounds: list[dict[str, Any]] = []
    with ExitStack() as stack:
        credentials = {} if s3_endpoint_url else MOTO_CREDENTIALS
        s3_pid = None
        if s3_endpoint_url is None:
            s3_endpoint_url, s3_pid = stack.enter_context(moto_server(log_dir))
        settings = _stack_settings(
            spec, database_url, broker_url, s3_endpoint_url, log_dir, credentials
        )
        running = stack.enter_context(
            service_processes(settings, free_port(), log_dir, credentials)
        )
        if s3_pid is not None:
            running.pids["s3"] = s3_pid
        batched_engine(engine, decoded[:2], 2, max_batch_size)  # warm-up of both paths
        through_service(running.base, pictures[:2], 2)
        for _ in range(repeats):
            rounds.append(_round(engine, decoded, pictures, running, new_tokens, max_batch_size))
        workers = httpx.get(f"{running.base}/v1/workers", timeout=5).json()["workers"]
    return _report(images, new_tokens, rounds, workers)


def _round(
    engine: InternVLEngine,
    decoded: list[Image.Image],
    pictures: list[bytes],
    running: Stack,
    new_tokens: int,
    max_batch_size: int,
) -> dict[str, Any]:
    """One bare-engine run, then one service run; wall and CPU seconds of each."""
    cpu, started = time.process_time(), time.perf_counter()
    texts = batched_engine(engine, decoded, new_tokens, max_batch_size)
    bare_s, bare_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    before = running.cpu_seconds()
    service_s, jobs = through_service(running.base, pictures, new_tokens)
    after = running.cpu_seconds()
    return {
        "bare_engine_s": round(bare_s, 3),
        "service_s": round(service_s, 3),
        "bare_engine_cpu_s": round(bare_cpu_s, 2),
        "service_cpu_s": {role: round(after[role] - before[role], 2) for role in after},
        "identical": [job.get("result", {}).get("text") for job in jobs] == texts,
        "succeeded": sum(job["status"] == "succeeded" for job in jobs),
    }


def _report(
    images: int, new_tokens: int, rounds: list[dict[str, Any]], workers: list[dict[str, Any]]
) -> dict[str, Any]:
    # Each round's ratio compares two runs a few seconds apart, so other work on the machine
    # disturbs it less than best-of figures taken from different rounds; the median is reported.
    bare_s = min(r["bare_engine_s"] for r in rounds)
    service_s = min(r["service_s"] for r in rounds)
    bare_cpu = min(r["bare_engine_cpu_s"] for r in rounds)
    service_cpu = {
        role: min(r["service_cpu_s"][role] for r in rounds) for role in rounds[0]["service_cpu_s"]
    }
    shares = [r["bare_engine_s"] / r["service_s"] for r in rounds]
    cpu_shares = [r["bare_engine_cpu_s"] / sum(r["service_cpu_s"].values()) for r in rounds]
    return {
        "images": images,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "bare_engine_s": bare_s,
        "service_s": service_s,
        "bare_engine_images_per_s": round(images / bare_s, 2),
        "service_images_per_s": round(images / service_s, 2),
        "service_share_of_engine": round(statistics.median(shares), 3),
        "service_cpu_share_of_engine": round(statistics.median(cpu_shares), 3),
        "bare_engine_cpu_ms_per_job": round(1000 * bare_cpu / images, 1),
        "service_cpu_ms_per_job": {
            role: round(1000 * seconds / images, 1) for role, seconds in service_cpu.items()
        },
        "succeeded": min(r["succeeded"] for r in rounds),
        "outputs_identical": all(r["identical"] for r in rounds),
        "worker_stats": workers[0]["stats"] if workers else {},
    }


def _stack_settings(
    spec: ModelSpec,
    database_url: str,
    broker_url: str,
    endpoint: str,
    log_dir: Path,
    credentials: dict[str, str],
) -> Settings:
    import boto3

    bucket = f"internvl-bench-{secrets.token_hex(4)}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=credentials.get("AWS_SECRET_ACCESS_KEY"),
        region_name=credentials.get("AWS_DEFAULT_REGION"),
    )
    s3.create_bucket(Bucket=bucket)
    return bench_settings(
        spec,
        log_dir,
        database_url=database_url,
        broker_url=broker_url,
        storage_url=f"s3://{bucket}/bench",
        s3_endpoint_url=endpoint,
    )


def bench_settings(
    spec: ModelSpec,
    log_dir: Path,
    *,
    database_url: str,
    broker_url: str,
    storage_url: str,
    s3_endpoint_url: str | None = None,
) -> Settings:
    """A bench's service settings: only `spec`, no .env file, no auth, plain-text logs, data
    under log_dir/data; the database, broker and storage given (empty: the embedded ones)."""
    return Settings(
        _env_file=None,
        environment="development",
        auth_enabled=False,
        data_dir=log_dir / "data",
        database_url=database_url,
        broker_url=broker_url,
        storage_url=storage_url,
        s3_endpoint_url=s3_endpoint_url,
        models=[spec],
        log_json=False,
    )


def format_service_report(report: dict[str, Any]) -> str:
    """The figures as plain text."""
    stats = report["worker_stats"]
    rounds = ", ".join(f"{r['bare_engine_s']:.2f}/{r['service_s']:.2f}" for r in report["rounds"])
    return "\n".join(
        [
            f"{report['images']} caption jobs, 1 tile each, {report['new_tokens']} new tokens",
            f"seconds per round (engine/service): {rounds}",
            f"bare batched engine, best round: {report['bare_engine_s']:.3f} s "
            f"({report['bare_engine_images_per_s']:.2f} images/s)",
            f"through the service, best round: {report['service_s']:.3f} s "
            f"({report['service_images_per_s']:.2f} images/s), first submit to last result",
            f"service throughput = {100 * report['service_share_of_engine']:.1f}% of the engine's "
            "(median of the rounds' ratios)",
            f"CPU: the engine needs {100 * report['service_cpu_share_of_engine']:.1f}% of the CPU "
            "time the service's processes use for the same jobs",
            f"jobs succeeded: {report['succeeded']}/{report['images']}; outputs identical to the "
            f"engine's: {'yes' if report['outputs_identical'] else 'NO'}",
            f"CPU ms per job: bare engine {report['bare_engine_cpu_ms_per_job']}; service "
            + ", ".join(f"{k} {v}" for k, v in report["service_cpu_ms_per_job"].items())
            + " (PostgreSQL and Redis not counted)",
            f"worker batches: {stats.get('batches')} (mean size {stats.get('mean_batch_size')})",
        ]
    )
