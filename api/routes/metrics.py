"""GET /metrics: this API process's Prometheus metrics and the deployment's queue gauges."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry

from api.deps import Runtime
from api.strict_json import StrictJsonRoute
from core import metrics
from core.queue_stats import QueueStatsCollector

router = APIRouter(route_class=StrictJsonRoute)


def deployment_registry(runtime: Runtime) -> CollectorRegistry:
    """A registry of the gauges read from the database and broker at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        QueueStatsCollector(
            sessions=runtime.sessions, settings=runtime.settings, celery=runtime.celery
        )
    )
    return registry


@router.get("/metrics", tags=["service"], response_class=Response, include_in_schema=True)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics: requests, jobs, queue depth and oldest job age per model, workers."""
    registry: CollectorRegistry = request.app.state.deployment_registry
    body = await run_in_threadpool(metrics.render, registry)
    return Response(body, media_type=metrics.CONTENT_TYPE_LATEST)
