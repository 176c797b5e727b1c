"""The Celery application: messages carry job ids only; the jobs table holds everything else.

Priorities: jobs carry 0..9, 9 most urgent. Kombu's Redis transport keeps one list per
priority step and serves step 0 first, so a job's priority p travels as 9 - p, with all ten
steps enabled. The filesystem broker of dev mode has no priorities.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from celery import Celery
from kombu.transport import filesystem as kombu_filesystem
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from core.config import ModelSpec, Settings

log = logging.getLogger("core.queue")

RUN_JOB_TASK = "internvl_jobs.run_job"
WEBHOOK_QUEUE = "internvl.webhooks"
DELIVER_WEBHOOK_TASK = "internvl_jobs.deliver_webhook"
MAX_PRIORITY = 9
# Redis keys of a model queue's priority lists: "<queue>:<step>" (step 0 is the bare name).
PRIORITY_SEPARATOR = ":"


def broker_priority(priority: int) -> int:
    """The kombu priority of a job priority (0..9, 9 most urgent): kombu serves 0 first."""
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be 0..{MAX_PRIORITY}, not {priority}")
    return MAX_PRIORITY - priority


def queue_keys(queue: str) -> list[str]:
    """The Redis lists holding a queue's messages, most urgent first."""
    return [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in range(1, MAX_PRIORITY + 1)]


def broker_options(broker_url: str) -> tuple[str, dict[str, Any]]:
    """The kombu URL and transport options for a broker URL (filesystem:///dir is ours)."""
    parsed = urlparse(broker_url)
    if parsed.scheme == "filesystem":
        folder = Path(unquote(parsed.netloc + parsed.path))
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return "filesystem://", {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        }
    return broker_url, {}


class _RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, keeping one client over its connection pool.

    kombu builds a new redis-py client object for every command it sends outside its
    consumer's BRPOP (each publish, each message's acknowledgement and unacked-index entry):
    redis-py's constructor, about 0.08 ms of CPU each. A client holds no connection of its
    own (they come from the channel's pool, per command), so one client serves every such
    command; a new one is made whenever the channel replaces its pool (after a fork or a
    disconnect).
    """

    _reused_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        reused = self._reused_client
        if reused is None or reused.connection_pool is not self.pool:
            reused = self._reused_client = self._create_client()  # type: ignore[no-untyped-call]
        yield reused


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above (redis:// brokers)."""

    Channel = _RedisChannel


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def message_name(queue: str, at_ms: int) -> str:
    """The file name of an embedded-broker message written at `at_ms` (unix milliseconds).

    Consumers take a queue's files in sorted name order, so the time is zero-padded: kombu's
    own names (unpadded milliseconds of the host's uptime) sort 10,000 before 9,999 and start
    again from 0 after a reboot, so a queue was not first in, first out.
    """
    return f"{at_ms:016d}_{uuid.uuid4()}.{queue}.msg"


class _FilesystemChannel(kombu_filesystem.Channel):
    """kombu's filesystem channel, with each message written whole before it can be read.

    kombu creates a message's file in the queue folder and then writes it, so a consumer
    listing the folder in between takes an empty file: it fails to decode it and the worker's
    consumer stops with an unrecoverable error (kombu issue #1551), the message gone. Here the
    message is written under a name no consumer reads (a leading dot: the queue's messages are
    named by `message_name`) and renamed into place, which is atomic on one filesystem.
    A message that still cannot be decoded (a file left half written by a crash before this
    change) is dropped with a warning instead of stopping the consumer: the job's row is the
    record, and the sweeper publishes a queued job whose message went missing again.
    """

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = message_name(queue, _now_ms())
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb") as out:
                out.write(dumps(payload).encode())  # type: ignore[no-untyped-call]
            os.replace(partial, final)
        except OSError as exc:
            with suppress(OSError):
                os.remove(partial)
            raise kombu_filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        while True:
            try:
                return super()._get(queue)  # type: ignore[no-untyped-call]
            except ValueError:  # json.JSONDecodeError: not a whole message
                log.warning("dropped an undecodable message of queue %s", queue)


class FilesystemTransport(kombu_filesystem.Transport):
    """kombu's filesystem transport with the channel above (the embedded broker)."""

    Channel = _FilesystemChannel


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for at-least-once delivery of job ids."""
    url, transport_options = broker_options(settings.broker_url)
    if url.startswith(("redis://", "rediss://")):
        transport_options.update(
            visibility_timeout=settings.visibility_timeout_s,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=25,
            priority_steps=list(range(MAX_PRIORITY + 1)),
            sep=PRIORITY_SEPARATOR,
        )
    app = Celery("internvl_jobs", broker=url, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.default_model.queue,
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        broker_pool_limit=10,
    )
    if url.startswith("redis://"):  # rediss:// keeps kombu's own, which sets its TLS up
        app.conf.broker_transport = f"{__name__}:RedisTransport"
    elif url.startswith("filesystem://"):
        app.conf.broker_transport = f"{__name__}:FilesystemTransport"
    return app


def celery_worker(
    app: Celery, settings: Settings, *, hostname: str, queue: str, threads: int, loglevel: str
) -> Any:
    """A Celery worker on one queue with a thread pool: how both Celery processes consume.

    No mingle or gossip (workers share nothing but the queue), fair prefetch (a long job does
    not hold short ones back), and no banner under JSON logs, where every line must parse.
    """
    return app.Worker(
        hostname=hostname,
        queues=[queue],
        pool="threads",
        concurrency=threads,
        loglevel=loglevel,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
        quiet=settings.log_json,
    )


def publish_job(app: Celery, model: ModelSpec, job_id: str, *, priority: int = 0) -> None:
    """Put a job id on its model's queue; call only after the job row is committed."""
    app.send_task(
        RUN_JOB_TASK,
        args=[job_id],
        queue=model.queue,
        priority=broker_priority(priority),
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
    )
