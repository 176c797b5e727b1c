"""A worker process's state: the engine and batcher, the jobs it holds, and how it runs one."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from core.config import ModelSpec, Settings
from core.db import transaction, utcnow
from core.errors import PermanentJobError
from core.images import load_rgb
from core.jobs import cancel_job, claim_job, complete_job, fail_job, release_job
from core.models import Job
from core.prompts import build_conversation
from core.retry import is_transient, retry_transient
from core.specs import GenerationParams
from core.storage import ObjectNotFound, ObjectStorage, image_key
from worker.batcher import Batcher
from worker.engine import Generation, InternVLEngine

log = logging.getLogger("worker.runtime")

# How long a finished job's result write is retried while the database is unreachable.
RESULT_WRITE_DEADLINE_S = 600.0


@dataclass
class Held:
    """A job this worker has claimed: the attempt it holds and the job's cancel flag."""

    attempt: int
    cancel: threading.Event


class WorkerRuntime:
    """Runs claimed jobs through the batcher and keeps their leases alive."""

    def __init__(
        self,
        *,
        settings: Settings,
        spec: ModelSpec,
        sessions: sessionmaker[Session],
        storage: ObjectStorage,
        engine: InternVLEngine,
        worker_id: str,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.sessions = sessions
        self.storage = storage
        self.engine = engine
        self.worker_id = worker_id
        self.batcher = Batcher(
            engine.generate,
            max_batch_size=spec.max_batch_size,
            max_wait_ms=spec.max_batch_wait_ms,
            max_batch_tiles=spec.max_batch_tiles,
        )
        self.held: dict[str, Held] = {}
        self._held_lock = threading.Lock()
        self.jobs_done = 0

    # -- one job ---------------------------------------------------------------------------

    def run_job(self, job_id: str) -> str:
        """Claim and run one job; returns the outcome ('duplicate' when not claimable)."""
        job = retry_transient(lambda: self._claim(job_id), what=f"claiming {job_id}", deadline_s=60)
        if job is None:
            log.info("job %s is not queued; duplicate delivery ignored", job_id)
            return "duplicate"
        held = Held(attempt=job.attempts, cancel=threading.Event())
        with self._held_lock:
            self.held[job_id] = held
        try:
            return self._run_claimed(job, held)
        finally:
            with self._held_lock:
                self.held.pop(job_id, None)

    def _claim(self, job_id: str) -> Job | None:
        with transaction(self.sessions) as session:
            return claim_job(
                session, job_id, worker_id=self.worker_id, lease_s=self.settings.lease_s
            )

    def _run_claimed(self, job: Job, held: Held) -> str:
        started = time.monotonic()
        try:
            generation, prepared_tiles, prompt_tokens = self._generate(job, held)
        except PermanentJobError as exc:
            code, message = exc.code, exc.detail
            self._write(
                lambda s: fail_job(s, job.id, code=code, message=message, attempt=held.attempt)
            )
            return "failed"
        except Exception as exc:
            if not is_transient(exc):
                raise
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("job %s hit a transient error (%s); back to the queue", job.id, reason)
            self._write(lambda s: release_job(s, job.id, attempt=held.attempt, reason=reason))
            return "released"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "image_tiles": prepared_tiles,
            "queue_s": round(((job.started_at or utcnow()) - job.created_at).total_seconds(), 3),
            "inference_s": round(time.monotonic() - started, 3),
        }
        if generation.finish_reason == "canceled":
            self._write(lambda s: cancel_job(s, job.id, attempt=held.attempt))
            return "canceled"
        result = {"text": generation.text, "finish_reason": generation.finish_reason}
        stored = self._write(
            lambda s: complete_job(s, job.id, attempt=held.attempt, result=result, usage=usage)
        )
        self.jobs_done += 1
        return "succeeded" if stored else "superseded"

    def _generate(self, job: Job, held: Held) -> tuple[Generation, list[int], int]:
        spec = job.spec
        params = GenerationParams.model_validate(spec["params"])
        images = [self._load_image(sha) for sha in spec["images"]]
        conversation = build_conversation(spec, control_tokens=self.engine.control_tokens)
        prepared = self.engine.prepare(job.id, conversation, images, params)
        prepared.cancel = held.cancel
        generation = self.batcher.submit(prepared).result()
        return generation, prepared.image_tiles, prepared.prompt_tokens

    def _load_image(self, sha: str) -> Image.Image:
        try:
            data = retry_transient(
                lambda: self.storage.get(image_key(sha)), what=f"reading image {sha}", deadline_s=30
            )
        except ObjectNotFound as exc:
            raise PermanentJobError(
                f"image sha256:{sha} is no longer stored", code="image_missing"
            ) from exc
        try:
            return load_rgb(data)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means the image is unusable
            raise PermanentJobError(
                f"image sha256:{sha} could not be decoded: {exc}", code="invalid_image"
            ) from exc

    def _write(self, change: Any) -> Any:
        """Apply a fenced state change, retrying while the database is unreachable."""

        def attempt() -> Any:
            with transaction(self.sessions) as session:
                return change(session)

        return retry_transient(
            attempt, what="writing a job result", deadline_s=RESULT_WRITE_DEADLINE_S
        )

    # -- leases ----------------------------------------------------------------------------

    def held_attempts(self) -> dict[str, int]:
        """The jobs this worker holds now, with their attempts."""
        with self._held_lock:
            return {job_id: held.attempt for job_id, held in self.held.items()}

    def flag_canceled(self, job_ids: set[str]) -> None:
        """Tell the generation loop to stop these jobs at the next step."""
        with self._held_lock:
            for job_id in job_ids:
                if job_id in self.held:
                    self.held[job_id].cancel.set()
