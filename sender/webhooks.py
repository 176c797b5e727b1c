"""Sending webhooks: due deliveries are dispatched, sent signed, and every attempt recorded.

A delivery's `attempts` counter is its fence: dispatching publishes (id, attempts), and only
the message whose count still matches may claim the next attempt. A claim pushes
next_attempt_at a lease ahead, so a sender that dies between sending and recording leaves a
row that comes due again and is sent again, with the same webhook-id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import transaction, utcnow
from core.models import DeliveryStatus, WebhookAttempt, WebhookDelivery
from core.signatures import webhook_headers
from core.ssrf import UnsafeAddress, UnsafeUrl, read_capped, validate_url
from core.webhook_secrets import signing_secrets

log = logging.getLogger("sender.webhooks")
USER_AGENT = "internvl-jobs-webhooks/1.0"
RETRY_AFTER_CODES = frozenset({429, 502, 504})
DISPATCH_LIMIT = 500
Publish = Callable[[str, int], None]


@dataclass
class Outcome:
    """What one attempt got: a status code or an error, how fast, and what the receiver said."""

    status_code: int | None = None
    latency_ms: int = 0
    error: str | None = None
    response: str | None = None
    retry_after_s: float | None = None
    permanent: bool = False  # no later attempt could do better

    @property
    def succeeded(self) -> bool:
        """A 2xx answer in time."""
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


class WebhookSender:
    """Dispatches due deliveries and sends them; one per webhook worker process."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        client: httpx.Client,
        publish: Publish,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.client = client
        self.publish = publish

    # -- dispatching -----------------------------------------------------------------------

    def dispatch_due(self, *, now: datetime | None = None) -> int:
        """Publish every pending delivery whose next attempt is due; return how many."""
        now = now or utcnow()
        with transaction(self.sessions) as session:
            due = session.execute(
                select(WebhookDelivery.id, WebhookDelivery.attempts)
                .where(
                    WebhookDelivery.status == DeliveryStatus.PENDING.value,
                    WebhookDelivery.next_attempt_at <= now,
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(DISPATCH_LIMIT)
            ).all()
        lease_until = now + timedelta(seconds=self.settings.webhook_send_lease_s)
        published = 0
        for delivery_id, attempts in due:
            # Only the dispatcher whose update matches publishes; the lease hides the row
            # from the next polls until the message is handled (or lost and due again).
            with transaction(self.sessions) as session:
                claimed = session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == delivery_id,
                        WebhookDelivery.status == DeliveryStatus.PENDING.value,
                        WebhookDelivery.attempts == attempts,
                        WebhookDelivery.next_attempt_at <= now,
                    )
                    .values(next_attempt_at=lease_until)
                    .execution_options(synchronize_session=False)
                ).rowcount  # type: ignore[attr-defined]
            if claimed:
                self.publish(delivery_id, attempts)
                published += 1
        return published

    def run_dispatcher(self, stop: threading.Event) -> None:
        """Dispatch due deliveries every poll interval until stopped; errors are logged."""
        while not stop.is_set():
            try:
                self.dispatch_due()
            except Exception:  # noqa: BLE001 - the next poll retries
                log.exception("dispatching webhooks failed")
            stop.wait(self.settings.webhook_poll_interval_s)

    # -- one attempt -----------------------------------------------------------------------

    def deliver(self, delivery_id: str, attempts: int) -> str:
        """Make the next attempt of a delivery dispatched at `attempts`; return its status."""
        claimed = self._claim(delivery_id, attempts)
        if claimed is None:
            log.info("webhook %s was already attempted; duplicate message ignored", delivery_id)
            return "duplicate"
        delivery, secrets = claimed
        attempted_at = utcnow()
        outcome = self.send(delivery, secrets)
        status = self._record(delivery, attempts + 1, attempted_at, outcome)
        log.info(
            "webhook %s %s attempt %d: %s",
            delivery.id,
            delivery.event_type,
            attempts + 1,
            outcome.error or outcome.status_code,
            extra={
                "delivery_id": delivery.id,
                "job_id": delivery.job_id,
                "tenant": delivery.tenant_id,
                "status": status,
            },
        )
        return status

    def _claim(self, delivery_id: str, attempts: int) -> tuple[WebhookDelivery, list[str]] | None:
        now = utcnow()
        with transaction(self.sessions) as session:
            changed = session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == DeliveryStatus.PENDING.value,
                    WebhookDelivery.attempts == attempts,
                )
                .values(
                    attempts=attempts + 1,
                    last_attempt_at=now,
                    next_attempt_at=now + timedelta(seconds=self.settings.webhook_send_lease_s),
                )
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if changed != 1:
                return None
            delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
            assert delivery is not None
            return delivery, signing_secrets(session, delivery.tenant_id, now=now)

    def send(self, delivery: WebhookDelivery, secrets: list[str]) -> Outcome:
        """POST the delivery's payload, signed, to its URL; never raises for network trouble."""
        settings = self.settings
        try:
            validate_url(
                delivery.url,
                allow_private=settings.webhook_allow_private,
                allow_http=settings.webhook_allow_http,
            )
        except UnsafeUrl as exc:
            return Outcome(error=f"URL refused: {exc.detail}", permanent=True)
        body = delivery.payload.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "accept-encoding": "identity",
            **webhook_headers(
                secrets, webhook_id=delivery.id, timestamp=int(time.time()), body=body
            ),
        }
        started = time.monotonic()
        try:
            outcome = self._exchange(delivery.url, body, headers, started)
        except UnsafeAddress as exc:
            outcome = Outcome(error=str(exc))
        except httpx.TimeoutException:
            outcome = Outcome(error=f"no answer within {settings.webhook_timeout_s:g} s")
        except httpx.HTTPError as exc:
            outcome = Outcome(error=f"{type(exc).__name__}: {exc}")
        outcome.latency_ms = round((time.monotonic() - started) * 1000)
        return outcome

    def _exchange(self, url: str, body: bytes, headers: dict[str, str], started: float) -> Outcome:
        limit_s = self.settings.webhook_timeout_s
        with self.client.stream("POST", url, content=body, headers=headers) as response:
            answered_s = time.monotonic() - started
            try:
                excerpt = read_capped(response, self.settings.webhook_response_max_bytes)
            except httpx.HTTPError:
                excerpt = b""  # the status line is what counts; a broken body changes nothing
        outcome = Outcome(
            status_code=response.status_code,
            response=excerpt.decode("utf-8", "replace"),
            retry_after_s=_retry_after_s(response.headers.get("retry-after")),
        )
        if answered_s > limit_s:
            outcome.error = f"answered after {answered_s:.1f} s; the limit is {limit_s:g} s"
        elif response.is_redirect:
            target = response.headers.get("location", "")
            outcome.error = f"HTTP {response.status_code} redirect to {target!r} not followed"
        elif not response.is_success:
            outcome.error = f"HTTP {response.status_code}"
        return outcome

    # -- recording -------------------------------------------------------------------------

    def _record(
        self, delivery: WebhookDelivery, attempt: int, attempted_at: datetime, outcome: Outcome
    ) -> str:
        now = utcnow()
        status, next_attempt_at = self.next_state(delivery, attempt, outcome, now)
        finished = status != DeliveryStatus.PENDING
        with transaction(self.sessions) as session:
            session.add(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    attempted_at=attempted_at,
                    status_code=outcome.status_code,
                    latency_ms=outcome.latency_ms,
                    error=outcome.error,
                    response_excerpt=outcome.response,
                )
            )
            changed = session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery.id,
                    WebhookDelivery.status == DeliveryStatus.PENDING.value,
                    WebhookDelivery.attempts == attempt,
                )
                .values(
                    status=status.value,
                    next_attempt_at=next_attempt_at,
                    finished_at=now if finished else None,
                )
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if changed and status == DeliveryStatus.DISABLED:
                _disable_siblings(session, delivery, now)
        return status.value if changed else "superseded"

    def next_state(
        self, delivery: WebhookDelivery, attempt: int, outcome: Outcome, now: datetime
    ) -> tuple[DeliveryStatus, datetime | None]:
        """The delivery's status after this attempt, and when to try again if pending."""
        if outcome.succeeded:
            return DeliveryStatus.SUCCEEDED, None
        if outcome.status_code == 410:
            return DeliveryStatus.DISABLED, None
        delays = self.settings.webhook_retry_delays_s
        made = attempt - delivery.attempts_before_replay
        if outcome.permanent or made > len(delays):
            return DeliveryStatus.FAILED, None
        delay = delays[made - 1]
        if outcome.status_code in RETRY_AFTER_CODES and outcome.retry_after_s is not None:
            wanted = min(outcome.retry_after_s, self.settings.webhook_max_retry_after_s)
            delay = max(delay, wanted)
        return DeliveryStatus.PENDING, now + timedelta(seconds=delay)


def _disable_siblings(session: Session, delivery: WebhookDelivery, now: datetime) -> None:
    # 410 Gone means the receiver wants nothing more at this URL about this job (or batch).
    owner = (
        WebhookDelivery.job_id == delivery.job_id
        if delivery.job_id
        else WebhookDelivery.batch_id == delivery.batch_id
    )
    session.execute(
        update(WebhookDelivery)
        .where(
            owner,
            WebhookDelivery.url == delivery.url,
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
        )
        .values(status=DeliveryStatus.DISABLED.value, next_attempt_at=None, finished_at=now)
        .execution_options(synchronize_session=False)
    )


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay in seconds, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - utcnow()).total_seconds())
