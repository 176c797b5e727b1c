"""What routes depend on: the process-wide runtime, a database session, the caller's tenant."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.backpressure import QueueDepth
from api.fetch import ImageFetcher
from api.longpoll import JobWaiters
from core.config import Settings
from core.db import make_engine, make_session_factory, transaction
from core.errors import TooManyRequests
from core.logs import bind_log_context
from core.notify import JobFeed, job_feed
from core.queue import make_celery
from core.queue_info import ModelStatsCache
from core.ratelimit import RateLimiter, rate_limiter
from core.storage import ObjectStorage, settings_storage
from core.tenants import DEFAULT_TENANT_ID, authenticate_key


@dataclass
class Runtime:
    """Clients created once per API process and shared by every request."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: ObjectStorage
    celery: Celery
    feed: JobFeed | None = None
    limiter: RateLimiter | None = None
    queue_depth: QueueDepth = field(default_factory=QueueDepth)
    model_stats: ModelStatsCache = field(default_factory=ModelStatsCache)
    fetcher: ImageFetcher | None = None  # built from the settings on first use

    def image_fetcher(self) -> ImageFetcher:
        """The process's image URL fetcher (its own threads and caps)."""
        if self.fetcher is None:
            self.fetcher = ImageFetcher.from_settings(self.settings)
        return self.fetcher

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        """Connect to the database, storage and broker the settings name."""
        engine = make_engine(settings.database_url, pool_size=settings.pool_size(10))
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            storage=settings_storage(settings),
            celery=make_celery(settings),
            feed=job_feed(settings),
            limiter=rate_limiter(settings),
        )

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()
        self.celery.close()
        if self.fetcher is not None:
            self.fetcher.close()


# The dependencies that only read the request are coroutines: FastAPI runs a plain function
# dependency on a thread of its pool, a hop that costs more CPU than the function itself.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with transaction(runtime.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


TENANT_STATE_KEY = "tenant_id"  # where api.auth_gate leaves the tenant it authenticated


def resolve_tenant(runtime: Runtime, authorization: str | None) -> str:
    """The caller's tenant from its API key (or the default tenant when auth is disabled);
    Unauthorized without a valid key, TooManyRequests over the key's rate limit."""
    if not runtime.settings.auth_enabled:
        return DEFAULT_TENANT_ID  # created at start-up
    with transaction(runtime.sessions) as session:
        key = authenticate_key(session, authorization)
        key_id, tenant_id = key.id, key.tenant_id
    if runtime.limiter is not None:
        wait_s = runtime.limiter.acquire(key_id)
        if wait_s > 0:
            raise TooManyRequests(
                f"this API key is over its rate limit; retry in {wait_s:.2f}s",
                code="rate_limited",
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
    return tenant_id


async def get_tenant_id(
    request: Request,
    runtime: RuntimeDep,
    authorization: Annotated[str | None, Header()] = None,
) -> str:
    """The caller's tenant, as the auth gate established it (or resolved here, off the loop)."""
    tenant_id = getattr(request.state, TENANT_STATE_KEY, None)
    if tenant_id is None:
        tenant_id = await run_in_threadpool(resolve_tenant, runtime, authorization)
    bind_log_context(tenant=tenant_id)
    return str(tenant_id)


TenantDep = Annotated[str, Depends(get_tenant_id)]


async def get_waiters(request: Request) -> JobWaiters:
    waiters: JobWaiters = request.app.state.waiters
    return waiters


WaitersDep = Annotated[JobWaiters, Depends(get_waiters)]
