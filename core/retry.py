"""Retrying operations that fail for a while (a database failover, a storage hiccup)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

T = TypeVar("T")
log = logging.getLogger("core.retry")


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: lost connections, timeouts, storage endpoints down."""
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
    except ImportError:  # pragma: no cover - botocore is a core dependency
        return False
    return isinstance(exc, EndpointConnectionError | BotoConnectionError | ReadTimeoutError)


def retry_transient(
    operation: Callable[[], T],
    *,
    what: str,
    deadline_s: float,
    first_delay_s: float = 0.2,
    max_delay_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run operation, retrying transient errors with exponential backoff until deadline_s."""
    give_up = time.monotonic() + deadline_s
    delay = first_delay_s
    while True:
        try:
            return operation()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > give_up:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, type(exc).__name__, delay)
            sleep(delay)
            delay = min(delay * 2, max_delay_s)
