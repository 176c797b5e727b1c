"""Fixtures for the webhook sender's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.ssrf import guarded_client
from sender.webhooks import WebhookSender
from tests.support.webhook_jobs import MODEL


@pytest.fixture
def make_sender(db_url: str, sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Any]:
    """Senders whose publish step delivers at once, in this thread (no broker needed)."""
    clients = []

    def make(**overrides: Any) -> WebhookSender:
        client = overrides.pop("client", None)
        fields: dict[str, Any] = {
            "webhook_allow_private": True,
            "webhook_allow_http": True,
            "webhook_retry_delays_s": [0.05, 0.05, 0.05],
            "webhook_timeout_s": 1.0,
            "webhook_send_lease_s": 5.0,
            **overrides,
        }
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            environment="test",
            data_dir=tmp_path,
            database_url=db_url,
            models=[MODEL],
            log_json=False,
            **fields,
        )
        client = client or guarded_client(
            allow_private=settings.webhook_allow_private, timeout_s=settings.webhook_timeout_s
        )
        clients.append(client)
        sender = WebhookSender(
            settings=settings, sessions=sessions, client=client, publish=lambda i, a: None
        )
        sender.publish = sender.deliver  # type: ignore[assignment]
        return sender

    yield make
    for client in clients:
        client.close()
