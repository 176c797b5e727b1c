"""Logging set-up: one JSON object per line (or plain text for people at a terminal).

Every line carries the fields of the current log context (job_id, tenant, worker, request_id)
and the process's own fields (worker name). Secrets are masked and bytes or long strings are
cut short before anything is written, so no API key, password, webhook secret or image leaks.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed in `extra` and is worth printing.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# Job lines always carry these three keys, null where a process cannot know the value.
JOB_FIELDS = ("job_id", "tenant", "worker")
MAX_FIELD_CHARS = 2000
MAX_MESSAGE_CHARS = 8000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Field names whose values are never written: exact words, so prompt_tokens stays readable.
_SENSITIVE_KEY = re.compile(
    r"(?i)(^|_)(password|passwd|secret|token|authorization|api_?key|cookie|credentials?)$"
)
# Extra fields some libraries add that only repeat the message (uvicorn's coloured copy).
_DROPPED_FIELDS = frozenset({"color_message"})
_SECRET_PATTERNS = [
    # user:password@ in any URL (database, broker, S3 endpoint)
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1***@"),
    (re.compile(r"whsec_[A-Za-z0-9+/=_-]+"), "whsec_***"),
    (re.compile(r"\b(ivj_[0-9a-f]{12})_[A-Za-z0-9_-]+"), r"\1_***"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    (
        re.compile(
            r"(?i)\b(password|secret|token|api_?key|secret_access_key)(\W{1,3})[^\s\"',;&]+"
        ),
        r"\1\2***",
    ),
]

_context: ContextVar[dict[str, Any] | None] = ContextVar("internvl_jobs_log_context", default=None)
_process_fields: dict[str, Any] = {}


# Every secret pattern above needs one of these words in the text, in any case: looking for
# them first lets most strings (paths, ids) skip the five substitutions (11 -> 1.3 microseconds
# a string). Only for ASCII text, where lower() folds case as the patterns' IGNORECASE does
# (beyond it, "\u017f" matches "s" there and lowers to itself); tests/core/test_logs.py checks
# that both ways give the same text.
_SECRET_HINTS = (
    "://",
    "whsec_",
    "ivj_",
    "bearer",
    "basic",
    "password",
    "secret",
    "token",
    "apikey",
    "api_key",
)


def redact(text: str) -> str:
    """The text with passwords, API keys, bearer tokens and webhook secrets masked."""
    if text.isascii():
        lowered = text.lower()
        if not any(hint in lowered for hint in _SECRET_HINTS):
            return text
    return mask_secrets(text)


def mask_secrets(text: str) -> str:
    """Every secret pattern substituted (redact skips texts that cannot hold one)."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def safe_value(key: str, value: Any) -> Any:
    """A log field as it may be written: secrets masked, bytes and long strings shortened."""
    if _SENSITIVE_KEY.search(key):
        return "***"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return _shorten(redact(value), MAX_FIELD_CHARS)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return _shorten(redact(str(value)), MAX_FIELD_CHARS)


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def set_process_fields(**fields: Any) -> None:
    """Fields written on every line of this process (a worker's name, for instance)."""
    _process_fields.update(fields)


def current_log_context() -> dict[str, Any]:
    """A copy of the fields the current log context adds to each line."""
    return dict(_context.get() or {})


@contextmanager
def log_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Add fields to every line logged inside the block (in this thread or task)."""
    merged = {**(_context.get() or {}), **fields}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Add fields to the enclosing log context, if there is one (learned mid-way: a tenant)."""
    context = _context.get()
    if context is not None:
        context.update(fields)


class ContextFilter(logging.Filter):
    """Copies the process and context fields onto each record that does not set them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in {**_process_fields, **(_context.get() or {})}.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The safe `extra` and context fields of a record."""
    fields = {
        key: safe_value(key, value)
        for key, value in vars(record).items()
        if key not in _STANDARD and key not in _DROPPED_FIELDS and not key.startswith("_")
    }
    if fields.get("job_id") is not None:
        for key in JOB_FIELDS:
            fields.setdefault(key, None)
    return fields


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON with their `extra` fields (job_id, worker, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _shorten(redact(record.getMessage()), MAX_MESSAGE_CHARS),
        }
        entry.update(record_fields(record))
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    """Human-readable lines, with the same masking and the context fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        fields = record_fields(record)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


def setup_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Route every logger to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # library warnings become log lines, not stray stderr text
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
