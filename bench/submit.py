"""`internvl-jobs bench submit`: jobs/s and latency of POST /v1/jobs with a small image.

It runs the real API process (uvicorn, one process, as deployed) against the configured
PostgreSQL, Redis and S3 server, and drives it over loopback HTTP at several concurrencies.
Each request carries its own small PNG, so every submission decodes, stores and queues an
image: the whole submit path, nothing cached. No worker runs: jobs stay queued.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from PIL import Image

from core.config import Settings
from core.db import make_engine, make_session_factory, transaction
from core.migrations import upgrade
from core.tenants import create_api_key, ensure_tenant
from devtools.harness import free_port, moto_server, popen_exited, wait_http

WARMUP_REQUESTS = 20


@dataclass
class LevelResult:
    """The figures of one concurrency level."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    jobs_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    api_cpu_ms_per_job: float | None  # CPU time of the API process per request (Linux only)


def small_png(index: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small PNG whose pixels differ per index (so each request stores a new image)."""
    image = Image.new("RGB", size, (index % 251, (index // 251) % 251, 7))
    image.putpixel((index % size[0], 0), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def request_bodies(count: int, *, offset: int, same_image: bool) -> list[bytes]:
    """JSON bodies of caption jobs, each with its own image unless same_image."""
    bodies = []
    for i in range(count):
        data = base64.b64encode(small_png(0 if same_image else offset + i)).decode()
        body = {"task": "caption", "images": [{"data": data}], "params": {"max_new_tokens": 16}}
        bodies.append(json.dumps(body).encode())
    return bodies


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the sorted values fall (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def drive(
    client: httpx.AsyncClient, bodies: list[bytes], concurrency: int
) -> tuple[list[float], int, float]:
    """Send every body with `concurrency` requests in flight; (latencies s, errors, wall s)."""
    latencies: list[float] = []
    errors = 0
    pending = iter(bodies)

    async def sender() -> None:
        nonlocal errors
        for body in pending:
            started = time.perf_counter()
            response = await client.post(
                "/v1/jobs", content=body, headers={"Content-Type": "application/json"}
            )
            latencies.append(time.perf_counter() - started)
            if response.status_code != 202:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used (from /proc; None where unavailable)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_levels(
    url: str,
    api_key: str,
    *,
    levels: list[int],
    requests: int,
    same_image: bool,
    api_pid: int | None = None,
) -> list[LevelResult]:
    """Measure each concurrency level after a short warm-up."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels))
    results = []
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=120
    ) as client:
        warmup = request_bodies(WARMUP_REQUESTS, offset=10**6, same_image=same_image)
        await drive(client, warmup, 4)
        for number, concurrency in enumerate(levels):
            bodies = request_bodies(requests, offset=number * requests, same_image=same_image)
            cpu_before = process_cpu_s(api_pid)
            latencies, errors, seconds = await drive(client, bodies, concurrency)
            cpu_after = process_cpu_s(api_pid)
            cpu_ms = None
            if cpu_before is not None and cpu_after is not None:
                cpu_ms = round((cpu_after - cpu_before) * 1000 / requests, 2)
            results.append(
                LevelResult(
                    concurrency=concurrency,
                    requests=requests,
                    errors=errors,
                    seconds=round(seconds, 3),
                    jobs_per_s=round((requests - errors) / seconds, 1),
                    p50_ms=round(percentile(latencies, 0.50) * 1000, 1),
                    p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
                    mean_ms=round(statistics.fmean(latencies) * 1000, 1),
                    api_cpu_ms_per_job=cpu_ms,
                )
            )
    return results


def bench_api_key(settings: Settings) -> str:
    """A fresh API key of the 'bench' tenant, written straight into the database."""
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with transaction(make_session_factory(engine)) as session:
            tenant = ensure_tenant(session, "bench")
            _, key = create_api_key(session, tenant.id, name="submit benchmark")
    finally:
        engine.dispose()
    return key


@contextmanager
def api_process(settings: Settings, port: int, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`internvl-jobs api` as a child process, as deployed; yields its base URL and pid."""
    child_env = {**os.environ, **env, **settings.as_env()}
    process = subprocess.Popen(  # noqa: S603 - fixed arguments
        [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", timeout_s=60, exited=popen_exited(process))
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(60)


def format_table(results: list[LevelResult]) -> str:
    """The figures as a Markdown table."""
    rows = [
        "| concurrency | requests | errors | jobs/s | p50 ms | p99 ms | mean ms | API CPU ms/job |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.concurrency} | {r.requests} | {r.errors} | {r.jobs_per_s} | {r.p50_ms} "
            f"| {r.p99_ms} | {r.mean_ms} | {r.api_cpu_ms_per_job or '-'} |"
        )
    return "\n".join(rows)


def write_json(results: list[LevelResult], path: str) -> None:
    """Save the figures as JSON when a path is given."""
    if path:
        Path(path).write_text(json.dumps([asdict(r) for r in results], indent=2))


def ensure_bucket(settings: Settings) -> None:
    """Create the storage URL's bucket on the S3 server if it is missing."""
    from urllib.parse import urlparse

    import boto3

    bucket = urlparse(settings.storage_url).netloc
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1")
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)


def run_submit_bench(
    settings: Settings,
    *,
    levels: list[int],
    requests: int,
    same_image: bool = False,
    s3_server: str = "",
    url: str = "",
    api_key: str = "",
    api_pid: int | None = None,
) -> list[LevelResult]:
    """Start what is needed (S3 server, API), then measure every concurrency level."""
    with ExitStack() as stack:
        if s3_server == "moto":
            endpoint, _ = stack.enter_context(moto_server())
            settings = settings.model_copy(update={"s3_endpoint_url": endpoint})
        if not url:
            upgrade(settings.database_url)
            if settings.storage_url.startswith("s3://"):
                ensure_bucket(settings)
            api_key = bench_api_key(settings) if settings.auth_enabled else ""
            url, api_pid = stack.enter_context(api_process(settings, free_port(), {}))
        return asyncio.run(
            run_levels(
                url,
                api_key,
                levels=levels,
                requests=requests,
                same_image=same_image,
                api_pid=api_pid,
            )
        )
