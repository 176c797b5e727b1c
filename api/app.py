"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.auth_gate import AuthGateMiddleware
from api.body_limit import BodyLimitMiddleware
from api.deps import Runtime
from api.longpoll import JobWaiters
from api.openapi import publish_schemas
from api.problems import install_problem_handlers
from api.routes import batches, images, jobs, metrics, service, videos, webhooks
from api.schemas import Problem
from api.telemetry import RequestTelemetryMiddleware
from core.config import Settings, get_settings
from core.db import transaction
from core.hooks import install_job_hooks
from core.images import set_pixel_limit
from core.job_telemetry import install_job_telemetry
from core.metrics import BUILD_INFO
from core.specs import BatchCreate, BatchOptions, JobCreate
from core.tenants import ensure_default_tenant

DESCRIPTION = """Asynchronous InternVL inference: submit images and a task, poll the job or
receive a signed webhook when it finishes. Errors are application/problem+json with a stable
`code`."""


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """The API app for these settings (or the environment's); clients are created at start-up."""
    settings = settings or (runtime.settings if runtime else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = runtime or Runtime.from_settings(settings)
        app.state.deployment_registry = metrics.deployment_registry(app.state.runtime)
        if not settings.auth_enabled:
            with transaction(app.state.runtime.sessions) as session:
                ensure_default_tenant(session)
        set_pixel_limit(settings.max_image_pixels)
        install_job_hooks(app.state.runtime.feed)
        app.state.waiters = JobWaiters(app.state.runtime.feed)
        app.state.waiters.start()
        try:
            yield
        finally:
            app.state.waiters.stop()
            if runtime is None:
                app.state.runtime.close()

    app = FastAPI(
        title="internvl-jobs",
        version="1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_job_telemetry()
    BUILD_INFO.labels("api").set(1)
    app.add_middleware(AuthGateMiddleware)  # inside the body cap, before any body is read
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestTelemetryMiddleware)  # outermost: sees refused bodies too
    install_problem_handlers(app)
    app.include_router(jobs.router)
    app.include_router(service.router)
    app.include_router(webhooks.router)
    app.include_router(metrics.router)
    app.include_router(images.router)
    app.include_router(videos.router)
    app.include_router(batches.router)
    publish_schemas(
        app,
        {
            "JobCreate": JobCreate,
            "BatchCreate": BatchCreate,
            "BatchOptions": BatchOptions,
            "Problem": Problem,
        },
        settings,
    )
    return app
