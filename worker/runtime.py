"""A worker process's state: the engine and batcher, the jobs it holds, and how it runs one.

Every outcome is a fenced write (conditional on the attempt this worker holds), retried
while the database is unreachable; the Celery task returns, and so acknowledges its message,
only after that write. Errors are sorted: a permanent one fails the job with its code, any
other gives the job back with a backoff (attempts are capped), and a stop for shutdown gives
it back at once, without counting the attempt against the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable
from concurrent.futures import CancelledError
from datetime import timedelta
from typing import Any

import torch
from celery import Celery
from celery.exceptions import Reject
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from core.config import ModelSpec, Settings
from core.db import transaction, utcnow
from core.dispatch import publish_or_defer
from core.errors import PermanentJobError, ServiceError
from core.jobs import cancel_job, claim_job, complete_job, fail_job, release_job
from core.leases import LeaseCheck
from core.models import Job
from core.prompts import Conversation, build_conversation
from core.retry import is_transient, retry_transient
from core.specs import GenerationParams
from core.storage import ObjectNotFound, ObjectStorage, image_key
from worker.batcher import Batcher
from worker.claims import Held, WorkerDraining
from worker.engine import Generation, InternVLEngine
from worker.model_client import ModelClient
from worker.model_host import (
    Announced,
    CachedImage,
    LocalModel,
    ModelHost,
    ModelRequest,
    PromptImage,
)
from worker.prepare_reads import ImageMissing, StoredImage
from worker.preparer import ImageUndecodable
from worker.preparing import InProcessPreparing, Preparing
from worker.schedulers import make_batcher
from worker.video import VideoUndecodable

log = logging.getLogger("worker.runtime")

# How long a finished job's result write is retried while the database is unreachable, and
# how long an image read is retried before the job is handed back.
RESULT_WRITE_DEADLINE_S = 600.0
IMAGE_READ_DEADLINE_S = 30.0


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
        log.info("job %s %s (attempt %d)", job_id, outcome, held.attempt)
        return outcome

    def _claim(self, job_id: str) -> Job | None:
        with transaction(self.sessions) as session:
            return claim_job(
                session,
                job_id,
                worker_id=self.worker_id,
                lease_s=self.settings.lease_s,
                running_limit=self.settings.max_running_jobs_per_tenant,
                hold_s=self.settings.tenant_limit_hold_s,
            )

    def _run_claimed(self, job: Job, held: Held) -> str:
        started = time.monotonic()
        try:
            generation, prepared_tiles, prompt_tokens, frames = self._generate(job, held)
        except (CancelledError, WorkerDraining):
            return self._after_stop(job, held, usage=None)
        except Exception as exc:  # noqa: BLE001 - every error ends in a recorded outcome
            return self._after_error(job, held, exc)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "image_tiles": prepared_tiles,
            **({"frames": len(frames), "frame_indices": frames} if frames is not None else {}),
            "queue_s": round(((job.started_at or utcnow()) - job.created_at).total_seconds(), 3),
            "inference_s": round(time.monotonic() - started, 3),
        }
        if generation.finish_reason == "canceled" and held.stop_reason is not None:
            return self._after_stop(job, held, usage=usage)
        result: dict[str, Any] = {
            "text": generation.text,
            "finish_reason": generation.finish_reason,
            **generation.extra,  # structured output: the parsed value as "json"
        }
        if generation.seed is not None:
            result["seed"] = generation.seed  # sampled: the seed that reproduces this text
        stored = self._write(
            lambda s: complete_job(s, job.id, attempt=held.attempt, result=result, usage=usage)
        )
        if not stored:
            return "superseded"
        self.jobs_done += 1
        return "succeeded"

    def _after_stop(self, job: Job, held: Held, *, usage: dict[str, Any] | None) -> str:
        if held.stop_reason == "lost":  # another attempt owns the job now; writes are fenced
            return "superseded"
        if held.stop_reason == "canceled":
            ended = self._write(lambda s: cancel_job(s, job.id, attempt=held.attempt, usage=usage))
            return "canceled" if ended else "superseded"
        released = self._write(
            lambda s: release_job(
                s,
                job.id,
                attempt=held.attempt,
                reason="worker_shutdown",
                published=True,
                refund_attempt=True,
            )
        )
        if released is None or released.status != "queued":
            return "superseded" if released is None else released.status
        if self.celery is not None:
            publish_or_defer(
                sessions=self.sessions,
                celery=self.celery,
                model=self.spec,
                job_id=job.id,
                priority=job.priority,
            )
        return "released"

    def _after_error(self, job: Job, held: Held, exc: Exception) -> str:
        permanent = _permanent_code(exc)
        if permanent is not None:
            code, message = permanent
            self._write(
                lambda s: fail_job(s, job.id, code=code, message=message, attempt=held.attempt)
            )
            return "failed"
        reason = f"{type(exc).__name__}: {exc}"
        if not is_transient(exc):
            log.error("job %s raised an unexpected error", job.id, exc_info=exc)
        if held.attempt >= job.max_attempts:
            message = f"the job failed {held.attempt} times; last error: {reason}"
            self._write(
                lambda s: fail_job(
                    s, job.id, code="attempts_exhausted", message=message, attempt=held.attempt
                )
            )
            return "failed"
        delay = min(
            self.settings.retry_backoff_max_s,
            self.settings.retry_backoff_s * 2 ** (held.attempt - 1),
        )
        log.warning("job %s: %s; it runs again in %.1fs", job.id, reason, delay)
        self._write(
            lambda s: release_job(
                s,
                job.id,
                attempt=held.attempt,
                reason=reason[:500],
                available_at=utcnow() + timedelta(seconds=delay),
            )
        )
        return "released"

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
        with self.model.cached(keys) as cached:  # kept (not evicted) until submitted
            if spec.get("video") is not None:  # sampled, decoded and prepared where images are
                frames, input_ids, images, tiles = self._video_inputs(spec, max_tiles)
            else:
                conversation = build_conversation(spec, control_tokens=self.model.control_tokens)
                input_ids, images, tiles = self._inputs(
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

    def _video_inputs(
        self, spec: dict[str, Any], max_tiles: int
    ) -> tuple[list[int], torch.Tensor, list[PromptImage], list[int]]:
        """(frames read, ids, each frame's pixels, tiles per frame) of a video job.

        The clip is read here, or by the prepare process when the pool reads storage; its
        frames are sampled, decoded and prepared by the prepare processes (or this thread), not
        cached: a clip is rarely asked twice.
        """
        sha = str(spec["video"]["sha256"])
        try:
            video = self.preparing.run_video(
                spec,
                self.model.control_tokens,
                self._source(sha),
                max_tiles=max_tiles,
                on_device=self.model.resize_on_device,
            )
        except VideoUndecodable as exc:
            raise PermanentJobError(
                f"video sha256:{sha} could not be decoded: {exc.reason}", code="invalid_video"
            ) from exc
        except ImageMissing as exc:
            raise _missing(sha) from exc
        pixels: list[PromptImage] = []
        for index in video.order:
            image = video.inputs.tiles[index]
            assert image is not None  # every frame was given as a picture, none as a count
            pixels.append(PromptImage(image))
        counts = [video.inputs.counts[i] for i in video.order]
        return video.frames, video.inputs.input_ids, pixels, counts

    def _inputs(
        self,
        shas: list[str],
        conversation: Conversation,
        max_tiles: int,
        keys: list[Hashable],
        cached: list[CachedImage | None],
    ) -> tuple[torch.Tensor, list[PromptImage], list[int]]:
        """(ids, each image, tiles per image) of a job, in its conversation's order.

        Images in the prepare cache are not read again; the others are read here, then decoded
        (and tiled, unless the device resizes) and tokenised around by the prepare processes
        (or this thread), and marked fresh: the model keeps them in its cache. The pixels stay
        one tensor per image: the device copies them into its batch one by one, so no host
        concatenation happens anywhere.
        """
        sources: list[bytes | int | StoredImage] = [
            self._source(sha) if image is None else image.tiles
            for sha, image in zip(shas, cached, strict=True)
        ]
        try:
            inputs = self.preparing.run(
                conversation, sources, max_tiles=max_tiles, on_device=self.model.resize_on_device
            )
        except ImageUndecodable as exc:
            raise PermanentJobError(
                f"image sha256:{shas[exc.index]} could not be decoded: {exc.reason}",
                code="invalid_image",
            ) from exc
        except ImageMissing as exc:
            raise _missing(shas[exc.index]) from exc
        images: list[PromptImage] = []
        for key, old, new in zip(keys, cached, inputs.tiles, strict=True):
            if new is not None:
                images.append(PromptImage(new, key, fresh=True))
            else:
                assert old is not None
                images.append(PromptImage(old.pixels, key))
        order = conversation.image_order
        return inputs.input_ids, [images[i] for i in order], [inputs.counts[i] for i in order]

    def _source(self, sha: str) -> bytes | StoredImage:
        """An image to prepare: its key when the prepare processes read it, else its bytes."""
        return StoredImage(sha) if self.preparing.reads_storage else self._read_image(sha)

    def _read_image(self, sha: str) -> bytes:
        try:
            data: bytes = retry_transient(
                lambda: self.storage.get(image_key(sha)),
                what=f"reading image {sha}",
                deadline_s=self.read_deadline_s,
            )
        except ObjectNotFound as exc:
            raise _missing(sha) from exc
        return data

    def _write(self, change: Any) -> Any:
        """Apply a fenced state change, retrying while the database is unreachable."""

        def attempt() -> Any:
            with transaction(self.sessions) as session:
                return change(session)

        deadline_s = self.write_deadline_s
        return retry_transient(attempt, what="writing a job result", deadline_s=deadline_s)

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


def _missing(sha: str) -> PermanentJobError:
    return PermanentJobError(f"image sha256:{sha} is no longer stored", code="image_missing")


def _permanent_code(exc: Exception) -> tuple[str, str] | None:
    """(code, message) for errors that fail however often the job is retried."""
    if isinstance(exc, ServiceError) and exc.permanent:
        return exc.code, exc.detail
    if isinstance(exc, ValidationError):
        return "invalid_params", str(exc)
    return None
