"""Celery task definitions of a GPU worker; the work itself is in worker.runtime."""

from __future__ import annotations

from celery import Celery

from core.logs import log_context
from core.queue import RUN_JOB_TASK
from worker.runtime import WorkerRuntime


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Bind the run_job task of `app` to this process's runtime."""

    @app.task(name=RUN_JOB_TASK, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
    def run_job(job_id: str) -> str:
        # Every line logged while this job runs names it (and its tenant, once claimed).
        with log_context(job_id=job_id, worker=runtime.worker_id):
            return runtime.run_job(job_id)
