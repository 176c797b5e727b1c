"""Prometheus metrics of every process (API, workers, sweeper, webhook worker).

Each process exposes its own registry: the API on GET /metrics, the others on their probe
port (core.probe_server). Counters and histograms are recorded where things happen (requests,
committed job events, batches); gauges that describe the whole deployment (queue depth, age
of the oldest queued job, workers) are read from the database when the API is scraped.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "REGISTRY", "render"]

# Latencies from a millisecond (a GET) to a minute (a large upload).
HTTP_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Job durations: queue waits and generations from tens of milliseconds to hours.
JOB_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

HTTP_REQUESTS = Counter(
    "internvl_jobs_http_requests",
    "HTTP requests answered by the API, by route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "internvl_jobs_http_request_duration_seconds",
    "Time the API took to answer, by route template.",
    ["method", "route"],
    buckets=HTTP_BUCKETS_S,
    registry=REGISTRY,
)
JOBS_SUBMITTED = Counter(
    "internvl_jobs_jobs_submitted",
    "Jobs accepted (committed as queued) by this process.",
    ["model", "task"],
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "internvl_jobs_jobs_finished",
    "Jobs that reached a terminal status in this process, by outcome.",
    ["model", "task", "outcome"],
    registry=REGISTRY,
)
JOBS_REQUEUED = Counter(
    "internvl_jobs_jobs_requeued",
    "Running jobs given back to the queue (worker stopped, lease expired, transient error).",
    ["model"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "internvl_jobs_job_queue_wait_seconds",
    "Time from submission to a worker claiming the job.",
    ["model"],
    buckets=JOB_BUCKETS_S,
    registry=REGISTRY,
)
INFERENCE_TIME = Histogram(
    "internvl_jobs_job_inference_seconds",
    "Time from a worker claiming a job to its result (images read, tiled, generated).",
    ["model", "task"],
    buckets=JOB_BUCKETS_S,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "internvl_jobs_batch_size",
    "Jobs per generate() call of a worker's batcher.",
    ["model"],
    buckets=BATCH_SIZE_BUCKETS,
    registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "internvl_jobs_batch_duration_seconds",
    "Wall time of one generate() call.",
    ["model"],
    buckets=JOB_BUCKETS_S,
    registry=REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "internvl_jobs_webhook_attempts",
    "Webhook send attempts by the delivery's resulting status (succeeded, pending: will be "
    "retried, failed, disabled by a 410) or duplicate/superseded messages.",
    ["outcome"],
    registry=REGISTRY,
)
SWEEPS = Counter(
    "internvl_jobs_sweeper_actions",
    "What the recovery sweeper did: republished, requeued, exhausted or canceled jobs.",
    ["action"],
    registry=REGISTRY,
)
LAST_SWEEP = Gauge(
    "internvl_jobs_sweeper_last_sweep_timestamp_seconds",
    "When the sweeper last finished a pass (unix time).",
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "internvl_jobs_process_info",
    "Always 1; labels say which kind of process this is.",
    ["role"],
    registry=REGISTRY,
)


def record_sweep(report: Any) -> None:
    """Count what one sweep did (a core.sweeper.SweepReport) and when it finished."""
    for action in ("republished", "requeued", "exhausted", "canceled", "expired"):
        SWEEPS.labels(action).inc(getattr(report, action, 0))
    LAST_SWEEP.set_to_current_time()


def render(*extra: CollectorRegistry) -> bytes:
    """The text exposition of this process's metrics (the default registry, with its process
    and Python collectors), followed by any per-component registries."""
    return b"".join([generate_latest(REGISTRY), *(generate_latest(r) for r in extra)])
