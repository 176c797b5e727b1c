"""Structured logs: one JSON object per line, job fields on job lines, no secrets or bytes."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.logs import (
    ContextFilter,
    JsonFormatter,
    PlainFormatter,
    bind_log_context,
    log_context,
    mask_secrets,
    redact,
    set_process_fields,
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("test.logs")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.handlers.clear()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_line_with_its_extra_fields(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured
    logger.info("first\nsecond", extra={"model": "tiny"})
    (entry,) = lines(stream)
    assert entry["msg"] == "first\nsecond"
    assert entry["level"] == "info" and entry["model"] == "tiny" and entry["ts"]


def test_lines_inside_a_job_context_name_job_tenant_and_worker(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured
    with log_context(job_id="job_1", worker="gpu0.m@host"):
        logger.info("claimed")
        bind_log_context(tenant="ten_a")  # learned once the job row is read
        logger.warning("slow storage")
    logger.info("idle")
    claimed, slow, idle = lines(stream)
    assert (claimed["job_id"], claimed["tenant"], claimed["worker"]) == (
        "job_1",
        None,
        "gpu0.m@host",
    )
    assert (slow["job_id"], slow["tenant"], slow["worker"]) == ("job_1", "ten_a", "gpu0.m@host")
    assert "job_id" not in idle and "tenant" not in idle


def test_contexts_of_concurrent_threads_do_not_mix(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured
    barrier = threading.Barrier(2)

    def run(job_id: str) -> None:
        with log_context(job_id=job_id):
            barrier.wait()
            logger.info("working")

    threads = [threading.Thread(target=run, args=(f"job_{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(entry["job_id"] for entry in lines(stream)) == ["job_0", "job_1"]


def test_process_fields_are_on_every_line(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured
    set_process_fields(worker="cpu0.tiny@test")
    try:
        logger.info("ready")
    finally:
        set_process_fields(worker=None)
    assert lines(stream)[0]["worker"] == "cpu0.tiny@test"


SECRETS = {
    "db password": "postgresql+psycopg://jobs:hunter2-pw@db:5432/jobs",
    "webhook secret": "whsec_c2VjcmV0LXNpZ25pbmcta2V5LWJ5dGVz",
    "api key": "ivj_0123456789ab_Zm9vYmFyYmF6cXV4cXV1eGNvcmdl",
    "bearer": "Authorization: Bearer tok-abc.def",
    "query token": "https://example.com/hook?token=tok-zyx987",
}


@pytest.mark.parametrize("text", SECRETS.values(), ids=SECRETS.keys())
def test_secrets_in_messages_are_masked(captured, text: str) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured
    logger.error("connecting to %s failed", text)
    message = lines(stream)[0]["msg"]
    for secret in ("hunter2-pw", "c2VjcmV0", "Zm9vYmFy", "tok-abc", "tok-zyx987"):
        assert secret not in message
    assert "***" in message


CASE_VARIANTS = [
    "authorization: BEARER tok-abc.def",
    "Authorization: Basic dXNlcjpwdw==",
    "PASSWORD=hunter2",
    "Api_Key: k-123",
    "apikey=k-123",
    "AWS_SECRET_ACCESS_KEY=abc/def",
    "REDIS://:hunter2@cache:6379/0",
    "pa\u017f\u017fword=hunter2",  # a long s: IGNORECASE matches it to "s"
    "\u0131vj_0123456789ab_Zm9vYmFy",  # a dotless i: the pattern is case-sensitive
    "/v1/jobs/job_0123456789abcdef",
]


@pytest.mark.parametrize("text", [*SECRETS.values(), *CASE_VARIANTS])
def test_the_quick_look_for_secret_words_masks_what_the_patterns_mask(text: str) -> None:
    assert redact(text) == mask_secrets(text)


# Text made of the words the patterns look for, in any case, and the characters around them.
_PIECES = st.sampled_from(
    [
        "://",
        "whsec_",
        "ivj_0123456789ab_",
        "bearer ",
        "Basic ",
        "password",
        "secret",
        "token",
        "api_key",
        "APIKEY",
        "=",
        ":",
        "@",
        "/",
        " ",
        "x",
        "tok-1",
        "\u017f",
        "\u0131",
        "\u212a",  # a Kelvin sign: IGNORECASE matches it to "k"
        "k",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.text(max_size=3)), max_size=12).map("".join))
def test_redact_equals_every_substitution_on_generated_text(text: str) -> None:
    assert redact(text) == mask_secrets(text)


def test_secret_fields_bytes_and_long_strings_never_reach_the_log(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured
    image = b"\x89PNG\r\n" + bytes(100_000)
    logger.info(
        "received",
        extra={"api_key": "plain", "image": image, "data": "QUFB" * 50_000, "password": "x"},
    )
    entry = lines(stream)[0]
    assert entry["api_key"] == "***" and entry["password"] == "***"
    assert entry["image"] == f"<{len(image)} bytes>"
    assert len(entry["data"]) < 2100 and entry["data"].endswith("more characters)")


def test_exceptions_are_masked_too(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured
    try:
        raise ConnectionError("could not reach redis://:s3cr3t-pass@redis:6379/0")
    except ConnectionError:
        logger.exception("broker down")
    entry = lines(stream)[0]
    assert "s3cr3t-pass" not in entry["exc"] and "ConnectionError" in entry["exc"]


def test_plain_text_lines_carry_the_same_fields_masked() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "dsn %s", ("redis://:pw1@r/0",), None
    )
    record.job_id = "job_9"
    line = PlainFormatter().format(record)
    assert "pw1" not in line and "job_id=job_9" in line and "tenant=None" in line


def test_counts_whose_names_contain_token_are_not_masked(captured) -> None:  # type: ignore[no-untyped-def]
    logger, stream = captured
    logger.info("done", extra={"prompt_tokens": 12, "completion_tokens": 3, "token": "t0p"})
    entry = lines(stream)[0]
    assert (entry["prompt_tokens"], entry["completion_tokens"], entry["token"]) == (12, 3, "***")
