"""`internvl-jobs webhooks`: the CPU worker that sends webhooks (never a GPU worker's job).

One thread polls the database for due deliveries and publishes their ids on the webhook
queue; Celery threads consume that queue and send. Any number of these processes can run
on any hosts: dispatching and sending are both fenced in the database.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery

from core.config import Settings
from core.db import make_engine, make_session_factory
from core.logs import setup_logging
from core.metrics import WEBHOOK_ATTEMPTS
from core.probe_server import serve_process_probes
from core.queue import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE, celery_worker, make_celery
from core.ssrf import guarded_client
from sender.webhooks import WebhookSender

log = logging.getLogger("sender.process")


def serve_webhooks(*, settings: Settings, concurrency: int = 0, loglevel: str = "INFO") -> None:
    """Dispatch and send webhooks until stopped."""
    setup_logging(loglevel, json_lines=settings.log_json)
    serve_process_probes(settings, role="webhooks", port=settings.webhook_probe_port)
    threads = concurrency or settings.webhook_concurrency
    app = make_celery(settings)
    sender = build_sender(settings, app, pool_size=threads + 2)

    @app.task(
        name=DELIVER_WEBHOOK_TASK, ignore_result=True, acks_late=True, reject_on_worker_lost=True
    )
    def deliver_webhook(delivery_id: str, attempts: int) -> str:
        outcome = sender.deliver(delivery_id, attempts)
        WEBHOOK_ATTEMPTS.labels(outcome).inc()
        return outcome

    stop = threading.Event()
    dispatcher = threading.Thread(
        target=sender.run_dispatcher, args=(stop,), name="webhook-dispatcher", daemon=True
    )
    dispatcher.start()
    log.info("webhook worker: %d senders on queue %s", threads, WEBHOOK_QUEUE)
    try:
        celery_worker(
            app,
            settings,
            hostname=f"webhooks.{os.getpid()}@{socket.gethostname()}",
            queue=WEBHOOK_QUEUE,
            threads=threads,
            loglevel=loglevel,
        ).start()
    finally:
        stop.set()
        dispatcher.join(timeout=10)
        sender.client.close()


def build_sender(settings: Settings, app: Celery, *, pool_size: int) -> WebhookSender:
    """A sender on the database, the SSRF-guarded client, and `app`'s webhook queue."""
    sessions = make_session_factory(make_engine(settings.database_url, pool_size=pool_size))
    client = guarded_client(
        allow_private=settings.webhook_allow_private, timeout_s=settings.webhook_timeout_s
    )

    def publish(delivery_id: str, attempts: int) -> None:
        app.send_task(
            DELIVER_WEBHOOK_TASK,
            args=[delivery_id, attempts],
            queue=WEBHOOK_QUEUE,
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        )

    return WebhookSender(settings=settings, sessions=sessions, client=client, publish=publish)
