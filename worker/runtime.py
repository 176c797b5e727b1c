"""A worker process's state: the engine and batcher, the jobs it holds, and how it runs one.

A job's message is claimed (a fenced claim on the database), its inputs are gathered
(worker.gathering: images read, prepared and put in prompt order), the model generates
(in this process, or in the model process: worker.model_host), and the outcome is written
(worker.outcomes: fenced, retried while the database is unreachable; the Celery task returns,
and so acknowledges its message, only after that write). Lease checks and cancels stop a held
job's generation; a shutdown hands back the jobs not yet generating at once, and the others
once its grace has passed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable
from concurrent.futures import CancelledError

from celery import Celery
from celery.exceptions import Reject
from sqlalchemy.orm import Session, sessionmaker

from core.config import ModelSpec, Settings
from core.db import utcnow
from core.jobs import claim_job
from core.leases import LeaseCheck
from core.models import Job
from core.prompts import build_conversation
from core.retry import retry_transient
from core.specs import GenerationParams
from core.storage import ObjectStorage
from worker.batcher import Batcher
from worker.claims import Held, WorkerDraining
from worker.engine import Generation, InternVLEngine
from worker.gathering import IMAGE_READ_DEADLINE_S, Gatherer
from worker.group_commit import GroupCommitter
from worker.model_client import ModelClient
from worker.model_host import Announced, LocalModel, ModelHost, ModelRequest
from worker.outcomes import RESULT_WRITE_DEADLINE_S, OutcomeWriter
from worker.preparing import InProcessPreparing, Preparing
from worker.schedulers import make_batcher

log = logging.getLogger("worker.runtime")


class WorkerRuntime:
    """Runs claimed jobs through the batcher and keeps their leases alive."""

    def __init__(
        self,
        *,
        settings: Settings,
        spec: ModelSpec,
        sessions: sessionmaker[Session],
        storage: ObjectStorage,
        engine: InternVLEngine | None,
        worker_id: str,
        celery: Celery | None = None,
        preparing: Preparing | None = None,
        model: ModelClient | None = None,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.sessions = sessions
        self.storage = storage
        self.engine = engine
        self.worker_id = worker_id
        self.celery = celery  # publishes jobs handed back at shutdown; else the sweeper does
        # Claims and outcomes of the task threads: those made together commit together.
        self.commits = GroupCommitter(sessions, concurrency=settings.database_commit_concurrency)
        # Prepare processes (worker.prepare_pool), or else this process's task threads.
        if preparing is None:
            assert engine is not None, "without an engine here, jobs prepare elsewhere"
            preparing = InProcessPreparing(engine.preparer)
        self.preparing = preparing
        # The model: in its own process (worker.model_client), or the engine and its batcher
        # here; `batcher` starts, stops and reports it either way.
        self.batcher: Batcher | ModelClient
        self.model: ModelHost
        if model is not None:
            self.batcher = self.model = model
        else:
            assert engine is not None, "a worker runs the model here or in its model process"
            self.batcher = make_batcher(engine, spec)
            self.model = LocalModel(engine, self.batcher, cacheable=preparing.cacheable)
        self.held: dict[str, Held] = {}
        self._held_lock = threading.Lock()
        self.draining = False
        self._shutdown_begun = False
        self.jobs_done = 0
        self.write_deadline_s = RESULT_WRITE_DEADLINE_S
        self.read_deadline_s = IMAGE_READ_DEADLINE_S

    # -- one job ---------------------------------------------------------------------------

    def run_job(self, job_id: str) -> str:
        """Claim and run one job; returns the outcome ('duplicate' when not claimable)."""
        if self.draining:  # unclaimed: the broker redelivers the message to another worker
            raise Reject("the worker is shutting down", requeue=True)
        # Announced before the claim, so a batch about to start waits for this job (bounded);
        # withdrawn on every path that does not reach the batcher.
        announcement = self.model.announce()
        try:
            return self._claim_and_run(job_id, announcement)
        finally:
            announcement.withdraw()

    def _claim_and_run(self, job_id: str, announcement: Announced) -> str:
        job = retry_transient(lambda: self._claim(job_id), what=f"claiming {job_id}", deadline_s=60)
        if job is None:
            # Duplicate or late delivery, or held back by its tenant's running limit (logged).
            log.info("job %s is not claimable now; message dropped", job_id)
            return "duplicate"
        held = Held(
            attempt=job.attempts,
            announcement=announcement,
            cancel=self.model.cancel_event(job_id),
        )
        with self._held_lock:
            self.held[job_id] = held
        try:
            outcome = self._run_claimed(job, held)
        finally:
            with self._held_lock:
                self.held.pop(job_id, None)
        # Kept at INFO for every outcome, succeeded included, though the job event logs it too:
        # the fault suite counts these lines as the worker's own witness of each completion.
        log.info("job %s %s (attempt %d)", job_id, outcome, held.attempt)
        return outcome

    def _claim(self, job_id: str) -> Job | None:
        return self.commits.run(
            lambda session: claim_job(
                session,
                job_id,
                worker_id=self.worker_id,
                lease_s=self.settings.lease_s,
                running_limit=self.settings.max_running_jobs_per_tenant,
                hold_s=self.settings.tenant_limit_hold_s,
            )
        )

    def _run_claimed(self, job: Job, held: Held) -> str:
        started = time.monotonic()
        try:
            generation, prepared_tiles, prompt_tokens, frames = self._generate(job, held)
        except (CancelledError, WorkerDraining):
            return self._outcomes().after_stop(job, held, usage=None)
        except Exception as exc:  # noqa: BLE001 - every error ends in a recorded outcome
            return self._outcomes().after_error(job, held, exc)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "image_tiles": prepared_tiles,
            **({"frames": len(frames), "frame_indices": frames} if frames is not None else {}),
            "queue_s": round(((job.started_at or utcnow()) - job.created_at).total_seconds(), 3),
            "inference_s": round(time.monotonic() - started, 3),
        }
        if generation.finish_reason == "canceled" and held.stop_reason is not None:
            return self._outcomes().after_stop(job, held, usage=usage)
        outcome = self._outcomes().complete(job, held, generation, usage)
        if outcome == "succeeded":
            self.jobs_done += 1
        return outcome

    def _generate(
        self, job: Job, held: Held
    ) -> tuple[Generation, list[int], int, list[int] | None]:
        """Generate for one job: (generation, tiles per image, prompt tokens, video frames read)."""
        spec = job.spec
        params = GenerationParams.model_validate(spec["params"])
        max_tiles = params.max_tiles or self.spec.max_tiles
        frames: list[int] | None = None
        keys: list[Hashable] = []
        if spec.get("video") is None:
            keys = [self.model.cache_key(sha, max_tiles) for sha in spec["images"]]
        gatherer = self._gatherer()
        with self.model.cached(keys) as cached:  # kept (not evicted) until submitted
            if spec.get("video") is not None:  # sampled, decoded and prepared where images are
                frames, input_ids, images, tiles = gatherer.video_inputs(spec, max_tiles)
            else:
                conversation = build_conversation(spec, control_tokens=self.model.control_tokens)
                input_ids, images, tiles = gatherer.image_inputs(
                    spec["images"], conversation, max_tiles, keys, cached
                )
            request = ModelRequest(
                job.id, input_ids, images, tiles, params, spec.get("response_format"), held.cancel
            )
            prepared = self.model.prepared(request)
            with self._held_lock:  # begin_shutdown takes this lock: no job slips in after it
                if self.draining or held.stop_reason is not None:
                    raise WorkerDraining(job.id)
                held.future = self.model.submit(prepared, announcement=held.announcement)
        tiles, prompt_tokens = request.tiles, request.prompt_tokens
        # The pixels are the model's now: a lent prepare slot goes back once it is done with it.
        del request, prepared, images
        generation = held.future.result()
        return generation, tiles, prompt_tokens, frames

    # Built where they are used, from the runtime's attributes as they are then (the worker
    # sets `celery` once its app exists; tests swap storage, settings and deadlines).
    def _gatherer(self) -> Gatherer:
        return Gatherer(
            preparing=self.preparing,
            model=self.model,
            storage=self.storage,
            read_deadline_s=self.read_deadline_s,
        )

    def _outcomes(self) -> OutcomeWriter:
        return OutcomeWriter(
            settings=self.settings,
            spec=self.spec,
            sessions=self.sessions,
            celery=self.celery,
            write_deadline_s=self.write_deadline_s,
            commits=self.commits,
        )

    # -- leases, cancels and shutdown ------------------------------------------------------

    def held_attempts(self) -> dict[str, int]:
        """The jobs this worker holds now, with their attempts."""
        with self._held_lock:
            return {job_id: held.attempt for job_id, held in self.held.items()}

    def apply_lease_check(self, check: LeaseCheck) -> None:
        """Stop jobs whose lease was lost or whose cancel was requested."""
        with self._held_lock:
            for reason, job_ids in (("lost", check.lost), ("canceled", check.canceled)):
                for job_id in job_ids:
                    if job_id in self.held:
                        log.info("job %s: stopping (%s)", job_id, reason)
                        self.held[job_id].stop(reason)

    def begin_shutdown(self, grace_s: float) -> None:
        """Hand back jobs not yet generating now, and the others if still running after grace_s."""
        # Signal handlers run on the main thread, and a second SIGTERM (the launcher forwards
        # one when the whole process group got one) can interrupt the first handler while it
        # holds the lock: only the first call goes on, so the lock is never taken twice.
        if self._shutdown_begun:
            return
        self._shutdown_begun = True
        with self._held_lock:
            self.draining = True
            waiting = [h for h in self.held.values() if h.future is not None]
            for held in waiting:
                if held.future is not None and held.future.cancel():
                    held.stop("shutdown")
        log.info("shutting down: running batches have %.0fs to finish", grace_s)
        timer = threading.Timer(grace_s, self._preempt_all)
        timer.daemon = True
        timer.start()

    def _preempt_all(self) -> None:
        with self._held_lock:
            for job_id, held in self.held.items():
                log.info("job %s: still running after the shutdown grace; handing it back", job_id)
                held.stop("shutdown")
