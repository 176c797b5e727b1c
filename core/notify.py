"""Terminal job events fanned out to API processes, so a long-poll wakes as soon as a job ends.

A job's terminal event is announced after its transaction commits, by whichever process made
the change (worker, sweeper, API). Redis pub/sub carries it when the broker is Redis; the
embedded mode (filesystem broker, one machine) uses Unix datagram sockets, one per listening
process, in a folder derived from the broker's. Delivery is best-effort: a waiter re-reads the
job when woken and once more when its wait runs out, so a lost message costs latency only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import redis
from sqlalchemy.orm import Session

from core.config import Settings
from core.db import run_after_commit
from core.jobs import add_event_listener
from core.models import Job
from core.specs import TERMINAL_EVENTS

log = logging.getLogger("core.notify")
CHANNEL = "internvl-jobs:job-events"
OnEvent = Callable[[str], None]


class JobFeed(Protocol):
    """Announces finished job ids and delivers them to listeners in other processes."""

    def publish(self, job_id: str) -> None:
        """Announce that a job reached a terminal status."""

    def listen(
        self, on_event: OnEvent, on_resync: Callable[[], None], stop: threading.Event
    ) -> None:
        """Call on_event(job_id) per announcement until stop; on_resync after a gap."""


class RedisJobFeed:
    """Redis pub/sub on one channel per Redis database."""

    def __init__(self, url: str) -> None:
        # Short timeouts on the publishing side: a Redis outage must not stall a worker.
        self.publisher = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.subscriber = redis.Redis.from_url(url, socket_connect_timeout=2)
        database = self.publisher.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"{CHANNEL}:{database}"

    def publish(self, job_id: str) -> None:
        self.publisher.publish(self.channel, job_id)

    def listen(
        self, on_event: OnEvent, on_resync: Callable[[], None], stop: threading.Event
    ) -> None:
        while not stop.is_set():
            # redis-py leaves pubsub() unannotated.
            pubsub = self.subscriber.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                on_resync()  # whatever ended while unsubscribed is re-read by its waiter
                while not stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        on_event(message["data"].decode())
            except redis.RedisError as exc:
                log.warning("job event subscription lost (%s); reconnecting", exc)
                stop.wait(1.0)
            finally:
                pubsub.close()


class SocketJobFeed:
    """Unix datagram sockets in one folder: a publisher sends to every socket there."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def publish(self, job_id: str) -> None:
        for path in self.folder.glob("*.sock"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                sender.setblocking(False)  # a full receiver loses the message, never blocks us
                try:
                    sender.sendto(job_id.encode(), str(path))
                except (ConnectionRefusedError, FileNotFoundError):
                    path.unlink(missing_ok=True)  # its process is gone
                except OSError:
                    pass

    def listen(
        self, on_event: OnEvent, on_resync: Callable[[], None], stop: threading.Event
    ) -> None:
        path = self.folder / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(str(path))
            receiver.settimeout(1.0)
            on_resync()
            try:
                while not stop.is_set():
                    try:
                        on_event(receiver.recv(256).decode())
                    except TimeoutError:
                        continue
            finally:
                path.unlink(missing_ok=True)


def job_feed(settings: Settings) -> JobFeed | None:
    """The feed for this deployment's broker; None where none fits (long-polls then time out)."""
    parsed = urlparse(settings.broker_url)
    if parsed.scheme in ("redis", "rediss"):
        return RedisJobFeed(settings.broker_url)
    if parsed.scheme == "filesystem":
        broker_folder = unquote(parsed.netloc + parsed.path)
        # Socket paths are short (about 100 bytes): a hashed name in the temporary folder.
        digest = hashlib.sha256(broker_folder.encode()).hexdigest()[:12]
        return SocketJobFeed(Path(tempfile.gettempdir()) / f"internvl-jobs-{digest}")
    return None


_feed: JobFeed | None = None


def install_publisher(feed: JobFeed | None) -> None:
    """Announce this process's terminal job events on feed, after each commit."""
    global _feed
    _feed = feed
    add_event_listener(_announce_after_commit)


def _announce_after_commit(session: Session, job: Job, event_type: str) -> None:
    if event_type in TERMINAL_EVENTS and _feed is not None:
        feed, job_id = _feed, job.id
        run_after_commit(session, lambda: _publish(feed, job_id))


def _publish(feed: JobFeed, job_id: str) -> None:
    try:
        feed.publish(job_id)
    except Exception as exc:  # noqa: BLE001 - waiters fall back to their timeout
        log.warning("announcing job %s failed: %s", job_id, exc)
