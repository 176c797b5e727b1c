"""Service routes: models, liveness and readiness."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text

from api.deps import Runtime, RuntimeDep, SessionDep, TenantDep
from api.schemas import (
    Health,
    ModelPublic,
    ModelsPublic,
    PresetPublic,
    PresetsPublic,
    WorkerPublic,
    WorkersPublic,
)
from core.db import utcnow
from core.errors import ServiceError
from core.models import LIVE_WORKER_STATES, Worker, WorkerState
from core.tasks import PRESETS
from core.views import iso

# Workers silent for longer than this are history, not capacity: the listing leaves them out.
WORKER_HISTORY_S = 24 * 3600

router = APIRouter()


@router.get("/v1/models", response_model=ModelsPublic, tags=["service"])
def list_models(runtime: RuntimeDep, session: SessionDep, _tenant: TenantDep) -> ModelsPublic:
    """The models jobs can name, with how many workers serve each."""
    fresh = utcnow() - timedelta(seconds=runtime.settings.heartbeat_s * 3)
    counts = dict(
        session.execute(
            select(Worker.model, func.count())
            .where(Worker.last_heartbeat_at >= fresh, Worker.state != WorkerState.STOPPED)
            .group_by(Worker.model)
        ).all()
    )
    return ModelsPublic(
        models=[
            ModelPublic(
                alias=m.alias,
                checkpoint=m.checkpoint,
                queue=m.queue,
                default=m.default,
                tile_size=m.tile_size,
                max_tiles=m.max_tiles,
                workers=counts.get(m.alias, 0),
            )
            for m in runtime.settings.models
        ]
    )


@router.get("/v1/workers", response_model=WorkersPublic, tags=["service"])
def list_workers(runtime: RuntimeDep, session: SessionDep, _tenant: TenantDep) -> WorkersPublic:
    """Worker processes heard from in the last day: device, model, state and batch statistics."""
    now = utcnow()
    overdue = now - timedelta(seconds=runtime.settings.heartbeat_s * 3)
    rows = session.scalars(
        select(Worker)
        .where(Worker.last_heartbeat_at >= now - timedelta(seconds=WORKER_HISTORY_S))
        .order_by(Worker.model, Worker.host, Worker.device, Worker.id)
    )
    return WorkersPublic(
        workers=[
            WorkerPublic(
                id=row.id,
                host=row.host,
                device=row.device,
                model=row.model,
                queue=row.queue,
                state=WorkerState.LOST
                if row.state in LIVE_WORKER_STATES and row.last_heartbeat_at < overdue
                else row.state,
                pid=row.pid,
                started_at=iso(row.started_at),
                last_heartbeat_at=iso(row.last_heartbeat_at),
                jobs_done=row.jobs_done,
                stats=row.stats or {},
            )
            for row in rows
        ]
    )


@router.get("/v1/presets", response_model=PresetsPublic, tags=["service"])
def list_presets(_tenant: TenantDep) -> PresetsPublic:
    """The named instructions a task=prompt job can pick with `preset`."""
    return PresetsPublic(
        presets=[PresetPublic(name=name, instruction=text) for name, text in PRESETS.items()]
    )


@router.get("/healthz", response_model=Health, tags=["service"])
def healthz() -> Health:
    """The process is alive (no dependency is checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, tags=["service"], responses={503: {"model": Health}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Database, broker and storage are reachable; 503 names what is not."""
    checks = await run_in_threadpool(dependency_checks, runtime)
    ready = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def dependency_checks(runtime: Runtime) -> dict[str, str]:
    """'ok' or the error for each dependency."""
    checks: dict[str, str] = {}
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        with runtime.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"error: {type(exc).__name__}"
    try:
        runtime.storage.check()
        checks["storage"] = "ok"
    except ServiceError as exc:
        checks["storage"] = f"error: {exc.detail}"
    except Exception as exc:  # noqa: BLE001
        checks["storage"] = f"error: {type(exc).__name__}"
    return checks
